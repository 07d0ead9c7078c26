"""Progress output: a bar on a terminal, plain periodic lines in a log or a pipe."""

from __future__ import annotations

import io

from stream.progress import PeriodicProgress, make_progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_periodic_lines_every_few_seconds_and_a_last_one():
    out, clock = io.StringIO(), _Clock()
    progress = PeriodicProgress(100, stream=out, every=5.0, clock=clock)
    for _ in range(39):  # 8 FPS, not yet 5 s: nothing
        clock.now += 0.125
        progress.update()
    assert out.getvalue() == ""
    for _ in range(9):
        clock.now += 0.125
        progress.update()
    progress.close()
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines == ["progress: 40/100 frames (40 %), 8.0 FPS, about 8 s left",
                     "progress: 48/100 frames (48 %), 8.0 FPS, done in 6.0 s"]
    assert "\r" not in out.getvalue()


def test_live_source_without_a_frame_count():
    out, clock = io.StringIO(), _Clock()
    progress = PeriodicProgress(None, stream=out, every=1.0, clock=clock)
    clock.now = 2.0
    progress.update(50)
    assert out.getvalue().splitlines() == ["progress: 50 frames, 25.0 FPS"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_pipe_gets_lines():
    assert isinstance(make_progress(10, enabled=True, stream=io.StringIO()), PeriodicProgress)
    bar = make_progress(10, enabled=True, stream=_Terminal())
    assert not isinstance(bar, PeriodicProgress)
    bar.update(3)
    bar.close()
    silent = io.StringIO()
    make_progress(10, enabled=False, stream=silent).close()
    assert silent.getvalue() == ""
