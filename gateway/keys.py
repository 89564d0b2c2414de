"""Where sessions live: Tyk's key names, hashed or not, and Tyk's lookup order.

A session is Tyk's `SessionState` JSON stored under `apikey-<name>`, where
`<name>` is the key itself or, with `hash_keys`, its hash
(`gateway.storage.keyhash`): the names Tyk uses in Redis, so a Coproc
instance and a Tyk gateway sharing a Redis accept each other's keys.

A key presented by a client is looked up as Tyk's session manager does: if
it does not carry the API's org id, first as the key Tyk would have made of
it for that org (`generate_token(org, key, hash_key_function)`), then as
given, then with each `hash_key_function_fallback`.  Custom keys created
through Tyk's `POST /tyk/keys/{key}` are stored under the made name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from config.gateway import KeyOptions
from gateway.storage import Storage
from gateway.storage.keyhash import generate_token, hash_key, token_org

__all__ = ["KEY_PREFIX", "KeyStore"]

KEY_PREFIX: Final = "apikey-"


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class KeyStore:
    """Sessions by key (or by hash) in one storage, named as Tyk names them."""

    def __init__(self, storage: Storage, options: KeyOptions | None = None) -> None:
        self.storage = storage
        self.options = options or KeyOptions()

    @property
    def hashing(self) -> bool:
        return self.options.hash_keys

    def key_hash(self, key_id: str) -> str:
        """The key's stored name without the prefix (its hash with `hash_keys`)."""
        return hash_key(key_id, self.options.hash_keys)

    def make_key(self, org_id: str, key_id: str = "") -> str:
        """A key as Tyk's admin API makes it (`hash_key_function` chooses the format)."""
        return generate_token(org_id, key_id, self.options.hash_key_function)

    async def get(self, key_id: str) -> dict[str, Any] | None:
        return await self.get_hashed(self.key_hash(key_id))

    async def get_hashed(self, name: str) -> dict[str, Any] | None:
        return _decode(await self.storage.get(KEY_PREFIX + name))

    async def find(self, org_id: str, key: str) -> tuple[str, dict[str, Any]] | None:
        """(the key's stored id, its session) for a key a client presented (one round
        trip, as Tyk's multi-get)."""
        candidates = self.candidates(org_id, key)
        names = [KEY_PREFIX + self.key_hash(c) for c in candidates]
        raw = [await self.storage.get(names[0])] if len(names) == 1 else \
            await self.storage.get_many(names)
        for candidate, value in zip(candidates, raw, strict=True):
            session = _decode(value)
            if session is not None:
                return candidate, session
        return None

    def candidates(self, org_id: str, key: str) -> list[str]:
        if token_org(key) == org_id or not key.removeprefix(org_id):
            return [key]
        options = [generate_token(org_id, key, self.options.hash_key_function), key]
        options += [generate_token(org_id, key, f)
                    for f in self.options.hash_key_function_fallback]
        return list(dict.fromkeys(options))

    async def save(self, key_id: str, session: Mapping[str, Any]) -> None:
        await self.save_hashed(self.key_hash(key_id), session)

    async def save_hashed(self, name: str, session: Mapping[str, Any]) -> None:
        lifetime = session.get("session_lifetime") or 0
        ttl = float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else 0.0
        await self.storage.set(KEY_PREFIX + name, json.dumps(session).encode(), ttl)

    async def delete_hashed(self, name: str) -> bool:
        found = await self.storage.delete(KEY_PREFIX + name)
        await self.storage.delete(f"quota-{name}")
        return found

    async def names(self) -> list[str]:
        """Every stored session's name (keys, or hashes with `hash_keys`), sorted."""
        found = await self.storage.scan(KEY_PREFIX)
        return sorted(name.removeprefix(KEY_PREFIX) for name in found)
