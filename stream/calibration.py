"""Calibration inputs for int8 engines, prepared exactly as the pipeline prepares them: the
letterboxed frame for the detector, the verifier's face crops, and for the generator the aligned
face crops and holes cut around the faces and masks the fp32 detector finds in photos of masked
faces. Here, beside the stages, because it is the stages' own code that prepares them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import numpy as np

from engines.artifacts import onnx_path
from engines.export import ExportError
from engines.quantize import quantize_int8
from engines.registry import artifact_ready, cached_export, load_model
from stream.detect import FaceDetector, detector_input
from stream.geometry import CropWindow
from stream.inpaint import FaceInpainter
from stream.records import Track
from stream.reference import EXEMPLARS, References, load_exemplars
from stream.source import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

# A masked face the repository carries: an int8 variant built on first use is calibrated on the
# pipeline's own crops of it (a fresh clone has no shared photo set). The generator's int8 form
# calibrated so scored 20.15 dB in the hole on 200 held-out faces against fp32's 20.12.
SAMPLE_CLIP = Path(__file__).resolve().parent.parent / "samples" / "office_worker_720x404.mp4"


def load_images(directory: Path, *, limit: int = 200) -> list[np.ndarray]:
    """Up to ``limit`` images under ``directory`` (searched recursively, sorted by path) as
    (H, W, 3) uint8 RGB."""
    if not directory.is_dir():
        raise ExportError(f"calibration folder {directory} not found")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
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


def video_frames(path: Path, *, every: int = 2, limit: int = 120) -> list[np.ndarray]:
    """Every ``every``-th frame of the video at ``path``, up to ``limit``, as (H, W, 3) uint8 RGB."""
    frames = []
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % every == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) >= limit:
                    break
    except (OSError, av.FFmpegError) as exc:
        raise ExportError(f"cannot read calibration video {path}: {exc}") from exc
    if not frames:
        raise ExportError(f"no frames in calibration video {path}")
    return frames


def cached_int8(name: str, weights: Path) -> Path | None:
    """The user-cache artifacts folder holding ``name``'s int8 variant for ``weights``, built on
    first use (fp32 export, then calibration on ``SAMPLE_CLIP``); None when any step fails, and the
    caller stays on fp32."""
    artifacts = cached_export(name, weights)
    if artifacts is None:
        return None
    if artifact_ready(onnx_path(name, artifacts, precision="int8"), model=name, weights=weights):
        return artifacts
    logger.info("%s: building its int8 variant once, calibrated on %s (cached in %s)", name, SAMPLE_CLIP.name,
                artifacts)
    try:
        feeds = calibration_feeds(name, video_frames(SAMPLE_CLIP), weights=weights)
        quantize_int8(name, feeds, artifacts=artifacts, source=SAMPLE_CLIP.name)
    except Exception as exc:  # noqa: BLE001 - whatever calibration or the quantiser raises, fp32 still runs
        logger.warning("%s: int8 variant not built (%s: %s); running fp32", name, type(exc).__name__, exc)
        return None
    return artifacts


def calibration_feeds(name: str, images: Sequence[np.ndarray], *, weights: Path | None = None
                      ) -> list[dict[str, np.ndarray]]:
    """Named float32 inputs of model ``name`` (batch 1 each), as the pipeline would feed them.

    ``weights``: of model ``name`` (default: the shipped ones); the faces for generator crops are
    found by the shipped detector."""
    detector = load_model("detector", backend="torch", device="cpu", weights=weights if name == "detector" else None)
    if name == "detector":
        hw = tuple(detector.config.input_size)
        return [{"image": detector_input(im, hw)[0].numpy()} for im in images]
    if name in ("verifier", "face_verifier", "parsing", "parsing_masked"):
        model = load_model(name, backend="torch", device="cpu", weights=weights)
        find = FaceDetector(detector.engine, detector.config)
        if name in ("verifier", "face_verifier"):
            s, crop_scale = model.config.size, model.config.crop_scale
        else:  # the generator's crop windows, where the pipeline locates a face's parts
            generator = load_model("generator", backend="torch", device="cpu")
            s, crop_scale = model.config.input_size, generator.config.crop_scale
        feeds = [{"image": CropWindow.for_face(b, crop_scale).cut(im, s).transpose(2, 0, 1)[None]
                  .astype(np.float32) / 255.0} for im in images for b in find(im).boxes]
        if not feeds:
            raise ExportError("the detector found no face in the calibration images")
        return feeds
    if name not in ("generator", "generator_noref"):
        raise ExportError(f"no calibration recipe for model {name!r}")
    generator = load_model(name, backend="torch", device="cpu", weights=weights)
    find = FaceDetector(detector.engine, detector.config)
    inpainter = FaceInpainter(generator.engine, generator.config)
    references = None
    if generator.config.reference:
        # Half the faces with a reference (the closest exemplar stands in for a person's photo), half without.
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
