"""Evaluate the face / face-mask detector.

    python -m training.evaluation.evaluate_detector --weights engines/weights/detector_mobilenet_v3.pt \
        --data ../shared/data --json runs/detector/eval.json

Metrics, on these sets:

* synthetic: the fixed validation scenes (``DetectorSceneDataset(split="val")``, indices
  ``0..n-1``; UTKFace faces never used in training);
* sheer: validation scenes of the same kind with every mask see-through (mesh, rhinestones);
* segmentation: the held-out IWM/CWM images (every 5th by sorted name per set), letterboxed
  like the pipeline does, scored at the original 512x512 resolution;
* photos: /photos/masked (no labels): detection rate = fraction of images with a face_mask
  detection scoring at least ``--score``;
* clips: every frame of /videos/masked, run through the detector one by one (no tracking):
  the same detection rate over the frames where a masked face is visible
  (``training/evaluation/annotations/masked_clips.json`` says from which frame on), per clip and overall.

``face_mask`` mask IoU / F-score: for every ground-truth worn mask, the best IoU (and the
F-score, i.e. Dice, of that prediction) over predicted face_mask instances with score >=
``--score`` (0 when there is none), averaged over ground-truth instances (also over "large"
masks only, >= 32x32 pixels, and by mask area). By area, each bucket also gets the IoU that
the label itself scores when grown or shrunk by one pixel: a model whose edges are one pixel off
everywhere scores that, which bounds what small masks can reach. ``face`` AP50:
all-point interpolated average precision of face boxes at IoU 0.5 over all detections.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from engines.models.detector import FACE, FACE_MASK, load_detector_meta
from engines.registry import load_model
from engines.runtime import EngineError
from stream.detect import detector_input
from stream.geometry import box_iou
from stream.source import VideoFileSource
from training.cli import log_to_stderr, use_cpu_threads, write_json
from training.data.detector_data import (
    DataUnavailableError,
    DetectorDataConfig,
    DetectorSceneDataset,
    segmentation_files,
    segmentation_instances,
)

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Worn masks of at least 32x32 pixels (at the resolution scored) count as "large"; small ones
# (distant faces, 28x28 mask head upsampled) bound the mean IoU far below the large-mask IoU.
LARGE_MASK_AREA = 32 * 32
# Worn-mask area buckets in pixels, [low, high).
AREA_BUCKETS = ((12, 400), (400, 1024), (1024, 4096), (4096, None))
CLIP_ANNOTATIONS = Path(__file__).with_name("annotations") / "masked_clips.json"


def average_precision(
    detections: list[tuple[int, float, np.ndarray]], gt_boxes: dict[int, np.ndarray], *, iou: float = 0.5
) -> float:
    """All-point interpolated AP. detections: (image id, score, xyxy box); gt_boxes: image id ->
    (G, 4) boxes. Each ground truth matches at most one detection, highest score first."""
    n_gt = sum(len(b) for b in gt_boxes.values())
    if n_gt == 0:
        return float("nan")
    used = {k: np.zeros(len(v), bool) for k, v in gt_boxes.items()}
    tp = []
    for img, _, box in sorted(detections, key=lambda d: -d[1]):
        gts = gt_boxes.get(img, np.zeros((0, 4)))
        if len(gts) == 0:
            tp.append(0)
            continue
        ious = box_iou(box[None], gts)[0]
        ious[used[img]] = -1
        j = int(ious.argmax())
        if ious[j] >= iou:
            used[img][j] = True
            tp.append(1)
        else:
            tp.append(0)
    if not tp:
        return 0.0
    tp_arr = np.array(tp, np.float64)
    ctp = np.cumsum(tp_arr)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(tp_arr) + 1)
    # Precision envelope, then area under the step curve.
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def mask_scores(gt_masks: list[np.ndarray], pred_masks: list[np.ndarray]) -> list[tuple[float, float]]:
    """Per ground-truth mask: (best IoU, F-score of that prediction); (0, 0) without predictions."""
    out = []
    for gt in gt_masks:
        best = (0.0, 0.0)
        for pm in pred_masks:
            inter = float(np.logical_and(gt, pm).sum())
            union = float(np.logical_or(gt, pm).sum())
            if union == 0:
                continue
            iou = inter / union
            if iou > best[0]:
                best = (iou, 2 * inter / max(float(gt.sum() + pm.sum()), 1.0))
        out.append(best)
    return out


@dataclass(frozen=True)
class MaskScore:
    """One ground-truth worn mask: best IoU and its F-score (as ``mask_scores``), the mask's area
    in pixels, and the IoU of the label with itself grown / shrunk by one pixel (3x3)."""

    iou: float
    f: float
    area: float
    label_grown_iou: float
    label_shrunk_iou: float


def score_masks(gt_masks: list[np.ndarray], pred_masks: list[np.ndarray]) -> list[MaskScore]:
    kernel = np.ones((3, 3), np.uint8)
    out = []
    for (iou, f), gt in zip(mask_scores(gt_masks, pred_masks), gt_masks):
        area = float(gt.sum())
        grown = float(cv2.dilate(gt.astype(np.uint8), kernel).sum())
        shrunk = float(cv2.erode(gt.astype(np.uint8), kernel).sum())
        out.append(MaskScore(iou=iou, f=f, area=area, label_grown_iou=area / grown if grown else 0.0,
                             label_shrunk_iou=shrunk / area if area else 0.0))
    return out


def by_area(scores: list[MaskScore]) -> list[dict]:
    """Per ``AREA_BUCKETS`` bucket with instances: counts, mIoU and the one-pixel references."""
    out = []
    for low, high in AREA_BUCKETS:
        inside = [s for s in scores if s.area >= low and (high is None or s.area < high)]
        if inside:
            out.append({
                "min_px": low, "max_px": high, "instances": len(inside),
                "mIoU": float(np.mean([s.iou for s in inside])),
                "label_grown_1px_mIoU": float(np.mean([s.label_grown_iou for s in inside])),
                "label_shrunk_1px_mIoU": float(np.mean([s.label_shrunk_iou for s in inside])),
            })
    return out


class Predictor:
    """Runs the detector engine on HxWx3 uint8 RGB images of any size (letterboxed to the input).

    ``backend``/``precision`` as in ``engines.registry.load_model``: an export is scored through
    the same engine interface the pipeline uses."""

    def __init__(self, weights: Path, *, backend: str = "torch", precision: str = "fp32", threads: int = 1) -> None:
        loaded = load_model("detector", backend=backend, device="cpu", weights=weights, threads=threads,
                            precision=precision)
        self.engine, self.config = loaded.engine, loaded.config

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, *, letterboxed: bool = False) -> dict[str, np.ndarray]:
        """Detections in the coordinates of ``image``: boxes (N, 4) xyxy, labels (N,), scores (N,),
        masks (N, h, w) float32 probabilities at the image's resolution."""
        h, w = image.shape[:2]
        # An image that is already letterboxed has the input's size: the letterbox is then the identity.
        x, fit = detector_input(image, tuple(self.config.input_size))
        out = self.engine.run({"image": x})
        boxes, labels, scores, masks = (out[k].numpy() for k in ("boxes", "labels", "scores", "masks"))
        masks = masks[:, 0]
        if not letterboxed:
            masks = np.stack([fit.map_to_frame(m, (h, w)) for m in masks]) \
                if len(masks) else np.zeros((0, h, w), np.float32)
            boxes = fit.boxes_to_frame(boxes)
        return {"boxes": boxes, "labels": labels, "scores": scores, "masks": masks}


