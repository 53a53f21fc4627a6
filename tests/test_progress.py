"""Progress and ETA: durations, the recent-rate ETA, the terminal bar and the plain periodic lines."""

import io

import pytest

from internvideo_fast.progress import Progress, RecentRate, format_duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (61, "1:01"), (3723, "1:02:03"),
                                           (None, "?"), (float("inf"), "?"), (-1, "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_the_eta_follows_the_recent_pace_not_the_start():
    clock = Clock()
    rate = RecentRate(total=100, start=0, window_s=10.0, clock=clock)
    assert rate.eta() is None
    clock.now += 50.0  # a slow start (compilation, a cold cache): 50 s for the first item
    rate.update(1)
    assert rate.eta() == pytest.approx(99 * 50.0)
    for _ in range(20):  # then 1 s per item
        clock.now += 1.0
        rate.update(rate.records[-1][1] + 1)
    assert rate.eta() == pytest.approx(79 * 1.0)
    assert rate.elapsed() == pytest.approx(70.0)


def test_plain_lines_are_periodic_and_end_with_the_total():
    clock, stream = Clock(), io.StringIO()
    with Progress(10, "job", unit="videos", stream=stream, every_s=5.0, tty=False, clock=clock) as progress:
        for done in range(10):
            clock.now += 1.0
            progress.update(note=f"{done} bad")
    lines = stream.getvalue().splitlines()
    assert lines == ["job: 5/10 videos (50%), elapsed 5s, eta 5s, 4 bad",
                     "job: 10/10 videos (100%), elapsed 10s, done, 9 bad"]


def test_a_terminal_gets_one_redrawn_bar():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(4, "job", stream=stream, tty=True, redraw_s=0.0, width=8, clock=clock)
    for _ in range(4):
        clock.now += 2.0
        progress.update()
    progress.close()
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "\r[####....] job: 2/4 items (50%), elapsed 4s, eta 4s" in text
    assert "[########] job: 4/4 items (100%), elapsed 8s, done" in text


def test_disabled_progress_prints_nothing():
    stream = io.StringIO()
    with Progress(3, "job", stream=stream, enabled=False) as progress:
        progress.update(3)
    assert stream.getvalue() == ""
