"""The one exception every layer raises when the kernel says no."""

from __future__ import annotations

__all__ = ["LayerUnavailable"]


class LayerUnavailable(Exception):
    """A layer could not be applied; the message says why, in an operator's words."""
