"""Worker admission tokens.

The supervisor draws a random instance key at start and gives it to the
gateway; each worker generation gets `worker_token(key, generation)`.  The
gateway can therefore check any generation's token without being told about
it in advance, and a worker cannot impersonate another generation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["new_instance_key", "verify_worker_token", "worker_token"]


def new_instance_key() -> bytes:
    return secrets.token_bytes(32)


def worker_token(key: bytes, generation: int) -> str:
    return hmac.new(key, f"worker:{generation}".encode(), hashlib.sha256).hexdigest()


def verify_worker_token(key: bytes, generation: int, token: str) -> bool:
    return hmac.compare_digest(worker_token(key, generation), token)
