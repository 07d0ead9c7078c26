"""PyTorch backend: the reference every other backend is checked against."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext

import torch
from torch import nn

from engines.runtime import Engine, TensorSpec


class TorchEngine(Engine):
    """Runs ``module(*inputs)`` whose outputs are a tuple in the order of ``outputs``.

    On CUDA, ``half=True`` runs under fp16 autocast; modules keep numerically fragile ops
    (contextual attention's softmax) in fp32 themselves.
    """

    backend = "torch"

    def __init__(
        self,
        module: nn.Module,
        *,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        device: torch.device,
        half: bool = False,
    ) -> None:
        self.module = module.eval().to(device)
        self.inputs = inputs
        self.outputs = outputs
        self.device = device
        self.half = half and device.type == "cuda"

    @torch.inference_mode()
    def _run(
        self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream | None
    ) -> dict[str, torch.Tensor]:
        # Everything is queued on the caller's stream; like TensorRT's execute_async_v3, the
        # caller synchronises (or records an event) before reading the outputs.
        ctx = torch.cuda.stream(stream) if stream is not None else nullcontext()
        with ctx:
            args = [feeds[spec.name].to(self.device, non_blocking=True) for spec in self.inputs]
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
                result = self.module(*args)
            if isinstance(result, torch.Tensor):
                result = (result,)
            if len(result) != len(self.outputs):
                raise RuntimeError(f"module returned {len(result)} outputs, spec names {len(self.outputs)}")
            return {spec.name: out.float() if out.is_floating_point() else out
                    for spec, out in zip(self.outputs, result)}

