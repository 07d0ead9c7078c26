"""TensorRT 10 backend: named tensors, torch CUDA tensors as buffers, the caller's stream.

Written against TensorRT's documented Python API (``deserialize_cuda_engine``,
``set_tensor_address``, ``execute_async_v3``, ``IOutputAllocator``). TensorRT is not installable
on this project's build machines, so the metadata checks around it are what the tests cover.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engines.artifacts import check_sidecar
from engines.runtime import BackendUnavailableError, Engine, EngineError, EngineMismatchError, TensorSpec

logger = logging.getLogger(__name__)

_TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def machine_fingerprint(device: torch.device) -> dict[str, str]:
    """What an engine is only valid for: TensorRT and CUDA versions and the GPU model."""
    import tensorrt as trt

    return {
        "tensorrt_version": trt.__version__,
        "cuda_version": str(torch.version.cuda),
        "gpu": torch.cuda.get_device_name(device),
    }


def check_machine(meta: Mapping[str, Any], device: torch.device, path: Path) -> None:
    here = machine_fingerprint(device)
    for key, value in here.items():
        if meta.get(key) != value:
            raise EngineMismatchError(
                f"{path}: built for {key} {meta.get(key)!r}, this machine has {value!r}; rebuild with build_engines.py"
            )


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, path: Path, *, model: str, weights: Path, device: torch.device) -> None:
        if not tensorrt_available():
            raise BackendUnavailableError("TensorRT is not installed (pip install '.[trt]' on a CUDA machine)")
        if device.type != "cuda":
            raise BackendUnavailableError("the TensorRT backend needs --device cuda")
        if not path.exists():
            raise EngineMismatchError(f"{path} not found; run build_engines.py --tensorrt first")
        import tensorrt as trt

        meta = check_sidecar(path, model=model, weights=weights)
        check_machine(meta, device, path)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self._engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise EngineMismatchError(f"{path}: TensorRT could not deserialise the engine; rebuild it")
        # One context per engine object; the pipeline creates one engine per CUDA stream.
        self._context = self._engine.create_execution_context()
        self.device = device
        inputs, outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(d if d >= 0 else "N" for d in self._engine.get_tensor_shape(name))
            dtype = str(_TRT_TO_TORCH[self._engine.get_tensor_dtype(name).name]).removeprefix("torch.")
            spec = TensorSpec(name, shape, dtype)
            (inputs if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self._allocator = _make_output_allocator(trt, device)

    def _run(
        self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream | None
    ) -> dict[str, torch.Tensor]:
        stream = stream or torch.cuda.current_stream(self.device)
        keep = []
        for spec in self.inputs:
            tensor = feeds[spec.name].to(self.device, non_blocking=True).contiguous()
            keep.append(tensor)
            self._context.set_input_shape(spec.name, tuple(tensor.shape))
            self._context.set_tensor_address(spec.name, tensor.data_ptr())
        fixed: dict[str, torch.Tensor] = {}
        for spec in self.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            if all(d >= 0 for d in shape):
                fixed[spec.name] = torch.empty(shape, dtype=getattr(torch, spec.dtype), device=self.device)
                self._context.set_tensor_address(spec.name, fixed[spec.name].data_ptr())
            else:
                # Data-dependent shapes (detections after NMS) are sized by TensorRT at run time.
                self._context.set_output_allocator(spec.name, self._allocator)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        result = {}
        for spec in self.outputs:
            if spec.name in fixed:
                result[spec.name] = fixed[spec.name]
            else:
                result[spec.name] = self._allocator.view(spec.name, getattr(torch, spec.dtype))
        return result


def _make_output_allocator(trt: Any, device: torch.device) -> Any:
    class TorchOutputAllocator(trt.IOutputAllocator):
        """Backs data-dependent outputs with torch memory, grown only when needed."""

        def __init__(self) -> None:
            # pybind11 needs the base initialised explicitly (TensorRT's Python API docs).
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, torch.Tensor] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):  # noqa: ARG002
            buffer = self.buffers.get(tensor_name)
            if buffer is None or buffer.numel() < size:
                buffer = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
                self.buffers[tensor_name] = buffer
            return buffer.data_ptr()

        def reallocate_output(self, tensor_name, memory, size, alignment):
            return self.reallocate_output_async(tensor_name, memory, size, alignment, None)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

        def view(self, name: str, dtype: torch.dtype) -> torch.Tensor:
            shape = self.shapes[name]
            count = 1
            for d in shape:
                count *= d
            itemsize = torch.empty((), dtype=dtype).element_size()
            return self.buffers[name][: count * itemsize].view(dtype).reshape(shape).clone()

    return TorchOutputAllocator()
