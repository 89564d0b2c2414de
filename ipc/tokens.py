"""Worker admission tokens, and the store process's.

The supervisor draws a random instance key at start and gives it to the
gateway; each worker generation gets `worker_token(key, generation)`.  The
gateway can therefore check any generation's token without being told about
it in advance, and a worker cannot impersonate another generation.  The store
process (memory storage for several gateway processes) gets `store_token(key)`
and admits a connection only after it presents that token: the gateways can
derive it, the worker (plugin code, perhaps of the same uid) cannot.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["new_instance_key", "store_token", "verify_worker_token", "worker_token"]


def new_instance_key() -> bytes:
    return secrets.token_bytes(32)


def worker_token(key: bytes, generation: int) -> str:
    return hmac.new(key, f"worker:{generation}".encode(), hashlib.sha256).hexdigest()


def store_token(key: bytes) -> str:
    return hmac.new(key, b"store", hashlib.sha256).hexdigest()


def verify_worker_token(key: bytes, generation: int, token: str) -> bool:
    return hmac.compare_digest(worker_token(key, generation), token)
