"""Train the mask verifier (engines/models/verifier.py): masked or not, per face crop.

    python -m training.train.train_verifier --out runs/verifier --scenes 5000 --steps 3000

Faces come from the detector's training scenes (``training.data.detector_data``, train split only):
real masked photos (IWM/CWM training part), real unmasked photos (LFW and web photos' training
parts, ``training.data.negatives``) with hands, microphones, cups and scarves at the mouth, and
synthetic UTKFace scenes with masks worn, pulled down, held or lying about. A face is "masked"
when the scene labels a worn mask on it. With ``--detector-weights``, real photos are added as
the pipeline sees them: every face the detect stage finds in the training splits of the masked
web photos (masked) and of the unmasked web photos and LFW (unmasked), cut around the detector's
own box; half of each batch is drawn from them. Each face is cut with the generator's crop window
around its box, jittered as a detector's box would be. Every 10th scene is held out to choose
the threshold: the lowest probability that keeps the held-out false-positive rate at or under
``--max-fpr`` (refusing a mask costs little: the face is shown as it is; filling an unmasked
face is the harm). OUT/verifier.pt holds the weights with that threshold, OUT/log.json the
held-out numbers.
"""

from __future__ import annotations

import argparse
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
from stream.geometry import CropWindow
from training.cli import log_to_stderr, use_cpu_threads
from training.data.detector_data import DataUnavailableError, DetectorDataConfig, DetectorSceneDataset
from training.data.negatives import is_labelled_nonface, masked_photo_files, negative_files, nonfaces_by_photo

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the mask verifier (masked face or not).")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared data root")
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--negatives", type=Path, default=Path("cache/negative_faces.npz"),
                   help="face cache of the unmasked photos' training split (python -m training.data.negatives)")
    p.add_argument("--detector-weights", type=Path,
                   help="add the real photos' faces as this detector finds them (see above)")
    p.add_argument("--lfw-every", type=int, default=2, help="use every N-th LFW training photo")
    p.add_argument("--width", type=int, default=VerifierConfig.width, help="channels of the first layer")
    p.add_argument("--p-sheer", type=float, default=0.2,
                   help="share of synthetic masks drawn see-through (mesh, lace): the masks it misses most")
    p.add_argument("--out", type=Path, default=Path("runs/verifier"))
    p.add_argument("--scenes", type=int, default=5000)
    p.add_argument("--min-face", type=float, default=20.0, help="smallest face (box width, scene pixels) used")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-fpr", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p


