"""Build TensorRT engines from exported ONNX graphs.

The TensorRT path follows TensorRT 10's documented Python API (``build_serialized_network``,
optimisation profiles, timing cache, ``OBEY_PRECISION_CONSTRAINTS``). TensorRT cannot be
installed on this project's build machines; what can be checked without it (graph ops,
metadata, refusal of mismatched engines) is covered by the tests.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from engines.export import TENSORRT_ONNX_OPS, ExportError, graph_ops
from engines.artifacts import read_sidecar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorRTSettings:
    """precision: "fp16", "fp32" or "int8" (int8 needs calibration images).
    max_batch: largest batch of face crops a dynamic-batch engine accepts (profile 1..max_batch).
    workspace_mib: scratch memory TensorRT may use while choosing kernels.
    fp32_layers: name fragments of layers pinned to fp32 (contextual attention's softmax
        overflows in fp16).
    """

    precision: str = "fp16"
    max_batch: int = 8
    workspace_mib: int = 2048
    fp32_layers: tuple[str, ...] = ("attention", "Softmax")


def check_tensorrt_ops(path: Path) -> None:
    unsupported = graph_ops(onnx.load(str(path))) - TENSORRT_ONNX_OPS
    if unsupported:
        raise ExportError(f"{path}: ops TensorRT's ONNX parser does not support: {sorted(unsupported)}")


def build_tensorrt(
    onnx_file: Path,
    plan: Path,
    *,
    settings: TensorRTSettings = TensorRTSettings(),
    timing_cache: Path | None = None,
    calibration: Sequence[dict[str, np.ndarray]] | None = None,
) -> Path:
    """Parse ``onnx_file``, build a serialised engine at ``plan`` with a metadata sidecar.

    ``calibration``: named batch-1 inputs for int8 (``stream.calibration.calibration_feeds``)."""
    import tensorrt as trt

    from engines.backends.tensorrt_backend import machine_fingerprint

    check_tensorrt_ops(onnx_file)
    source_meta = read_sidecar(onnx_file)
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_file.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_file}: TensorRT could not parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if settings.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if any(fragment in layer.name for fragment in settings.fp32_layers):
                layer.precision = trt.float32
                for k in range(layer.num_outputs):
                    layer.set_output_type(k, trt.float32)
    if settings.precision == "int8":
        if not calibration:
            raise ExportError("int8 needs calibration images (--calibration DIR)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _make_calibrator(trt, calibration, plan.with_suffix(".calib"))
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        if any(d < 0 for d in dims):
            lo = tuple(1 if d < 0 else d for d in dims)
            opt = tuple(min(2, settings.max_batch) if d < 0 else d for d in dims)
            hi = tuple(settings.max_batch if d < 0 else d for d in dims)
            profile.set_shape(tensor.name, lo, opt, hi)
            shapes[tensor.name] = {"min": lo, "opt": opt, "max": hi}
        else:
            shapes[tensor.name] = {"fixed": dims}
    config.add_optimization_profile(profile)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_file}: TensorRT engine build failed (see the TensorRT log above)")
    plan.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    device = torch.device("cuda")
    meta = {
        "model": source_meta["model"],
        "format": "tensorrt",
        "weights": source_meta["weights"],
        "weights_sha256": source_meta["weights_sha256"],
        "onnx_sha256": source_meta["onnx_sha256"],
        "precision": settings.precision,
        "shapes": shapes,
        **machine_fingerprint(device),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    plan.with_name(plan.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return plan


def _make_calibrator(trt, feeds: Sequence[dict[str, np.ndarray]], cache_file: Path):
    class Calibrator(trt.IInt8EntropyCalibrator2):
        """Feeds one named input set at a time; caches the scales so rebuilds skip calibration."""

        def __init__(self) -> None:
            super().__init__()
            self._feeds = iter(feeds)
            # Kept alive until TensorRT asks for the next batch: it reads these device pointers.
            self._current: dict[str, torch.Tensor] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            feed = next(self._feeds, None)
            if feed is None:
                return None
            self._current = {k: torch.from_numpy(v).cuda() for k, v in feed.items()}
            return [int(self._current[n].data_ptr()) for n in names]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.exists() else None

        def write_calibration_cache(self, cache):
            cache_file.write_bytes(bytes(cache))

    logger.info("int8 calibration on %d input sets", len(feeds))
    return Calibrator()
