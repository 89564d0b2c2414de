"""Test doubles that record what the code under test sent."""

from __future__ import annotations

from ipc.notify import Notifier


class RecordingNotifier(Notifier):
    """An sd_notify client that keeps each message instead of sending it."""

    def __init__(self) -> None:
        super().__init__(address="")
        self.sent: list[dict[str, str | int]] = []

    def send(self, **fields: str | int) -> bool:
        self.sent.append(fields)
        return True
