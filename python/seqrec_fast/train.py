"""The session-parallel schedule and the chunked training loop (DESIGN.md §3.3).

The schedule of an epoch is computed once, vectorised: which session each of the B slots holds at
each step, the input and target item of every (step, slot), and where a slot's state is reset.
Training then hands C++ chunks of many steps at once (``_core.train_chunk``); the negatives and
dropout masks of a chunk are drawn in Python from the seeded generator just before the call.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Schedule", "session_parallel_schedule"]


@dataclass
class Schedule:
    """An epoch of session-parallel mini-batches.

    Attributes
    ----------
    x, y : int32 (n_steps, B)
        Input item and target item of every step and slot; -1 where the slot is idle (at the
        tail of the epoch, when no session is left to take it).
    reset : uint8 (n_steps, B)
        1 where a new session starts in the slot: its carried state is zeroed before the step.
    n_events : int
        Number of predictions (events after the first of each session).
    """

    x: np.ndarray
    y: np.ndarray
    reset: np.ndarray
    n_events: int

    @property
    def n_steps(self) -> int:
        return self.x.shape[0]

    def windows(self, bptt: int):
        """(n_windows, bptt, B) views, the last window padded with idle steps."""
        n, B = self.x.shape
        n_win = -(-n // bptt)
        pad = n_win * bptt - n

        def shaped(a, fill):
            if pad:
                a = np.concatenate([a, np.full((pad, B), fill, a.dtype)])
            return a.reshape(n_win, bptt, B)

        return shaped(self.x, -1), shaped(self.y, -1), shaped(self.reset, 0)


def session_parallel_schedule(items: np.ndarray, offsets: np.ndarray, batch_size: int,
                              order: np.ndarray | None = None) -> Schedule:
    """Builds the GRU4Rec session-parallel schedule.

    Sessions are taken in ``order`` (default: as stored, which for ``SessionData`` is by first event
    time). Each of the ``batch_size`` slots works through one session at a time, one event per step;
    when a session ends, the next session in order takes the slot, lower slot index first when
    several slots free up at the same step (as the official iterator does). No event is skipped;
    near the end the batch shrinks as slots run out of sessions. Sessions of length < 2 have
    nothing to predict and are skipped.

    Parameters
    ----------
    items : int32 (n_events,)
    offsets : int64 (n_sessions + 1,)
    batch_size : int
    order : int array (n_sessions,), optional

    Returns
    -------
    Schedule
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    order = np.arange(len(lengths)) if order is None else np.asarray(order, dtype=np.int64)
    order = order[lengths[order] >= 2]
    n_pred = lengths[order] - 1
    n_sess = len(order)
    if n_sess == 0:
        raise ValueError("no session has 2 or more events: nothing to train on")
    B = int(batch_size)
    # Slot of each session and the step it starts at (a heap over the sessions, not the events).
    start = np.empty(n_sess, np.int64)
    slot = np.empty(n_sess, np.int64)
    heap = [(0, b) for b in range(min(B, n_sess))]
    for s in range(n_sess):
        t, b = heapq.heappop(heap)
        start[s], slot[s] = t, b
        heapq.heappush(heap, (t + int(n_pred[s]), b))
    n_steps = int((start + n_pred).max())
    total = int(n_pred.sum())
    rep = np.repeat(np.arange(n_sess), n_pred)
    k = np.arange(total) - np.repeat(np.cumsum(n_pred) - n_pred, n_pred)
    step = start[rep] + k
    col = slot[rep]
    pos = offsets[order][rep] + k
    x = np.full((n_steps, B), -1, np.int32)
    y = np.full((n_steps, B), -1, np.int32)
    reset = np.zeros((n_steps, B), np.uint8)
    x[step, col] = items[pos]
    y[step, col] = items[pos + 1]
    reset[start, slot] = 1
    return Schedule(x=x, y=y, reset=reset, n_events=total)


class Throughput:
    """Events/s over a run, for the progress bar and the epoch log."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.events = 0

    def add(self, n: int) -> None:
        self.events += int(n)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def rate(self) -> float:
        return self.events / max(self.seconds, 1e-9)