def _summarise(face_dets, face_gt, mask_pairs: list[MaskScore], n_images, n_found) -> dict:
    ious = [p.iou for p in mask_pairs]
    fs = [p.f for p in mask_pairs]
    large = [p.iou for p in mask_pairs if p.area >= LARGE_MASK_AREA]
    return {
        "images": n_images,
        "face_AP50": average_precision(face_dets, face_gt),
        "face_mask_instances": len(mask_pairs),
        "face_mask_mIoU": float(np.mean(ious)) if ious else float("nan"),
        "face_mask_F": float(np.mean(fs)) if fs else float("nan"),
        "face_mask_recall_iou50": float(np.mean([i >= 0.5 for i in ious])) if ious else float("nan"),
        "face_mask_large_instances": len(large),
        "face_mask_large_mIoU": float(np.mean(large)) if large else float("nan"),
        "face_mask_found_rate": n_found / max(n_images, 1),
        "face_mask_by_area": by_area(mask_pairs),
    }


def _score_image(pred, gt_face_boxes, gt_worn, img_id, score, face_dets, face_gt, mask_pairs) -> bool:
    for b, l, s in zip(pred["boxes"], pred["labels"], pred["scores"]):
        if l == FACE:
            face_dets.append((img_id, float(s), b))
    face_gt[img_id] = np.asarray(gt_face_boxes, np.float64).reshape(-1, 4)
    keep = (pred["labels"] == FACE_MASK) & (pred["scores"] >= score)
    pm = [m > 0.5 for m in pred["masks"][keep]]
    mask_pairs.extend(score_masks(gt_worn, pm))
    return bool(keep.any())


