"""PyTorch backend: the reference every other backend is checked against."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import nullcontext

import torch
from torch import nn

from engines.runtime import Engine, TensorSpec

logger = logging.getLogger(__name__)


class TorchEngine(Engine):
    """Runs ``module(*inputs)`` whose outputs are a tuple in the order of ``outputs``.

    On CUDA, ``half=True`` runs under fp16 autocast; modules keep numerically fragile ops
    (contextual attention's softmax) in fp32 themselves. ``cuda_graphs=True`` (CUDA only, for a
    model of fixed shapes such as the generator): each new set of input shapes is captured once as
    a CUDA graph and replayed after, which saves the launch of every small kernel on each call;
    a module that cannot be captured runs eagerly, with a warning.
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
        cuda_graphs: bool = False,
    ) -> None:
        self.module = module.eval().to(device)
        self.inputs = inputs
        self.outputs = outputs
        self.device = device
        self.half = half and device.type == "cuda"
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self._graphs: dict[tuple, _Graph | None] = {}

    def _forward(self, args: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            result = self.module(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        if len(result) != len(self.outputs):
            raise RuntimeError(f"module returned {len(result)} outputs, spec names {len(self.outputs)}")
        return {spec.name: out.float() if out.is_floating_point() else out
                for spec, out in zip(self.outputs, result)}

    @torch.inference_mode()
    def _run(
        self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream | None
    ) -> dict[str, torch.Tensor]:
        # Everything is queued on the caller's stream; like TensorRT's execute_async_v3, the
        # caller synchronises (or records an event) before reading the outputs.
        ctx = torch.cuda.stream(stream) if stream is not None else nullcontext()
        with ctx:
            args = [feeds[spec.name].to(self.device, non_blocking=True) for spec in self.inputs]
            if not self.cuda_graphs:
                return self._forward(args)
            key = tuple((tuple(a.shape), a.dtype) for a in args)
            if key not in self._graphs:
                self._graphs[key] = self._capture(args)
            graph = self._graphs[key]
            return self._forward(args) if graph is None else graph(args)

    def _capture(self, args: list[torch.Tensor]) -> _Graph | None:
        try:
            return _Graph(self, args)
        except RuntimeError as exc:
            logger.warning("CUDA graph capture failed for input shapes %s (%s); running eagerly",
                           [tuple(a.shape) for a in args], exc)
            return None


class _Graph:
    """One captured call of a TorchEngine: static input and output tensors on the device, the
    graph between them. A call copies its inputs in, replays, and returns copies of the outputs
    (the next replay overwrites the static ones)."""

    def __init__(self, engine: TorchEngine, args: list[torch.Tensor]) -> None:
        self.static_inputs = [a.clone() for a in args]
        # Warm-up on a side stream, as capture requires: lazy initialisation (cuDNN autotuning,
        # allocator pools) must not happen inside the graph.
        side = torch.cuda.Stream(engine.device)
        side.wait_stream(torch.cuda.current_stream(engine.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                engine._forward(self.static_inputs)
        torch.cuda.current_stream(engine.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_outputs = engine._forward(self.static_inputs)

    def __call__(self, args: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        for static, given in zip(self.static_inputs, args):
            static.copy_(given, non_blocking=True)
        self.graph.replay()
        return {name: out.clone() for name, out in self.static_outputs.items()}
