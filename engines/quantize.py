"""int8 variants for CPU: ONNX Runtime static quantisation, calibrated on what the pipeline feeds.

Only convolutions are quantised (QDQ format, per-channel weights): they are nearly all of the
time on a CPU, while contextual attention's MatMul and softmax stay fp32 for the same reason
they stay fp32 in TensorRT (the softmax overflows at low precision).

Calibration inputs come from photos of masked faces, prepared exactly as the pipeline prepares
them (``stream.calibration``, which uses the pipeline's own code; the engines never import it).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from engines.artifacts import ARTIFACTS_DIR, file_sha256, onnx_path, read_sidecar
from engines.export import ExportError
from engines.registry import load_model

logger = logging.getLogger(__name__)

def int8_path(name: str, artifacts: Path = ARTIFACTS_DIR) -> Path:
    return onnx_path(name, artifacts, precision="int8")


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(name: str, feeds: Sequence[dict[str, np.ndarray]], *, artifacts: Path = ARTIFACTS_DIR,
                  source: str = "") -> Path:
    """Write ``artifacts/NAME.int8.onnx`` (+ sidecar) from the fp32 export; returns its path.

    ``source`` says where the calibration images came from (stored in the sidecar)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = onnx_path(name, artifacts)
    meta = read_sidecar(src)
    dst = int8_path(name, artifacts)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quantize_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Symbolic shape inference cannot follow torchvision's data-dependent detection shapes;
        # ONNX's own inference is enough to place the QDQ nodes around convolutions.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    # ONNX's checker rejects the quantiser's renaming inside the detector's Loop body (outer-scope
    # names it cannot resolve); ONNX Runtime, the only consumer of this file, is the real test.
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ExportError(f"{dst}: ONNX Runtime cannot load the int8 variant: {exc}") from exc
    meta.update({
        "precision": "int8",
        "onnx_sha256": file_sha256(dst),
        "source_onnx_sha256": file_sha256(src),
        "calibration": {"samples": len(feeds), "source": source},
        "onnxruntime_quantization": "static QDQ, Conv only, per-channel int8 weights, uint8 activations",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    dst.with_name(dst.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("%s: int8 variant %s from %d calibration inputs in %.1f s", name, dst, len(feeds),
                time.perf_counter() - start)
    return dst


def int8_error(name: str, feeds: Sequence[dict[str, np.ndarray]], *, artifacts: Path = ARTIFACTS_DIR,
               weights: Path | None = None) -> tuple[str, float]:
    """(output name, mean absolute difference between the int8 variant and PyTorch) on ``feeds``,
    over the model's first output: the generator's image (0..1), the detector's boxes (pixels,
    only on inputs where both find the same number of them, so for it a smoke test; its real
    accuracy check is ``training.evaluation.evaluate_detector --precision int8``)."""
    reference = load_model(name, backend="torch", device="cpu", weights=weights)
    quantized = load_model(name, backend="onnxruntime", device="cpu", weights=weights, artifacts=artifacts,
                           precision="int8")
    errors = []
    first = reference.engine.outputs[0].name
    for feed in feeds:
        tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
        want, got = reference.engine.run(tensors)[first], quantized.engine.run(tensors)[first]
        if want.shape == got.shape and want.numel():
            errors.append(float((want.double() - got.double()).abs().mean()))
    return first, float(np.mean(errors)) if errors else float("nan")
