"""The router's pause after a batch: none after a large one, a short one after a small one,
a longer one while records come at a busy rate."""

from __future__ import annotations

from tidegate.pipeline import router
from tidegate.pipeline.router import Pace


def test_a_small_batch_pauses_briefly_and_a_large_one_not_at_all() -> None:
    pace = Pace()
    assert pace.pause_after(3, 0.0) == router._SMALL_BATCH_PAUSE_S
    assert pace.pause_after(router._SMALL_BATCH, 0.01) == 0.0


def test_a_busy_rate_lengthens_the_pause_and_raises_the_small_batch_bar() -> None:
    pace = Pace()
    now = 0.0
    # A second of batches of 40 records every 10 ms: 4,000 records a second.
    while now < 1.0:
        assert pace.pause_after(40, now) == router._SMALL_BATCH_PAUSE_S
        now += 0.01
    assert pace.pause_after(40, now) == router._BUSY_PAUSE_S
    assert pace.pause_after(router._SMALL_BATCH, now + 0.01) == router._BUSY_PAUSE_S
    assert pace.pause_after(router._BUSY_SMALL_BATCH, now + 0.02) == 0.0


def test_the_pause_shortens_again_once_the_rate_falls() -> None:
    pace = Pace()
    for step in range(101):  # 5,000 records a second
        pace.pause_after(50, step * 0.01)
    assert pace.pause_after(10, 1.02) == router._BUSY_PAUSE_S
    # Then a second at 200 records a second.
    for step in range(1, 21):
        pause = pace.pause_after(10, 1.02 + step * 0.05)
    assert pause == router._SMALL_BATCH_PAUSE_S
