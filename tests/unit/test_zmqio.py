"""How frames are grouped into ZeroMQ messages (ipc/zmqio.py `batch_bounds`)."""

from __future__ import annotations

from ipc.protocol import MAX_BATCH
from ipc.zmqio import BATCH_BYTES, batch_bounds


def _sizes(sizes: list[int]) -> list[list[int]]:
    frames = [b"x" * size for size in sizes]
    return [[len(f) for f in frames[start:stop]] for start, stop in batch_bounds(frames)]


def test_small_frames_travel_together_up_to_the_count_bound() -> None:
    assert _sizes([10] * 3) == [[10] * 3]
    assert _sizes([1] * (MAX_BATCH + 2)) == [[1] * MAX_BATCH, [1, 1]]


def test_a_large_frame_travels_alone_and_closes_the_batch_before_it() -> None:
    big = BATCH_BYTES + 1
    assert _sizes([10, big, 10, 10]) == [[10], [big], [10, 10]]
    assert _sizes([big, big]) == [[big], [big]]


def test_a_batch_stops_at_the_byte_bound() -> None:
    half = BATCH_BYTES // 2
    assert _sizes([half, half, 1]) == [[half, half], [1]]


def test_nothing_to_send_makes_no_message() -> None:
    assert list(batch_bounds([])) == []
