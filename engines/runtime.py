"""The engine interface: one small contract that every backend fills in.

An engine runs a network on named tensors. Inputs and outputs are torch tensors on the
engine's device; outputs come back in a dict keyed by output name, so callers never depend
on output order. ``stream`` is the caller's CUDA stream (``torch.cuda.Stream``) or None for
the current stream; CPU backends ignore it.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "onnxruntime", "torch")


class EngineError(RuntimeError):
    """An engine cannot be loaded or run."""


class BackendUnavailableError(EngineError):
    """The requested backend is not installed or cannot run on this machine."""


class EngineMismatchError(EngineError):
    """A serialised engine does not match the weights, the machine or the library versions."""


class WeightsError(EngineError):
    """A weights file is missing, unreadable, of another model, or does not fit its own config."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one engine input or output.

    ``shape`` holds ints for fixed dimensions and strings for dynamic ones (e.g. ``"N"``).
    ``dtype`` is a torch dtype name without the ``torch.`` prefix (``"float32"``).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def check(self, tensor: torch.Tensor) -> None:
        if str(tensor.dtype).removeprefix("torch.") != self.dtype:
            raise EngineError(f"input {self.name!r}: dtype {tensor.dtype}, expected {self.dtype}")
        if tensor.dim() != len(self.shape) or any(
            isinstance(want, int) and want != got for want, got in zip(self.shape, tensor.shape)
        ):
            raise EngineError(f"input {self.name!r}: shape {tuple(tensor.shape)}, expected {self.shape}")


class Engine(abc.ABC):
    """A loaded network on one backend and device."""

    backend: str
    device: torch.device
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(
        self, feeds: Mapping[str, torch.Tensor], *, stream: torch.cuda.Stream | None = None
    ) -> dict[str, torch.Tensor]:
        """Run once. ``feeds`` must name every input; extra names are an error."""
        names = {spec.name for spec in self.inputs}
        if set(feeds) != names:
            raise EngineError(f"feeds {sorted(feeds)} do not match inputs {sorted(names)}")
        for spec in self.inputs:
            spec.check(feeds[spec.name])
        return self._run(feeds, stream)

    @abc.abstractmethod
    def _run(
        self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream | None
    ) -> dict[str, torch.Tensor]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend}, device={self.device})"


class DeviceStream:
    """A stage's own CUDA stream on a GPU engine, so stages in different threads overlap on the
    device; on the CPU every call is a plain pass-through.

    ``upload`` copies a host tensor from pinned memory without blocking the stage's thread;
    ``wait`` blocks until the stage's queued work is done, before results are read on the host.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def upload(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.stream is None:
            return tensor
        with torch.cuda.stream(self.stream):
            return tensor.pin_memory().to(self.device, non_blocking=True)

    def active(self) -> contextlib.AbstractContextManager:
        """Context in which torch work is queued on this stream (nothing on the CPU)."""
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def wait(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
