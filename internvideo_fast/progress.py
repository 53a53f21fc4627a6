"""Progress of long work: elapsed time and ETA, as a bar on a terminal and as plain periodic lines otherwise.

``ETA = remaining items x recent time per item``, the recent rate measured over the last ``window_s``
seconds of updates (so a slow start such as compilation or a cold cache stops counting once it is past).

    with Progress(total=len(videos), desc="ivf-prepare", unit="videos") as progress:
        for video in videos:
            ...
            progress.update(note=f"{bad} bad")

On a TTY the bar is redrawn in place at most every ``redraw_s``; elsewhere (a log file, CI) one line is
written every ``every_s`` seconds and at the end. :func:`format_duration` and :class:`RecentRate` serve
callers that print their own lines (the training loop).
"""

from __future__ import annotations

import collections
import math
import sys
import time
from typing import Callable, TextIO


def format_duration(seconds: float | None) -> str:
    """``59s``, ``4:05`` (minutes:seconds), ``1:02:03`` (hours:minutes:seconds), ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}" if minutes else f"{secs}s"


class RecentRate:
    """Seconds per item over the recent past: ``update(done, now)`` records progress; :meth:`eta` is
    ``remaining x`` the time per item between the oldest kept record (at most ``window_s`` old, but always
    the previous one) and the newest."""

    def __init__(self, total: int, start: int = 0, window_s: float = 60.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.total, self.clock, self.window_s = total, clock, window_s
        self.started = clock()
        self.records: collections.deque[tuple[float, int]] = collections.deque([(self.started, start)])

    def update(self, done: int, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.records.append((now, done))
        while len(self.records) > 2 and now - self.records[1][0] >= self.window_s:
            self.records.popleft()

    def elapsed(self) -> float:
        return self.records[-1][0] - self.started

    def seconds_per_item(self) -> float | None:
        (t0, d0), (t1, d1) = self.records[0], self.records[-1]
        return (t1 - t0) / (d1 - d0) if d1 > d0 else None

    def eta(self) -> float | None:
        per_item = self.seconds_per_item()
        return None if per_item is None else max(0, self.total - self.records[-1][1]) * per_item


class Progress:
    """A progress display for ``total`` items (see the module docstring); ``enabled=False`` prints nothing."""

    def __init__(self, total: int, desc: str, unit: str = "items", stream: TextIO | None = None,
                 enabled: bool = True, every_s: float = 30.0, redraw_s: float = 0.2, width: int = 30,
                 tty: bool | None = None, clock: Callable[[], float] = time.perf_counter):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s, self.redraw_s, self.width, self.clock = every_s, redraw_s, width, clock
        self.done, self.note = 0, ""
        self.rate = RecentRate(total, 0, clock=clock)
        self.last_shown = self.rate.started
        self.closed = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, count: int = 1, note: str | None = None) -> None:
        self.done += count
        if note is not None:
            self.note = note
        now = self.clock()
        self.rate.update(self.done, now)
        if self.enabled and (now - self.last_shown >= (self.redraw_s if self.tty else self.every_s)
                             or self.done >= self.total):
            self._show(now)

    def line(self) -> str:
        """The text of the display now: ``desc done/total (pct) elapsed eta [note]``."""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = "done" if self.done >= self.total else f"eta {format_duration(self.rate.eta())}"
        text = (f"{self.desc}: {self.done}/{self.total} {self.unit}{pct}, "
                f"elapsed {format_duration(self.rate.elapsed())}, {eta}")
        return text + (f", {self.note}" if self.note else "")

    def _show(self, now: float) -> None:
        self.last_shown = now
        if self.tty:
            filled = self.width * self.done // self.total if self.total else self.width
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {self.line()}\x1b[K")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Shows the final state (if not shown already) and ends the bar's line."""
        if self.closed:
            return
        self.closed = True
        if not self.enabled:
            return
        if self.last_shown != self.rate.records[-1][0] or self.done == 0:
            self._show(self.clock())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
