"""Benchmark: the threaded pipeline against the same stages run one frame at a time, and against
its limit, decoding and encoding the same input with no stage between.

Prints per-stage latency (p50/p95), end-to-end FPS and latency for both runs, the gain as a ratio
and the pipeline's FPS as a share of decode -> encode alone, and writes ``benchmark.json`` and
``benchmark.png`` (per-stage time bars; FPS over time).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stream.pipeline import Pipeline
from stream.report import RunStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchmarkResult:
    threaded: RunStats
    sequential: RunStats | None
    decode_encode: RunStats | None = None

    @property
    def gain(self) -> float | None:
        if self.sequential is None or not self.sequential.fps:
            return None
        return self.threaded.fps / self.sequential.fps

    @property
    def share_of_limit(self) -> float | None:
        """The threaded pipeline's FPS over that of decode -> encode alone."""
        if self.decode_encode is None or not self.decode_encode.fps:
            return None
        return self.threaded.fps / self.decode_encode.fps

    def summary(self) -> dict[str, object]:
        return {
            "threaded": self.threaded.summary(),
            "sequential": self.sequential.summary() if self.sequential else None,
            "gain": round(self.gain, 2) if self.gain else None,
            "decode_encode_fps": round(self.decode_encode.fps, 2) if self.decode_encode else None,
            "share_of_decode_encode": round(self.share_of_limit, 3) if self.share_of_limit else None,
        }


def run_benchmark(make_pipeline: Callable[[bool], Pipeline], *, compare_sequential: bool = True,
                  make_decode_encode: Callable[[], Pipeline] | None = None) -> BenchmarkResult:
    """``make_pipeline(sequential)`` builds a fresh pipeline (new source, sinks and stage state);
    ``make_decode_encode()`` the same source and sinks with no stage, the limit."""
    threaded = make_pipeline(False).run()
    sequential = make_pipeline(True).run() if compare_sequential else None
    limit = make_decode_encode().run() if make_decode_encode is not None else None
    return BenchmarkResult(threaded, sequential, limit)


def format_table(result: BenchmarkResult) -> str:
    runs = [("threaded", result.threaded)] + ([("sequential", result.sequential)] if result.sequential else [])
    names = [n for n in [*result.threaded.stage_names, *result.threaded.step_names, "encode", "end_to_end"]
             if n in result.threaded.latencies]
    lines = [f"{'stage':<20}" + "".join(f"{label + ' p50/p95 ms':>28}" for label, _ in runs)]
    for name in names:
        cells = "".join(f"{s.latency(name).p50:>18.1f} / {s.latency(name).p95:>7.1f}" for _, s in runs)
        label = f"  {name.split('.', 1)[1]}" if "." in name else name  # a step inside the stage above
        lines.append(f"{label:<20}{cells}")
    lines.append(f"{'FPS':<20}" + "".join(f"{s.fps:>28.1f}" for _, s in runs))
    lines.append(f"{'frames':<20}" + "".join(f"{s.frames_written:>28d}" for _, s in runs))
    if result.gain:
        lines.append(f"pipeline gain over sequential: {result.gain:.2f}x")
    if result.share_of_limit:
        lines.append(f"decode -> encode alone: {result.decode_encode.fps:.1f} FPS; the pipeline runs at "
                     f"{100 * result.share_of_limit:.0f} % of it")
    return "\n".join(lines)


def write_outputs(result: BenchmarkResult, directory: Path, context: dict[str, object]) -> tuple[Path, Path]:
    """``benchmark.json`` (summary + context: backend, device, models, input) and ``benchmark.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "benchmark.json"
    json_path.write_text(json.dumps({**context, **result.summary()}, indent=2) + "\n")
    runs = [("threaded", result.threaded)] + ([("sequential", result.sequential)] if result.sequential else [])
    names = [n for n in [*result.threaded.stage_names, *result.threaded.step_names, "encode"]
             if n in result.threaded.latencies]
    fig, (bars, timeline) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(runs)
    for k, (label, stats) in enumerate(runs):
        xs = [i + k * width for i in range(len(names))]
        bars.bar(xs, [stats.latency(n).p50 for n in names], width, label=f"{label} p50")
        bars.errorbar(xs, [stats.latency(n).p50 for n in names],
                      yerr=[[0] * len(names), [stats.latency(n).p95 - stats.latency(n).p50 for n in names]],
                      fmt="none", ecolor="black", capsize=3)
        if stats.fps_timeline:
            t, fps = zip(*stats.fps_timeline)
            timeline.plot(t, fps, label=f"{label} ({stats.fps:.1f} FPS)")
    bars.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(names))], names)
    bars.set_ylabel("ms per frame (bar p50, whisker p95)")
    bars.set_title("per-stage latency")
    bars.legend()
    timeline.set_xlabel("seconds")
    timeline.set_ylabel("frames per second")
    timeline.set_title("throughput over time")
    timeline.legend()
    fig.suptitle(" | ".join(f"{k}: {v}" for k, v in context.items() if k in ("input", "backend", "device")))
    fig.tight_layout()
    png_path = directory / "benchmark.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path