def evaluate_synthetic(predictor: Predictor, data: Path, landmarks: Path, n: int, score: float,
                       *, p_sheer: float = 0.0) -> dict:
    """The fixed validation scenes; with ``p_sheer=1`` a second fixed set of the same kind in which
    every mask is see-through."""
    ds = DetectorSceneDataset(
        data_root=data, landmarks=landmarks,
        config=DetectorDataConfig(input_size=predictor.config.input_size, p_sheer=p_sheer),
        split="val", seed=0,
    )
    face_dets, face_gt, pairs, found = [], {}, [], 0
    for i in tqdm(range(n), desc="sheer" if p_sheer else "synthetic", unit="img"):
        image, instances, _ = ds.scene(i)
        pred = predictor(image, letterboxed=True)
        gt_boxes = [inst.face_box for inst in instances]
        gt_worn = [inst.worn for inst in instances if inst.worn is not None and inst.worn.sum() >= 12]
        found += _score_image(pred, gt_boxes, gt_worn, i, score, face_dets, face_gt, pairs)
    return _summarise(face_dets, face_gt, pairs, n, found)


def evaluate_segmentation(predictor: Predictor, root: Path, score: float) -> dict:
    files = segmentation_files(root, "val")
    if not files:
        raise DataUnavailableError(f"no IWM/CWM images under {root}")
    face_dets, face_gt, pairs, found = [], {}, [], 0
    for i, (img_path, gt_path) in enumerate(tqdm(files, desc="segmentation", unit="img")):
        image = cv2.cvtColor(cv2.imread(str(img_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        inst = segmentation_instances(cv2.imread(str(gt_path), cv2.IMREAD_COLOR))
        pred = predictor(image)
        boxes = []
        for face, _ in inst:
            ys, xs = np.nonzero(face)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        worn = [w for _, w in inst if w.any()]
        found += _score_image(pred, boxes, worn, i, score, face_dets, face_gt, pairs)
    return _summarise(face_dets, face_gt, pairs, len(files), found)


def evaluate_photos(predictor: Predictor, folder: Path, score: float) -> dict:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataUnavailableError(f"no images in {folder}")
    found, n = 0, 0
    for p in tqdm(paths, desc="photos", unit="img"):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        pred = predictor(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        n += 1
        found += bool(((pred["labels"] == FACE_MASK) & (pred["scores"] >= score)).any())
    return {"images": n, "face_mask_found_rate": found / max(n, 1)}


def load_clip_annotations(path: Path = CLIP_ANNOTATIONS) -> dict[str, int]:
    """Clip stem -> first frame with a masked face visible."""
    return {k: int(v) for k, v in json.loads(path.read_text(encoding="utf-8"))["masked_from"].items()}


def load_clip_people(path: Path = CLIP_ANNOTATIONS) -> dict[str, int]:
    """Clip stem -> how many people the clip shows at most."""
    return {k: int(v) for k, v in json.loads(path.read_text(encoding="utf-8"))["people"].items()}


def evaluate_clips(predictor, folder: Path, score: float, masked_from: dict[str, int]) -> dict:
    """``predictor``: image -> dict with ``labels`` and ``scores`` arrays, like ``Predictor``."""
    paths = sorted(folder.glob("*.mp4"))
    if not paths:
        raise DataUnavailableError(f"no clips in {folder}")
    per_clip, found, n = {}, 0, 0
    for path in paths:
        if path.stem not in masked_from:
            logger.warning("%s: no annotation, every frame counted", path.name)
        first = masked_from.get(path.stem, 0)
        clip_found, clip_n = 0, 0
        with VideoFileSource(path) as source:
            for i, frame in enumerate(tqdm(source, desc=path.stem, unit="frame")):
                if i < first:
                    continue
                pred = predictor(frame.image)
                clip_n += 1
                clip_found += bool(((pred["labels"] == FACE_MASK) & (pred["scores"] >= score)).any())
        per_clip[path.stem] = {"frames": clip_n, "face_mask_found_rate": clip_found / max(clip_n, 1)}
        found, n = found + clip_found, n + clip_n
    return {"images": n, "face_mask_found_rate": found / max(n, 1), "clips": per_clip}


def format_table(results: dict) -> str:
    cols = ["images", "face_AP50", "face_mask_mIoU", "face_mask_F", "face_mask_large_mIoU",
            "face_mask_recall_iou50", "face_mask_found_rate"]
    lines = ["set".ljust(14) + "".join(c.removeprefix("face_mask_").rjust(16) for c in cols)]
    for name, r in results.items():
        if not isinstance(r, dict) or "images" not in r:
            continue
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)).rjust(16))
        lines.append(name.ljust(14) + "".join(cells))
        for clip, c in r.get("clips", {}).items():
            lines.append(f"  {clip}: {c['face_mask_found_rate']:.4f} of {c['frames']} frames")
        for b in r.get("face_mask_by_area", []):
            span = f"{b['min_px']}-{b['max_px']}" if b["max_px"] is not None else f">={b['min_px']}"
            lines.append(f"  masks {span} px: {b['instances']} instances, mIoU {b['mIoU']:.4f} "
                         f"(the label grown / shrunk by 1 px: {b['label_grown_1px_mIoU']:.4f} / "
                         f"{b['label_shrunk_1px_mIoU']:.4f})")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate the face / face-mask detector.")
    p.add_argument("--weights", type=Path, default=Path("engines/weights/detector_mobilenet_v3.pt"))
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--synthetic", type=int, default=200, help="number of synthetic validation scenes")
    p.add_argument("--score", type=float, default=0.5, help="score threshold for masks and detection rate")
    p.add_argument("--sets", nargs="+", default=["synthetic", "sheer", "segmentation", "photos", "clips"],
                   choices=["synthetic", "sheer", "segmentation", "photos", "clips"],
                   help="sheer: the synthetic scenes with every mask see-through (mesh, rhinestones)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--int8", action="store_true", help="the int8 ONNX Runtime variant (build_engines.py --int8)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr()
    use_cpu_threads(args.threads)
    if not args.weights.is_file():
        logger.error("no weights at %s", args.weights)
        return 2
    try:
        predictor = Predictor(args.weights, backend=args.backend, precision="int8" if args.int8 else "fp32",
                              threads=args.threads)
    except EngineError as exc:
        logger.error("%s", exc)
        return 2
    results: dict = {"weights": str(args.weights), "meta": load_detector_meta(args.weights), "score": args.score,
                     "backend": args.backend + ("-int8" if args.int8 else "")}
    t0 = time.time()
    try:
        if "synthetic" in args.sets:
            results["synthetic"] = evaluate_synthetic(predictor, args.data, args.landmarks, args.synthetic, args.score)
        if "sheer" in args.sets:
            results["sheer"] = evaluate_synthetic(predictor, args.data, args.landmarks, args.synthetic, args.score,
                                                  p_sheer=1.0)
        if "segmentation" in args.sets:
            results["segmentation"] = evaluate_segmentation(
                predictor, args.data / "segmentation" / "training", args.score
            )
        if "photos" in args.sets:
            results["photos"] = evaluate_photos(predictor, args.data / "photos" / "masked", args.score)
        if "clips" in args.sets:
            results["clips"] = evaluate_clips(predictor, args.data / "videos" / "masked", args.score,
                                              load_clip_annotations())
    except DataUnavailableError as exc:
        logger.error("%s", exc)
        return 2
    results["seconds"] = round(time.time() - t0, 1)
    print(format_table(results))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
