"""The `request` argument of a hook: Tyk's wrapper around the MiniRequestObject.

Plugins reach the fields through `request.object` (`request.object.headers`,
`request.object.return_overrides`, ...) and use the helpers below for the
common edits.  Reading a field directly on the wrapper (`request.headers`)
also works, as it did in Tyk's first Python binding.
"""

from __future__ import annotations

from typing import Any

from worker.objects import Message, MiniRequestObject

__all__ = ["HookRequest"]


class HookRequest:
    """What Tyk passes as `request`; `object` is the proto-like MiniRequestObject."""

    __slots__ = ("object",)

    def __init__(self, obj: Message | None = None) -> None:
        self.object: Any = obj if obj is not None else MiniRequestObject()

    def add_header(self, key: str, value: str) -> None:
        self.object.set_headers[key] = value

    def delete_header(self, key: str) -> None:
        self.object.delete_headers.append(key)

    def add_param(self, key: str, value: str) -> None:
        self.object.add_params[key] = value

    def delete_param(self, key: str) -> None:
        self.object.delete_params.append(key)

    def get_header(self, key: str) -> str | None:
        """The header's value: exact name first, then any case; None when absent.

        The gateway sends Go-canonical names (`Content-Type`); plugins often
        ask for `content-type`, hence the case-insensitive fallback.
        """
        headers = self.object.headers
        if key in headers:
            return str(headers[key])
        wanted = key.lower()
        for name, value in headers.items():
            if name.lower() == wanted:
                return str(value)
        return None

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not slots or methods: the request's fields.
        if name in MiniRequestObject._fields:
            return getattr(self.object, name)
        raise AttributeError(f"'HookRequest' object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"HookRequest({self.object!r})"
