"""Real Redis Sentinel and Redis Cluster set-ups on loopback, for the storage tests.

Each server is a `redis-server` on a free 127.0.0.1 port in a temp directory,
without persistence, in its own session, stopped by pid (SIGTERM, then
SIGKILL of its process group).  Readiness is polled with a deadline.

- `SentinelSet`: one master, one replica, three sentinels (quorum 2) watching
  `mymaster`; `failover()` runs `SENTINEL FAILOVER` and waits for the switch.
- `RedisClusterSet`: three masters joined by `redis-cli --cluster create`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from integration.harness import HOST, RedisServer, free_port, poll

__all__ = ["MASTER_NAME", "RedisClusterSet", "RedisNode", "SentinelSet"]

MASTER_NAME = "mymaster"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not on PATH: Sentinel and Cluster are tested against real "
                           "servers (apt-get install redis-server redis-tools; .ci/run does)")
    return found


class RedisNode(RedisServer):
    """A redis-server (or sentinel, `sentinel=True`) with extra arguments."""

    def __init__(self, base: Path, *extra: str, sentinel: bool = False) -> None:
        super().__init__(base)
        self.extra, self.sentinel = extra, sentinel

    def start(self, timeout: float = 15.0) -> RedisNode:
        self.base.mkdir(parents=True, exist_ok=True)
        common = ["--port", str(self.port), "--bind", HOST, "--dir", str(self.base),
                  "--logfile", str(self.base / "redis.log")]
        if self.sentinel:
            # A sentinel rewrites its config file: it needs its own, writable one.
            conf = self.base / "sentinel.conf"
            conf.write_text("".join(f"{line}\n" for line in self.extra))
            argv = [_binary("redis-server"), str(conf), "--sentinel", *common]
        else:
            argv = [_binary("redis-server"), *common, "--save", "", "--appendonly", "no",
                    *self.extra]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        poll(f"redis on port {self.port} PING", self.ping, timeout)
        return self

    def text(self, *args: str) -> str:
        return self.command(*args).decode(errors="replace")

    def info(self, section: str) -> dict[str, str]:
        lines = self.text("INFO", section).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"


def _stop_all(nodes: list[RedisNode]) -> None:
    for node in nodes:
        node.stop()


class SentinelSet:
    """One master, one replica, three sentinels on loopback."""

    def __init__(self, base: Path) -> None:
        self.master = RedisNode(base / "master")
        self.replica = RedisNode(base / "replica", "--replicaof", HOST, str(self.master.port))
        self.sentinels = [RedisNode(base / f"sentinel{i}", sentinel=True) for i in range(3)]
        for s in self.sentinels:
            s.extra = (f"sentinel monitor {MASTER_NAME} {HOST} {self.master.port} 2",
                       f"sentinel down-after-milliseconds {MASTER_NAME} 2000",
                       f"sentinel failover-timeout {MASTER_NAME} 10000",
                       f"sentinel parallel-syncs {MASTER_NAME} 1")

    @property
    def nodes(self) -> list[RedisNode]:
        return [self.master, self.replica, *self.sentinels]

    def start(self, timeout: float = 30.0) -> SentinelSet:
        try:
            self.master.start()
            self.replica.start()
            poll("the replica to sync", lambda: self.replica.info("replication").get(
                "master_link_status") == "up", timeout)
            for s in self.sentinels:
                s.start()
            poll("every sentinel to see the replica and the other sentinels",
                 self._sentinels_ready, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinels_ready(self) -> bool:
        for s in self.sentinels:
            info = s.info("sentinel")
            if "slaves=1,sentinels=3" not in info.get("master0", ""):
                return False
        return True

    def master_port(self, sentinel: int = 0) -> int:
        """The master's port, as a sentinel reports it (RESP: *2 $n host $n port)."""
        reply = self.sentinels[sentinel].text("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(reply.split("\r\n")[4])

    def _node(self, port: int) -> RedisNode:
        return self.master if port == self.master.port else self.replica

    def failover(self, timeout: float = 30.0) -> int:
        """`SENTINEL FAILOVER`; the new master's port once every sentinel reports it,
        it accepts writes, and the old master has been turned into its replica (from
        then on a client still on the old master gets READONLY for every write)."""
        old = self.master_port()
        reply = self.sentinels[0].text("SENTINEL", "FAILOVER", MASTER_NAME)
        assert reply.startswith("+OK"), reply

        def switched() -> int | None:
            ports = {self.master_port(i) for i in range(len(self.sentinels))}
            if len(ports) != 1 or old in ports:
                return None
            new = ports.pop()
            if self._node(new).info("replication").get("role") != "master":
                return None
            demoted = self._node(old).info("replication")
            if demoted.get("role") != "slave" or demoted.get("master_port") != str(new):
                return None
            return new

        port: int = poll("the new master, announced, and the old one its replica", switched,
                         timeout)
        return port

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {"storage": {"type": "redis", "addrs": [s.addr for s in self.sentinels],
                            "master_name": MASTER_NAME, "timeout_ms": 500, **extra}}

    def stop(self) -> None:
        _stop_all(self.nodes)


class RedisClusterSet:
    """Three cluster masters joined by `redis-cli --cluster create`."""

    def __init__(self, base: Path) -> None:
        self.nodes = [RedisNode(base / f"node{i}", "--cluster-enabled", "yes",
                                "--cluster-config-file", str(base / f"node{i}" / "nodes.conf"),
                                "--cluster-node-timeout", "5000",
                                # The bus port (default: port + 10000) is picked free too.
                                "--cluster-port", str(free_port())) for i in range(3)]

    def start(self, timeout: float = 30.0) -> RedisClusterSet:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run([_binary("redis-cli"), "--cluster", "create",
                            *(n.addr for n in self.nodes), "--cluster-replicas", "0",
                            "--cluster-yes"], check=True, capture_output=True, timeout=timeout)
            poll("cluster_state:ok on every node", lambda: all(
                n.info("cluster").get("cluster_enabled") == "1"
                and "cluster_state:ok" in n.text("CLUSTER", "INFO") for n in self.nodes), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {"storage": {"type": "redis", "addrs": [n.addr for n in self.nodes],
                            "enable_cluster": True, "timeout_ms": 500, **extra}}

    def stop(self) -> None:
        _stop_all(self.nodes)
