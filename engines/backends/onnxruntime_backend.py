"""ONNX Runtime backend (CPU, or CUDA where onnxruntime-gpu is installed)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from engines.runtime import BackendUnavailableError, Engine, TensorSpec

logger = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _specs(args) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(a.name, tuple(d if isinstance(d, int) else str(d) for d in a.shape),
                   _ORT_TYPES.get(a.type, a.type))
        for a in args
    )


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, path: Path, *, device: torch.device, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Two stages share two cores on a laptop-class CPU; oversubscribing threads costs more
        # than it gains, so the caller may cap them.
        options.intra_op_num_threads = threads or int(os.environ.get("ORT_THREADS", "0"))
        # Spinning worker threads steal the core from the pipeline's other stages.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The legacy exporter annotates some detector intermediates with the traced instance
        # count; ORT warns on every run when the real count differs, which is expected.
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.device = device
        self.inputs = _specs(self.session.get_inputs())
        self.outputs = _specs(self.session.get_outputs())

    def _run(
        self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream | None
    ) -> dict[str, torch.Tensor]:
        arrays = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in feeds.items()}
        names = [spec.name for spec in self.outputs]
        results = self.session.run(names, arrays)
        return {name: torch.from_numpy(np.asarray(r)).to(self.device) for name, r in zip(names, results)}
