"""Tyk's key hashing and key format, so Tyk and Coproc on one Redis read each other's keys.

Facts from Tyk's source (`internal/crypto/hash.go`, `token.go`; the hashes are
github.com/TykTechnologies/murmur3, i.e. MurmurHash3 with seed 0):

* with `hash_keys` on, a key is stored as `apikey-` + `hash_str(key)`;
* `hash_str` hashes with the algorithm named in the key itself (the `h` of
  a base64 JSON key, `{"org":…,"id":…,"h":…}`) and with murmur32 for any
  other key; `hash_key_function` only chooses the `h` of keys it generates;
* the digest is hex of the big-endian bytes: murmur32 is x86_32 (8 hex
  digits), murmur64 the first half of x64_128 (16), murmur128 both halves
  (32); sha256 is the usual 64;
* a generated key is base64(`{"org":"<org>","id":"<id>","h":"<function>"}`)
  with a function, `<org><id>` without (legacy); `id` is a random uuid hex.

MurmurHash3 is written out here (a few dozen lines, ~10 us per key) rather
than depending on a native package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
import uuid
from functools import lru_cache

__all__ = [
    "HASH_FUNCTIONS",
    "generate_token",
    "hash_key",
    "hash_str",
    "murmur3_32",
    "murmur3_128",
    "token_hash_algorithm",
    "token_org",
]

log = logging.getLogger("coproc.gateway.keys")

#: Tyk's `hash_key_function` values ("" generates legacy keys).
HASH_FUNCTIONS = ("murmur32", "murmur64", "murmur128", "sha256")
_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def _fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32."""
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed & _M32
    blocks = len(data) // 4
    for i in range(blocks):
        k = int.from_bytes(data[i * 4:i * 4 + 4], "little")
        k = (_rotl32((k * c1) & _M32, 15) * c2) & _M32
        h = (_rotl32(h ^ k, 13) * 5 + 0xE6546B64) & _M32
    tail = data[blocks * 4:]
    if tail:
        k = int.from_bytes(tail, "little")
        h ^= (_rotl32((k * c1) & _M32, 15) * c2) & _M32
    return _fmix32(h ^ len(data))


def murmur3_128(data: bytes, seed: int = 0) -> tuple[int, int]:
    """MurmurHash3 x64_128 as (h1, h2)."""
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F
    h1 = h2 = seed & _M32
    blocks = len(data) // 16
    for i in range(blocks):
        k1 = int.from_bytes(data[i * 16:i * 16 + 8], "little")
        k2 = int.from_bytes(data[i * 16 + 8:i * 16 + 16], "little")
        h1 ^= (_rotl64((k1 * c1) & _M64, 31) * c2) & _M64
        h1 = ((_rotl64(h1, 27) + h2) * 5 + 0x52DCE729) & _M64
        h2 ^= (_rotl64((k2 * c2) & _M64, 33) * c1) & _M64
        h2 = ((_rotl64(h2, 31) + h1) * 5 + 0x38495AB5) & _M64
    tail = data[blocks * 16:]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (_rotl64((k2 * c2) & _M64, 33) * c1) & _M64
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (_rotl64((k1 * c1) & _M64, 31) * c2) & _M64
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1, h2 = _fmix64(h1), _fmix64(h2)
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    return h1, h2


def _digest(data: bytes, algorithm: str) -> str:
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()
    if algorithm == "murmur64":
        return murmur3_128(data)[0].to_bytes(8, "big").hex()
    if algorithm == "murmur128":
        h1, h2 = murmur3_128(data)
        return (h1.to_bytes(8, "big") + h2.to_bytes(8, "big")).hex()
    return murmur3_32(data).to_bytes(4, "big").hex()


def _json_token(token: str) -> dict[str, object] | None:
    """The JSON object inside a base64 key (Tyk's new key format), else None."""
    if not token.startswith("ey"):  # base64 of '{"'
        return None
    try:
        value = json.loads(base64.b64decode(token, validate=True))
    except (binascii.Error, ValueError):
        return None
    return value if isinstance(value, dict) else None


def token_hash_algorithm(token: str) -> str:
    """The `h` a key names, "" for keys that name none."""
    value = _json_token(token)
    algorithm = value.get("h") if value else ""
    return algorithm if isinstance(algorithm, str) else ""


def hash_str(text: str, algorithm: str = "") -> str:
    """Tyk's `HashStr`: the key's own algorithm unless one is given; murmur32 otherwise."""
    # Cached for real keys (a pure-Python hash of one costs ~10 us); a client's
    # oversized header is hashed but never kept, so it cannot fill memory.
    return _hash_cached(text, algorithm) if len(text) <= 512 else _hash(text, algorithm)


@lru_cache(maxsize=8192)
def _hash_cached(text: str, algorithm: str) -> str:
    return _hash(text, algorithm)


def _hash(text: str, algorithm: str) -> str:
    algorithm = algorithm or token_hash_algorithm(text)
    if algorithm and algorithm not in HASH_FUNCTIONS:
        _unknown_function(algorithm)
    return _digest(text.encode(), algorithm)


_last_unknown_log = 0.0


def _unknown_function(algorithm: str) -> None:
    # Clients choose the keys they send: at most one line per interval.
    global _last_unknown_log
    now = time.monotonic()
    if now - _last_unknown_log >= 5.0:
        _last_unknown_log = now
        log.warning("a key names the unknown hash function %r: hashed with murmur32, as "
                    "Tyk does", algorithm[:40])


def hash_key(key: str, enabled: bool) -> str:
    """The name a key is stored under (without the `apikey-` prefix)."""
    return hash_str(key) if enabled else key


def token_org(token: str) -> str:
    """The org id a key carries: the `org` of a JSON key, or a 24-hex-digit prefix."""
    value = _json_token(token)
    if value is not None and isinstance(value.get("org"), str):
        return str(value["org"])
    prefix = token[:24]
    if len(token) > 24:
        try:
            bytes.fromhex(prefix)
        except ValueError:
            return ""
        return prefix
    return ""


def generate_token(org_id: str, key_id: str = "", function: str = "") -> str:
    """A key as Tyk makes it: JSON key with `function`, `<org><id>` without."""
    key_id = key_id.removeprefix(org_id) or uuid.uuid4().hex
    if function:
        # Tyk formats this text with Sprintf, no JSON escaping: so does this.
        text = f'{{"org":"{org_id}","id":"{key_id}","h":"{function}"}}'
        return base64.b64encode(text.encode()).decode()
    return org_id + key_id
