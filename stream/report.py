"""Run statistics: frame counts, throughput and per-stage latency, for the report and the benchmark."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream.records import Frame


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds."""

    p50: float
    p95: float
    mean: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencySummary:
        if not seconds:
            return cls(float("nan"), float("nan"), float("nan"))
        ms = np.asarray(seconds) * 1000.0
        return cls(float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.mean()))


def resident_mb() -> float | None:
    """This process's resident memory in MB (None where /proc is not there)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# Memory is sampled every this many frames; the first sample is taken after the warm-up (model
# workspaces, codec buffers), so what grows after it is what a long run would leak.
MEMORY_EVERY = 100


@dataclass
class RunStats:
    """Counts and timings of one run; thread-safe counters, summaries computed at the end.

    frames_dropped: frames a live source lost because the pipeline fell behind.
    frames_corrupt: frames or packets the decoder could not read and skipped.
    frames_filled: written frames on which some face was reconstructed.
    staleness: per written frame that carried a detection, how many frames older the picture
        the detector saw is (0 unless the detector runs in the background).
    memory_mb: (frames written, resident MB) every ``MEMORY_EVERY`` frames.
    """

    stage_names: list[str]
    frames_read: int = 0
    frames_written: int = 0
    frames_dropped: int = 0
    frames_corrupt: int = 0
    frames_filled: int = 0
    wall_seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    fps_timeline: list[tuple[float, float]] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    memory_mb: list[tuple[int, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _t0: float = 0.0
    _window: list[float] = field(default_factory=list, repr=False)

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def count_read(self) -> None:
        with self._lock:
            self.frames_read += 1

    def count_dropped(self) -> None:
        with self._lock:
            self.frames_dropped += 1

    def count_written(self, frame: Frame) -> None:
        now = time.perf_counter()
        with self._lock:
            self.frames_written += 1
            self.frames_filled += bool(frame.filled)
            for name, value in frame.latency.items():
                self.latencies.setdefault(name, []).append(value)
            if frame.decoded_at is not None:
                self.latencies.setdefault("end_to_end", []).append(now - frame.decoded_at)
            if frame.detected_index is not None:
                self.staleness.append(frame.index - frame.detected_index)
            if self.frames_written % MEMORY_EVERY == 0 and (mb := resident_mb()) is not None:
                self.memory_mb.append((self.frames_written, mb))
            self._window.append(now)
            if len(self._window) >= 10:
                span = self._window[-1] - self._window[0]
                self.fps_timeline.append((now - self._t0, (len(self._window) - 1) / span if span > 0 else 0.0))
                self._window = self._window[-1:]

    def finish(self, *, corrupt: int) -> None:
        self.wall_seconds = time.perf_counter() - self._t0
        self.frames_corrupt = corrupt

    @property
    def fps(self) -> float:
        return self.frames_written / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    @property
    def step_names(self) -> list[str]:
        """Steps inside a stage that reported them ("inpaint.generator", ...), in stage order."""
        steps = sorted({n for n in self.latencies if "." in n})
        return [n for stage in self.stage_names for n in steps if n.startswith(stage + ".")]

    def latency(self, name: str) -> LatencySummary:
        return LatencySummary.of(self.latencies.get(name, []))

    def summary(self) -> dict[str, object]:
        """A JSON-ready summary (the ``--report`` file's ``run`` section)."""
        names = [*self.stage_names, *self.step_names, "encode", "end_to_end"]
        extra: dict[str, object] = {}
        if self.staleness:
            stale = np.asarray(self.staleness)
            extra["detection_staleness_frames"] = {"mean": round(float(stale.mean()), 2), "max": int(stale.max())}
        if len(self.memory_mb) >= 2:
            first, last = self.memory_mb[0][1], self.memory_mb[-1][1]
            extra["memory_mb"] = {"after_warmup": round(first, 1), "end": round(last, 1),
                                  "growth": round(last - first, 1), "frames": self.memory_mb[-1][0]}
        return {
            "frames_read": self.frames_read,
            "frames_written": self.frames_written,
            "frames_dropped": self.frames_dropped,
            "frames_corrupt": self.frames_corrupt,
            "frames_filled": self.frames_filled,
            "wall_seconds": round(self.wall_seconds, 3),
            "fps": round(self.fps, 2),
            "latency_ms": {
                n: {k: round(v, 2) for k, v in vars(self.latency(n)).items()} for n in names if n in self.latencies
            },
            **extra,
        }
