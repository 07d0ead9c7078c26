"""Train the face verifier: is there a face in this crop window at all? (engines/models/verifier.py,
the mask verifier's architecture asked another question.)

    python -m training.train.train_face_verifier --out runs/face_verifier

The detector also finds "masked faces" on hands, arms and clothes with shiny or patterned fabric
(2026-12-07, the real mesh-mask clip: a fist with rings, her briefs, an arm, at scores up to 0.99),
and the fill then paints a face there. The verifier sees the detected face's crop window, as the
generator frames it, and says whether a face is in it.

Faces (label 1): every face of the detector's training scenes (``training.data.detector_data``,
train split: synthetic UTKFace scenes with masks worn, see-through or held, hands and objects at the
mouth, real masked and unmasked photos), and every face the shipped detector finds in the training
splits of the real photos (masked web photos, unmasked web photos, LFW), with box jitter larger than
a tracker's so a box set a little high or low still counts; what the detector finds there that was
labelled by eye as no face (``--not-faces``: cars, signs, a fire in ``photos/masked``) is left out,
neither face nor window, so those labels stay a measure of what the net has never seen.
Not faces (label 0): windows of face size in the same real photos and scenes that hold no face
box (a little of a face may show at their edge): most below and beside the faces, where shoulders,
arms, hands and clothes are, the rest anywhere; the detector's own boxes in the training scenes that
match no face there (its false faces); and drawn hands (``detector_data.draw_hand``: fists and open hands in
skin tones, with rings and sleeves, blurred as in a moving video) on windows of the same photos. No
real photo of a hand alone is in the shared data, and a blurred fist is what the detector took for
a masked face most often.
Every 10th photo and scene is held out; the threshold is chosen on them as the highest probability
that still keeps ``--min-recall`` of the held-out faces (a face refused is only shown as it is,
with its mask; a hand filled is the harm, but a real face refused on a hard frame flickers).
OUT/face_verifier.pt holds the weights with that threshold, OUT/log.json the held-out numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engines.models.verifier import VerifierConfig, build_verifier, save_verifier
from stream.geometry import CropWindow, box_iou, box_overlap
from training.cli import log_to_stderr, use_cpu_threads
from training.data.detector_data import DataUnavailableError, DetectorDataConfig, DetectorSceneDataset, draw_hand
from training.data.negatives import (
    NONFACE_ANNOTATIONS, is_labelled_nonface, masked_photo_files, negative_files, nonfaces_by_photo,
)
from training.train.train_verifier import augment, held_out_probs, train_step, verdict_rates

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the face verifier (a face in this window or not).")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared data root")
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--negatives", type=Path, default=Path("cache/negative_faces.npz"),
                   help="face cache of the unmasked photos' training split (python -m training.data.negatives)")
    p.add_argument("--detector-weights", type=Path, default=Path("engines/weights/detector_mobilenet_v3.pt"))
    p.add_argument("--not-faces", type=Path, default=NONFACE_ANNOTATIONS,
                   help="boxes in photos/masked labelled as no face: never taken as faces")
    p.add_argument("--lfw-every", type=int, default=4, help="use every N-th LFW training photo")
    p.add_argument("--width", type=int, default=16, help="channels of the first layer")
    p.add_argument("--out", type=Path, default=Path("runs/face_verifier"))
    p.add_argument("--scenes", type=int, default=3000)
    p.add_argument("--windows", type=int, default=6, help="face-free windows per photo")
    p.add_argument("--hands", type=int, default=3, help="drawn hands per photo")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-recall", type=float, default=0.99)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p


def _jitter(box: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return (box + rng.normal(0, spread, 4) * np.array([w, h, w, h])).astype(np.float32)


def free_windows(shape: tuple[int, int], faces: np.ndarray, rng: np.random.Generator, count: int,
                 crop_scale: float, *, max_face_share: float = 0.15) -> list[np.ndarray]:
    """Up to ``count`` face-sized boxes (xyxy) whose crop windows hold at most ``max_face_share``
    of any of ``faces``: three in four below or beside a face (the body, arms, hands, clothes), the
    rest anywhere."""
    h, w = shape
    sides = (faces[:, 2] - faces[:, 0]) if len(faces) else np.array([0.25 * min(h, w)])
    found: list[np.ndarray] = []
    for _ in range(20 * count):
        if len(found) >= count:
            break
        side = float(rng.choice(sides)) * float(np.exp(rng.normal(0, 0.3)))
        side = max(side, 16.0)
        bw, bh = side, side * rng.uniform(1.0, 1.35)
        if len(faces) and rng.random() < 0.75:
            f = faces[rng.integers(len(faces))]
            fw, fh = f[2] - f[0], f[3] - f[1]
            cx = (f[0] + f[2]) / 2 + rng.normal(0, 1.2) * fw
            cy = (f[1] + f[3]) / 2 + rng.uniform(0.3, 4.0) * fh
        else:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], np.float32)
        if box[0] < -0.2 * bw or box[1] < -0.2 * bh or box[2] > w + 0.2 * bw or box[3] > h + 0.2 * bh:
            continue
        window = CropWindow.for_face(box, crop_scale)
        outer = np.array([[window.x1, window.y1, window.x1 + window.side, window.y1 + window.side]], np.float32)
        if len(faces) and (box_overlap(faces, outer)[:, 0] > max_face_share).any():
            continue
        found.append(box)
    return found


class Collector:
    """Crops (size px, uint8 RGB) and labels, kept apart for training and held out."""

    def __init__(self, size: int, crop_scale: float) -> None:
        self.size, self.crop_scale = size, crop_scale
        self.crops: dict[bool, list[np.ndarray]] = {False: [], True: []}
        self.labels: dict[bool, list[int]] = {False: [], True: []}

    def add(self, image: np.ndarray, box: np.ndarray, label: int, held: bool) -> None:
        self.crops[held].append(CropWindow.for_face(box, self.crop_scale).cut(image, self.size))
        self.labels[held].append(label)

    def arrays(self, held: bool) -> tuple[np.ndarray, np.ndarray]:
        return np.stack(self.crops[held]), np.array(self.labels[held], np.uint8)


def collect_photos(out: Collector, detector, every_face, paths: list[Path], rng: np.random.Generator,
                   windows: int, hands: int, *, not_faces: dict[Path, np.ndarray] | None = None) -> int:
    """Faces ``detector`` finds in the photos (jittered twice) unless ``not_faces`` (photo path: (K, 4) xyxy)
    covers them at IoU >= 0.5, and windows clear of every face box ``every_face`` (the same detector
    with no score floor of its own) reports, confident or not. Returns how many found faces were
    left out as labelled non-faces."""
    not_faces = not_faces or {}
    skipped = 0
    for k, path in enumerate(paths):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        held = k % 10 == 0
        found = detector(image).boxes
        labelled = not_faces.get(path)
        for box in found:
            if is_labelled_nonface(box, labelled):
                skipped += 1
                continue
            out.add(image, _jitter(box, rng, 0.03), 1, held)
            out.add(image, _jitter(box, rng, 0.08), 1, held)
        avoid = every_face(image).boxes
        avoid = np.concatenate([avoid, found]) if len(found) else avoid
        for box in free_windows(image.shape[:2], avoid, rng, windows, out.crop_scale):
            out.add(image, box, 0, held)
        for box in free_windows(image.shape[:2], avoid, rng, hands, out.crop_scale, max_face_share=0.0):
            side = int(max(box[2] - box[0], box[3] - box[1]) * 1.6)
            window = CropWindow.for_face(box, 1.6).cut(image, max(side, 32))
            drawn, _, hand_box = draw_hand(window, rng)
            out.add(drawn, _jitter(hand_box, rng, 0.08), 0, held)
    return skipped


def collect_scenes(out: Collector, detector, data: DetectorSceneDataset, count: int,
                   rng: np.random.Generator) -> int:
    """Every face of the scenes, a face-free window per scene, and the detector's false faces there.
    Returns how many false faces were found."""
    false_faces = 0
    for index in range(count):
        image, instances, (h, w) = data.scene(index)
        image = image[:h, :w]
        held = index % 10 == 0
        faces = np.array([inst.face_box for inst in instances], np.float32).reshape(-1, 4)
        for box in faces:
            if min(box[2] - box[0], box[3] - box[1]) >= 16:
                out.add(image, _jitter(box, rng, 0.06), 1, held)
        for box in free_windows((h, w), faces, rng, 1, out.crop_scale):
            out.add(image, box, 0, held)
        for box in detector(image).boxes:
            if not len(faces) or box_iou(box[None], faces).max() < 0.1:
                out.add(image, box, 0, held)
                false_faces += 1
    return false_faces


def _blur(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half the batch blurred (video frames: motion, focus, compression), by one random sigma."""
    sigma = float(torch.empty(1).uniform_(0.5, 1.8, generator=generator))
    r = 3
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = batch.shape[1]
    blurred = F.conv2d(F.pad(batch, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    blurred = F.conv2d(F.pad(blurred, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    pick = torch.rand(batch.shape[0], generator=generator) < 0.5
    return torch.where(pick[:, None, None, None], blurred, batch)


def choose_threshold(probs: np.ndarray, labels: np.ndarray, *, min_recall: float) -> float:
    """The highest threshold that keeps at least ``min_recall`` of ``labels == 1`` (capped at 0.5)."""
    faces = np.sort(probs[labels == 1])
    if len(faces) == 0:
        return 0.5
    k = int(np.floor((1.0 - min_recall) * len(faces)))
    return float(min(max(faces[k] - 1e-4, 1e-3), 0.5))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr(timestamps=True)
    use_cpu_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    config = VerifierConfig(width=args.width)
    scene_config = DetectorDataConfig(real_fraction=0.3, negative_fraction=0.35, p_unmasked=0.3, p_sheer=0.5,
                                      p_mouth_object=0.5, p_loose_mask=0.3, min_face=24.0)
    # Imported here: loading the detector is slow, and --help should not wait for it.
    from engines.registry import load_model
    from stream.detect import DetectorSettings, FaceDetector

    try:
        data = DetectorSceneDataset(data_root=args.data, landmarks=args.landmarks, config=scene_config,
                                    split="train", seed=args.seed, negatives=args.negatives)
        loaded = load_model("detector", backend="torch", device="cpu", weights=args.detector_weights, threads=1)
    except DataUnavailableError as exc:
        logger.error("%s", exc)
        return 2
    detector = FaceDetector(loaded.engine, loaded.config)
    floor = loaded.config.box_score_thresh
    every_face = FaceDetector(loaded.engine, loaded.config,
                              settings=dataclasses.replace(DetectorSettings(), face_score=floor, masked_face_score=floor,
                                                           keep_score=floor, mask_score=floor))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    out = Collector(config.size, config.crop_scale)
    photos = (masked_photo_files(args.data, "train") + negative_files(args.data, "photos", "train")
              + negative_files(args.data, "lfw", "train")[::args.lfw_every])
    if not photos:
        logger.error("no training photos under %s", args.data)
        return 2
    skipped = collect_photos(out, detector, every_face, photos, rng, args.windows, args.hands,
                             not_faces={args.data / "photos" / "masked" / name: boxes
                                        for name, boxes in nonfaces_by_photo(args.not_faces).items()})
    logger.info("%d photos: %d crops in %.0f s; %d found faces left out as labelled non-faces", len(photos),
                len(out.labels[False]) + len(out.labels[True]), time.time() - t0, skipped)
    false_faces = collect_scenes(out, detector, data, args.scenes, rng)
    crops, labels = out.arrays(False)
    val_crops, val_labels = out.arrays(True)
    logger.info("%d training crops (%.0f %% faces; %d of the detector's false faces in the scenes), %d held out, "
                "in %.0f s", len(labels), 100 * labels.mean(), false_faces, len(val_labels), time.time() - t0)

    x = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).float()
    pos, neg = torch.nonzero(y == 1)[:, 0], torch.nonzero(y == 0)[:, 0]
    model = build_verifier(config=config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    half = args.batch_size // 2
    for step in range(1, args.steps + 1):
        # As many faces as windows without one per batch.
        idx = torch.cat([pos[torch.randint(len(pos), (half,), generator=gen)],
                         neg[torch.randint(len(neg), (args.batch_size - half,), generator=gen)]])
        batch = _blur(augment(x[idx].float().div(255.0), gen), gen)
        train_step(opt, sched, F.binary_cross_entropy_with_logits(model(batch), y[idx]), step)

    probs = held_out_probs(model, val_crops)
    threshold = choose_threshold(probs, val_labels, min_recall=args.min_recall)
    report = {
        "held_out": int(len(val_labels)), "faces": int(val_labels.sum()), **verdict_rates(probs, val_labels, threshold),
        "train_crops": int(len(labels)), "detector_false_faces": false_faces,
        "labelled_non_faces_left_out": skipped, "steps": args.steps,
        "seconds": round(time.time() - t0),
    }
    logger.info("held out: %s", report)
    save_verifier(model, dataclasses.replace(config, threshold=threshold), args.out / "face_verifier.pt", meta=report)
    (args.out / "log.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