def face_crops(data: DetectorSceneDataset, scenes: range, *, size: int, crop_scale: float, min_face: float,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(crops (N, size, size, 3) uint8 RGB, labels (N,) uint8 1 = masked) of every face in the scenes."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for index in scenes:
        image, instances, _ = data.scene(index)
        for inst in instances:
            box = np.asarray(inst.face_box, np.float64)
            w, h = box[2] - box[0], box[3] - box[1]
            if w < min_face or h < min_face:
                continue
            # A detector's face box wanders by a few percent in place and size.
            box = box + rng.normal(0, 0.04, 4) * np.array([w, h, w, h])
            if box[2] - box[0] < 4 or box[3] - box[1] < 4:
                continue
            face_area = max(float(inst.face.sum()), 1.0)
            masked = inst.worn is not None and inst.worn.sum() >= 0.05 * face_area
            crops.append(CropWindow.for_face(box.astype(np.float32), crop_scale).cut(image, size))
            labels.append(int(masked))
    return np.stack(crops), np.array(labels, np.uint8)


def photo_faces(detector_weights: Path, data_root: Path, *, size: int, crop_scale: float,
                lfw_every: int) -> tuple[np.ndarray, np.ndarray]:
    """(crops (N, size, size, 3) uint8 RGB, labels (N,) uint8 1 = masked) of every face the detect
    stage finds in the training splits of the real photos, but for those labelled by eye as no face
    (``negatives.load_nonfaces``: they measure harm, and were taught as masked faces until 2026-12-07)."""
    # Imported here: the scenes-only recipe needs no detector.
    from engines.registry import load_model
    from stream.detect import FaceDetector

    loaded = load_model("detector", backend="torch", device="cpu", weights=detector_weights, threads=1)
    detector = FaceDetector(loaded.engine, loaded.config)
    sets = [(masked_photo_files(data_root, "train"), 1), (negative_files(data_root, "photos", "train"), 0),
            (negative_files(data_root, "lfw", "train")[::lfw_every], 0)]
    not_faces = nonfaces_by_photo()
    crops, labels = [], []
    for paths, label in sets:
        for path in paths:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            # The labels name photos/masked's files; photos/unmasked has files of the same names.
            labelled = not_faces.get(path.name) if label else None
            for box in detector(image).boxes:
                if is_labelled_nonface(box, labelled):
                    continue
                crops.append(CropWindow.for_face(box, crop_scale).cut(image, size))
                labels.append(label)
    if not crops:
        raise DataUnavailableError(f"no faces found in the photos under {data_root}")
    return np.stack(crops), np.array(labels, np.uint8)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(batch.shape[0], generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    gain = 1.0 + 0.2 * (torch.rand(batch.shape[0], 3, 1, 1, generator=generator) - 0.5)
    return (batch * gain).clamp(0, 1)


def train_step(opt: torch.optim.Optimizer, sched, loss: torch.Tensor, step: int) -> None:
    """One optimiser and schedule step on ``loss``, logged every 250 steps."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    if step % 250 == 0:
        logger.info("step %d loss %.4f", step, loss.item())


def held_out_probs(model: torch.nn.Module, crops: np.ndarray) -> np.ndarray:
    """(N,) probabilities of ``model`` (put in eval mode) on (N, S, S, 3) uint8 RGB crops."""
    model.eval()
    with torch.no_grad():
        vx = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255.0)
        return torch.sigmoid(torch.cat([model(vx[i:i + 256]) for i in range(0, len(vx), 256)])).numpy()


def verdict_rates(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Recall on ``labels == 1``, false positives on ``labels == 0`` at ``threshold``, accuracy at 0.5."""
    said = probs >= threshold
    return {"threshold": threshold, "recall": float(said[labels == 1].mean()),
            "false_positive_rate": float(said[labels == 0].mean()),
            "accuracy_at_0.5": float(((probs >= 0.5) == labels).mean())}


def choose_threshold(probs: np.ndarray, labels: np.ndarray, *, max_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on ``labels == 0`` is at most ``max_fpr``."""
    negatives = np.sort(probs[labels == 0])
    if len(negatives) == 0:
        return 0.5
    k = int(np.floor(max_fpr * len(negatives)))
    cut = negatives[len(negatives) - 1 - k] if k < len(negatives) else 0.0
    return float(min(max(cut + 1e-4, 0.05), 0.95))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr(timestamps=True)
    use_cpu_threads(args.threads)
    torch.manual_seed(args.seed)
    config = VerifierConfig(width=args.width)
    scene_config = DetectorDataConfig(real_fraction=0.3, negative_fraction=0.35, p_unmasked=0.3, p_sheer=args.p_sheer,
                                      p_mouth_object=0.5, p_loose_mask=0.3, min_face=24.0)
    try:
        data = DetectorSceneDataset(data_root=args.data, landmarks=args.landmarks, config=scene_config,
                                    split="train", seed=args.seed, negatives=args.negatives)
    except DataUnavailableError as exc:
        logger.error("%s", exc)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_idx = [i for i in range(args.scenes) if i % 10]
    crops, labels = face_crops(data, train_idx, size=config.size, crop_scale=config.crop_scale,
                               min_face=args.min_face, seed=args.seed)
    val_crops, val_labels = face_crops(data, range(0, args.scenes, 10), size=config.size,
                                       crop_scale=config.crop_scale, min_face=args.min_face, seed=args.seed + 1)
    logger.info("%d training faces (%.0f %% masked), %d held out, in %.0f s", len(labels), 100 * labels.mean(),
                len(val_labels), time.time() - t0)
    photo_x = photo_y = None
    if args.detector_weights is not None:
        try:
            p_crops, p_labels = photo_faces(args.detector_weights, args.data, size=config.size,
                                            crop_scale=config.crop_scale, lfw_every=args.lfw_every)
        except DataUnavailableError as exc:
            logger.error("%s", exc)
            return 2
        # Every 10th photo face chooses the threshold with the held-out scenes; none is from the
        # measuring splits, which evaluate_precision keeps for itself.
        held = np.arange(len(p_labels)) % 10 == 0
        val_crops, val_labels = np.concatenate([val_crops, p_crops[held]]), np.concatenate([val_labels, p_labels[held]])
        photo_x = torch.from_numpy(p_crops[~held]).permute(0, 3, 1, 2).contiguous()
        photo_y = torch.from_numpy(p_labels[~held]).float()
        pos, neg = torch.nonzero(photo_y == 1)[:, 0], torch.nonzero(photo_y == 0)[:, 0]
        if len(pos) == 0 or len(neg) == 0:
            logger.error("the photos gave %d masked and %d unmasked faces: both are needed", len(pos), len(neg))
            return 2
        logger.info("%d photo faces (%d masked) from the detector, %d of them held out", len(p_labels),
                    int(p_labels.sum()), int(held.sum()))

    x = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).float()
    pos_weight = torch.tensor((1 - labels.mean()) / max(labels.mean(), 1e-3))
    model = build_verifier(config=config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(y), (args.batch_size,), generator=gen)
        images, targets = x[idx], y[idx]
        if photo_x is not None:
            # As many masked as unmasked photo faces per batch: the photos hold far more unmasked.
            quarter = args.batch_size // 4
            pidx = torch.cat([pos[torch.randint(len(pos), (quarter,), generator=gen)],
                              neg[torch.randint(len(neg), (quarter,), generator=gen)]])
            images = torch.cat([images[2 * quarter:], photo_x[pidx]])
            targets = torch.cat([targets[2 * quarter:], photo_y[pidx]])
        batch = augment(images.float().div(255.0), gen)
        train_step(opt, sched, F.binary_cross_entropy_with_logits(model(batch), targets, pos_weight=pos_weight), step)

    probs = held_out_probs(model, val_crops)
    threshold = choose_threshold(probs, val_labels, max_fpr=args.max_fpr)
    report = {
        "held_out_faces": int(len(val_labels)), "masked": int(val_labels.sum()),
        **verdict_rates(probs, val_labels, threshold),
        "train_faces": int(len(labels)) + (len(photo_y) if photo_y is not None else 0),
        "photo_faces": len(photo_y) if photo_y is not None else 0, "steps": args.steps,
        "seconds": round(time.time() - t0),
    }
    logger.info("held out: %s", report)
    final = VerifierConfig(size=config.size, width=config.width, crop_scale=config.crop_scale, threshold=threshold)
    save_verifier(model, final, args.out / "verifier.pt", meta=report)
    (args.out / "log.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
