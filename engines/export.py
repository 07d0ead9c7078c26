"""Export a shipped model to ONNX, check it, and record what it was built from."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import onnx
import torch

from engines.artifacts import ARTIFACTS_DIR, file_sha256, onnx_path
from engines.registry import MODELS, weights_path
from engines.runtime import TensorSpec

logger = logging.getLogger(__name__)

OPSET = 17

# Operators TensorRT 10's ONNX parser supports (onnx-tensorrt, docs/operators.md), limited to
# those a detector or a conv generator can reasonably produce. Anything else in a graph means
# the TensorRT build would fail, so the tests hold every export to this list.
TENSORRT_ONNX_OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil",
    "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "CumSum", "DepthToSpace",
    "Div", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather",
    "GatherElements", "GatherND", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater",
    "GreaterOrEqual", "GroupNormalization", "HardSigmoid", "HardSwish", "Identity", "If",
    "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "Loop", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mod", "Mul", "Neg",
    "NonMaxSuppression", "NonZero", "Not", "Or", "Pad", "Pow", "PRelu", "Range", "Reciprocal",
    "ReduceL1", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
    "ReduceSumSquare", "Relu", "Reshape", "Resize", "RoiAlign", "Round", "ScatterElements",
    "ScatterND", "Shape", "Sigmoid", "Sign", "Size", "Slice", "Softmax", "Softplus", "SpaceToDepth",
    "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze",
    "Where", "Xor",
})


class ExportError(RuntimeError):
    """A model could not be exported or its ONNX graph is unfit for a backend."""


def graph_ops(model: onnx.ModelProto) -> set[str]:
    """Every operator type in the graph, including those inside If/Loop bodies."""
    ops: set[str] = set()
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            ops.add(node.op_type)
            stack.extend(attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH)
            stack.extend(attr.graphs[i] for attr in node.attribute for i in range(len(attr.graphs)))
    return ops


def example_inputs(specs: tuple[TensorSpec, ...], *, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Inputs for tracing: dynamic dimensions become ``batch``; images get a mid-grey face-like
    blob so a detector produces proposals while it is traced."""
    tensors = []
    for spec in specs:
        shape = tuple(batch if isinstance(d, str) else d for d in spec.shape)
        g = torch.Generator().manual_seed(0)
        if spec.name == "mask":
            t = torch.zeros(shape)
            t[..., shape[-2] // 2 :, shape[-1] // 4 : 3 * shape[-1] // 4] = 1.0
        else:
            t = torch.rand(shape, generator=g)
        tensors.append(t.to(getattr(torch, spec.dtype)))
    return tuple(tensors)


def export_onnx(name: str, *, weights: Path | None = None, artifacts: Path = ARTIFACTS_DIR) -> Path:
    """Write ``artifacts/NAME.onnx`` and its ``.json`` sidecar; returns the ONNX path."""
    spec = MODELS[name]
    source = weights_path(name, weights)
    module, config = spec.load(source)
    inputs, outputs = spec.specs(config)
    args = example_inputs(inputs)
    path = onnx_path(name, artifacts)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a name of this process's own and moved into place once checked: a second run
    # exporting on first use at the same time, or one interrupted, never leaves a half-written
    # model where a reader looks.
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.onnx")
    start = time.perf_counter()
    try:
        _export_checked(name, module, args, inputs, outputs, partial, spec.exporter)
        meta = {
            "model": name,
            "format": "onnx",
            "weights": source.name,
            "weights_sha256": file_sha256(source),
            "onnx_sha256": file_sha256(partial),
            "opset": OPSET,
            "exporter": spec.exporter,
            "torch_version": torch.__version__,
            "inputs": [vars(s) for s in inputs],
            "outputs": [vars(s) for s in outputs],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    path.with_name(path.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("%s: exported %s in %.1f s", name, path, time.perf_counter() - start)
    return path


def _export_checked(name: str, module: torch.nn.Module, args: tuple, inputs: list[TensorSpec],
                    outputs: list[TensorSpec], path: Path, exporter: str) -> None:
    """Export ``module`` to ``path`` and check the model and its output names."""
    input_names = [s.name for s in inputs]
    output_names = [s.name for s in outputs]
    with torch.no_grad():
        if exporter == "legacy":
            dynamic_axes = {
                s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
                for s in (*inputs, *outputs) if any(isinstance(d, str) for d in s.shape)
            }
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET,
                              input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)
        else:
            batch = torch.export.Dim("N", min=1, max=16)
            dynamic_shapes = tuple(
                {i: batch for i, d in enumerate(s.shape) if isinstance(d, str)} for s in inputs
            )
            program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=dynamic_shapes)
            program.save(str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    got = [o.name for o in model.graph.output]
    if got != output_names:
        raise ExportError(f"{name}: exported outputs {got}, expected {output_names}")
