"""How far a long step is: "6/30, 1,850 images/s, 14 s elapsed, about 40 s left".

A plain tracker over a fixed number of steps (epochs, batches), Dagster-free. The clock is injectable, so the
arithmetic is tested with fake times.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["Progress", "duration", "rate"]


def duration(seconds: float) -> str:
    """A short human duration: ``"<0.1 s"``, ``"0.4 s"``, ``"14 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "unknown"
    if seconds < 0.1:
        return "<0.1 s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min"


def rate(items: float, seconds: float, unit: str = "images") -> str:
    """``"1,850 images/s"`` (``"? images/s"`` when no time has passed)."""
    if seconds <= 0 or not math.isfinite(items / seconds):
        return f"? {unit}/s"
    per_s = items / seconds
    return f"{per_s:,.0f} {unit}/s" if per_s >= 10 else f"{per_s:.2g} {unit}/s"


class Progress:
    """Progress over ``total`` steps, timed by ``clock`` (seconds; ``time.perf_counter`` by default).

    Call ``step(items, seconds)`` as each step finishes: ``items`` processed in it and, optionally, the seconds
    they took (e.g. training time without the validation pass); otherwise the wall time since the last step.
    The time left is the mean wall time per step so far times the steps still to go.
    """

    def __init__(self, total: int, unit: str = "images", clock: Callable[[], float] = time.perf_counter):
        if total < 0:
            raise ValueError(f"total must not be negative, got {total}")
        self.total, self.unit, self._clock = int(total), unit, clock
        self.done = 0
        self.items = 0.0
        self.busy_seconds = 0.0  # the seconds the items took (the rate's denominator)
        self.last_items = 0.0
        self.last_seconds = 0.0
        self._start = self._last = clock()

    @property
    def elapsed(self) -> float:
        """Wall seconds since the tracker started."""
        return self._clock() - self._start

    @property
    def seconds_left(self) -> float | None:
        """Estimated seconds to go (mean step time so far x steps left); ``None`` before the first step."""
        if self.done == 0:
            return None
        return (self._last - self._start) / self.done * (self.total - self.done)

    @property
    def items_per_second(self) -> float:
        """Mean rate over all steps so far (0.0 before any time was spent)."""
        return self.items / self.busy_seconds if self.busy_seconds > 0 else 0.0

    def step(self, items: float = 0, seconds: float | None = None) -> None:
        """One step finished, having processed ``items`` in ``seconds`` (default: wall time since the last step)."""
        now = self._clock()
        took = now - self._last if seconds is None else float(seconds)
        self._last = now
        self.done += 1
        self.items += items
        self.busy_seconds += took
        self.last_items, self.last_seconds = float(items), took

    def timing(self) -> str:
        """``"1,850 images/s, 14 s elapsed, about 40 s left"``: the last step's rate, the time since the start and,
        unless all steps are done, the time left."""
        parts = [rate(self.last_items, self.last_seconds, self.unit), f"{duration(self.elapsed)} elapsed"]
        if self.done < self.total:
            left = self.seconds_left
            parts.append("time left unknown" if left is None else f"about {duration(left)} left")
        return ", ".join(parts)

    def line(self) -> str:
        """``"6/30, 1,850 images/s, 14 s elapsed, about 40 s left"``."""
        return f"{self.done}/{self.total}, {self.timing()}"

    def summary(self) -> str:
        """``"1 min 02 s, 1,790 images/s on average"``: the time since the start and the mean rate."""
        return f"{duration(self.elapsed)}, {rate(self.items, self.busy_seconds, self.unit)} on average"
