"""What every training, evaluation and benchmark entry point does first and last."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import torch


def log_to_stderr(*, timestamps: bool = False) -> None:
    """INFO and above to stderr, one line each (with the time for long training runs)."""
    fmt = ("%(asctime)s " if timestamps else "") + "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt)


def use_cpu_threads(threads: int) -> None:
    """``threads`` torch threads; denormals flushed (they make CPU convolutions many times
    slower); OpenCV on one thread (its own pool would compete with torch for the same cores)."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    cv2.setNumThreads(1)


def training_device(threads: int) -> torch.device:
    """CUDA when there is one; otherwise the CPU, set up by ``use_cpu_threads``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    use_cpu_threads(threads)
    return torch.device("cpu")


def write_json(path: Path | None, results: dict, *, indent: int = 1) -> None:
    """The results as JSON at ``path`` (folders made; nothing without a path). Numbers numpy
    hands back (float32 and the like) are written as floats."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=indent, default=float))
