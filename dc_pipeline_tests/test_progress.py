"""The progress tracker's arithmetic (k/n, images/s, elapsed, time left), timed by a fake clock."""

from __future__ import annotations

import pytest

from dc_pipeline.core.progress import Progress, duration, rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_counts_rates_and_estimates_the_time_left() -> None:
    clock = FakeClock()
    p = Progress(4, clock=clock)
    assert p.seconds_left is None and p.items_per_second == 0.0
    clock.now += 10  # epoch 1: 8 s training + 2 s validation
    p.step(1000, seconds=8.0)
    assert (p.done, p.elapsed, p.seconds_left) == (1, 10.0, 30.0)
    assert p.line() == "1/4, 125 images/s, 10 s elapsed, about 30 s left"
    clock.now += 20  # epoch 2 slower: mean epoch 15 s, 2 to go
    p.step(1000, seconds=16.0)
    assert p.seconds_left == pytest.approx(30.0)
    assert p.items_per_second == pytest.approx(2000 / 24)
    assert p.timing() == "62 images/s, 30 s elapsed, about 30 s left"
    clock.now += 5  # a pause between steps counts towards the elapsed time, not the estimate
    assert p.line() == "2/4, 62 images/s, 35 s elapsed, about 30 s left"
    clock.now += 15
    p.step(1000)  # no seconds given: the wall time since the last step (20 s)
    assert p.last_seconds == pytest.approx(20.0)
    clock.now += 30
    p.step(1000, seconds=10.0)
    assert p.line() == "4/4, 100 images/s, 1 min 20 s elapsed"  # done: no time left
    assert p.summary() == "1 min 20 s, 74 images/s on average"  # 4000 images / 54 s


def test_progress_before_any_step_and_invalid_totals() -> None:
    clock = FakeClock()
    p = Progress(3, unit="batches", clock=clock)
    clock.now += 2
    assert p.line() == "0/3, ? batches/s, 2.0 s elapsed, time left unknown"
    with pytest.raises(ValueError):
        Progress(-1)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.02, "<0.1 s"),
        (0.42, "0.4 s"),
        (14.4, "14 s"),
        (59.6, "1 min 00 s"),
        (185, "3 min 05 s"),
        (3725, "1 h 02 min"),
        (float("inf"), "unknown"),
    ],
)
def test_durations_read_short(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_rates_are_grouped_and_small_rates_keep_digits() -> None:
    assert rate(18_500, 10) == "1,850 images/s"
    assert rate(3, 2, "batches") == "1.5 batches/s"
    assert rate(10, 0) == "? images/s"
