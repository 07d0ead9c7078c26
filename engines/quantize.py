"""int8 variants for CPU: ONNX Runtime static quantisation, calibrated on what the pipeline feeds.

Only convolutions are quantised (QDQ format, per-channel weights): they are nearly all of the
time on a CPU, while contextual attention's MatMul and softmax stay fp32 for the same reason
they stay fp32 in TensorRT (the softmax overflows at low precision).

Calibration inputs come from photos of masked faces, prepared exactly as the pipeline prepares
them: the letterboxed frame for the detector, and for the generator the aligned face crops and
holes cut around the faces and masks the fp32 detector finds in those photos.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from engines.export import ExportError
from engines.registry import ARTIFACTS_DIR, file_sha256, load_model, onnx_path, read_sidecar

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_images(directory: Path, *, limit: int = 200) -> list[np.ndarray]:
    """Up to ``limit`` images under ``directory`` (searched recursively, sorted by path) as
    (H, W, 3) uint8 RGB."""
    if not directory.is_dir():
        raise ExportError(f"calibration folder {directory} not found")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for path in files:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if len(images) >= limit:
            break
    if not images:
        raise ExportError(f"no readable images under {directory}")
    return images


def calibration_feeds(name: str, images: Sequence[np.ndarray], *, weights: Path | None = None
                      ) -> list[dict[str, np.ndarray]]:
    """Named float32 inputs of model ``name`` (batch 1 each), as the pipeline would feed them.

    ``weights``: of model ``name`` (default: the shipped ones); the faces for generator crops are
    found by the shipped detector."""
    from stream.detect import FaceDetector
    from stream.geometry import Letterbox

    detector = load_model("detector", backend="torch", device="cpu", weights=weights if name == "detector" else None)
    if name == "detector":
        hw = tuple(detector.config.input_size)
        return [{"image": Letterbox.fit(im.shape[:2], hw).apply(im, hw).transpose(2, 0, 1)[None]
                 .astype(np.float32) / 255.0} for im in images]
    if name == "verifier":
        from stream.geometry import CropWindow

        verifier = load_model("verifier", backend="torch", device="cpu", weights=weights)
        find = FaceDetector(detector.engine, detector.config)
        s = verifier.config.size
        feeds = [{"image": CropWindow.for_face(b, verifier.config.crop_scale).cut(im, s).transpose(2, 0, 1)[None]
                  .astype(np.float32) / 255.0} for im in images for b in find(im).boxes]
        if not feeds:
            raise ExportError("the detector found no face in the calibration images")
        return feeds
    if name != "generator":
        raise ExportError(f"no calibration recipe for model {name!r}")
    from stream.inpaint import FaceInpainter
    from stream.records import Track

    generator = load_model("generator", backend="torch", device="cpu", weights=weights)
    find = FaceDetector(detector.engine, detector.config)
    inpainter = FaceInpainter(generator.engine, generator.config)
    references = None
    if generator.config.reference:
        from stream.reference import EXEMPLARS, References, load_exemplars

        # Half the faces with a reference (the closest exemplar), half without, as served.
        references = References(given=[], exemplars=load_exemplars(EXEMPLARS), memory=None)
    feeds = []
    for image in images:
        detections = find(image)
        for i in range(len(detections)):
            if not detections.masks[i].any():
                continue
            track = Track(i, detections.boxes[i], float(detections.scores[i]), detections.masks[i])
            _, crop, hole = inpainter.prepare(image, track)
            feed = {"image": crop.transpose(2, 0, 1)[None].astype(np.float32) / 255.0, "mask": hole[None, None]}
            if references is not None:
                size = generator.config.size
                guide = references.guide(len(feeds), crop, hole < 0.5) if len(feeds) % 2 else None
                feed["reference"] = (np.zeros((1, 3, size, size), np.float32) if guide is None
                                     else guide.in_window(size).transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
                feed["reference_mask"] = np.full((1, 1, size, size), float(guide is not None), np.float32)
            feeds.append(feed)
    if not feeds:
        raise ExportError("the detector found no masked face in the calibration images")
    return feeds


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
    accuracy check is ``training.evaluate_detector --precision int8``)."""
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
