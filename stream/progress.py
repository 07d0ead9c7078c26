"""Progress for a run: a live bar on a terminal, a one-line summary every few seconds otherwise.

tqdm's bar written to a log file or a pipe is thousands of carriage-return updates in one line;
there a reader wants a plain line now and then."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class PeriodicProgress:
    """update(n) counts frames; at most every ``every`` seconds one line goes to ``stream``:
    ``progress: 250/1000 frames (25 %), 24.8 FPS, about 30 s left``; close() writes the last one."""

    def __init__(self, total: int | None, *, stream: TextIO, every: float = 5.0, clock=time.monotonic) -> None:
        self.total = total if total and total > 0 else None
        self.stream = stream
        self.every = every
        self.count = 0
        self._clock = clock
        self._start = self._last = clock()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.count += n
        now = self._clock()
        if now - self._last >= self.every:
            self._last = now
            self._write(now)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write(self._clock(), final=True)

    def _write(self, now: float, *, final: bool = False) -> None:
        elapsed = max(now - self._start, 1e-9)
        fps = self.count / elapsed
        done = f"{self.count}/{self.total} frames ({100 * self.count / self.total:.0f} %)" if self.total else f"{self.count} frames"
        line = f"progress: {done}, {fps:.1f} FPS"
        if final:
            line += f", done in {elapsed:.1f} s"
        elif self.total and fps > 0:
            line += f", about {max(self.total - self.count, 0) / fps:.0f} s left"
        print(line, file=self.stream, flush=True)


def make_progress(total: int | None, *, enabled: bool, stream: TextIO | None = None, every: float = 5.0):
    """A tqdm bar when ``stream`` (default stderr) is a terminal, else a PeriodicProgress; both
    have update(n) and close()."""
    stream = stream if stream is not None else sys.stderr
    if enabled and not stream.isatty():
        return PeriodicProgress(total, stream=stream, every=every)
    return tqdm(total=total, unit="frame", disable=not enabled, dynamic_ncols=True, file=stream)
