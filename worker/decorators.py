"""The decorators a Tyk Python plugin imports from `tyk.decorators`.

`@Hook` marks a function as a hook callable by its name; `@Event` marks an
event handler.  `Pre`, `Post`, `PostKeyAuth` and `CustomKeyCheck` are Tyk's
older, phase-named spellings of `@Hook` and behave exactly like it.  The
decorated object stays callable with the plugin's own arguments, keeps `f`
(the function), `name` and `arg_count` as Tyk's does, and looks like the
function to introspection (`functools.update_wrapper`).

This module is installed as `tyk.decorators` inside the worker only (see
`worker.tyk_api`); the worker's loader finds hooks by `isinstance` checks on
these classes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["CustomKeyCheck", "Event", "Hook", "Post", "PostKeyAuth", "Pre", "positional_arity"]


def positional_arity(func: Callable[..., Any]) -> tuple[int, bool]:
    """(number of positional parameters, has *args) of `func`.

    Tyk counts `getfullargspec(f).args`; `inspect.signature` counts the same
    parameters but also sees through `functools.wraps` and bound methods, so a
    plugin's own decorators or a hook written as a method keep their arity.
    """
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins and odd callables
        return 0, True
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    count = sum(1 for p in params if p.kind in kinds)
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    return count, varargs


class Hook:
    """`@Hook`: a request, auth or response hook, found by its function name."""

    def __init__(self, f: Callable[..., Any]) -> None:
        if not callable(f):
            raise TypeError(f"@{type(self).__name__} needs a function, got {type(f).__name__}")
        functools.update_wrapper(self, f)
        self.f = f
        self.name: str = getattr(f, "__name__", type(f).__name__)
        self.arg_count, self.varargs = positional_arity(f)
        self.is_async = inspect.iscoroutinefunction(f)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.f(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@{type(self).__name__} {self.name}/{self.arg_count}>"


class Pre(Hook):
    """Legacy `@Pre` (same as `@Hook`)."""


class Post(Hook):
    """Legacy `@Post` (same as `@Hook`)."""


class PostKeyAuth(Hook):
    """Legacy `@PostKeyAuth` (same as `@Hook`)."""


class CustomKeyCheck(Hook):
    """Legacy `@CustomKeyCheck`: an auth hook (same as `@Hook`)."""


class Event:
    """`@Event`: an event handler, called as `f(event, spec)`."""

    def __init__(self, f: Callable[..., Any]) -> None:
        if not callable(f):
            raise TypeError(f"@Event needs a function, got {type(f).__name__}")
        functools.update_wrapper(self, f)
        self.f = f
        self.name: str = getattr(f, "__name__", type(f).__name__)
        self.is_async = inspect.iscoroutinefunction(f)

    def __call__(self, event: Any, spec: Any) -> Any:
        return self.f(event, spec)

    def __repr__(self) -> str:
        return f"<@Event {self.name}>"
