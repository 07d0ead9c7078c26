"""Train the Mask R-CNN face / face-mask detector from scratch.

Example (CPU, one thread, resumable)::

    python -m training.train.train_detector --data ../shared/data --out runs/detector \
        --steps 4000 --threads 1 --export engines/weights/detector_mobilenet_v3.pt

The run directory holds ``latest.pt`` (model + optimiser + step, rewritten every
``--ckpt-every`` steps), ``step_XXXXXX.pt`` snapshots every ``--snapshot-every`` steps, and
``log.jsonl`` (mean loss per component, steps/s, learning rate). Starting again with the
same ``--out`` resumes from ``latest.pt``; the data stream resumes too, because scene
``i`` is a pure function of ``(seed, i)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from engines.models.detector import DetectorConfig, build_detector, load_detector, load_detector_meta, save_detector
from training.cli import log_to_stderr, use_cpu_threads
from training.data.detector_data import DetectorDataConfig, DetectorSceneDataset, DataUnavailableError, collate

logger = logging.getLogger(__name__)


class CountingSampler(Sampler[int]):
    """Yields start, start+1, ... forever: scene indices for a resumable stream."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def lr_factor(step: int, *, total: int, warmup: int, final: float) -> float:
    """Linear warmup then cosine decay from 1 to ``final``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the face / face-mask Mask R-CNN from scratch.")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared data root")
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--out", type=Path, default=Path("runs/detector"), help="run directory")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument(
        "--time-budget-min", type=float, default=None,
        help="wall-clock training budget: the lr schedule follows max(step/steps, time/budget) and "
        "training stops at whichever ends first (for a shared CPU whose speed is unknown)",
    )
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--final-lr", type=float, default=0.05, help="final lr as a fraction of --lr")
    p.add_argument("--clip", type=float, default=10.0, help="gradient norm clip")
    p.add_argument("--backbone", default="mobilenet_v3", choices=["mobilenet_v3", "resnet18", "resnet50"])
    p.add_argument("--norm", default="batchnorm", choices=["batchnorm", "groupnorm"])
    p.add_argument("--input-size", type=int, nargs=2, default=[320, 320], metavar=("H", "W"))
    p.add_argument("--real-fraction", type=float, default=0.35, help="share of scenes from the real segmentation set")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (0: build scenes in the training process)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--snapshot-every", type=int, default=1000)
    p.add_argument("--export", type=Path, default=None, help="also write fp16 weights here (save_detector)")
    p.add_argument("--export-every", type=int, default=500)
    p.add_argument("--p-sheer", type=float, default=0.2,
                   help="share of synthetic masks drawn see-through (mesh, rhinestones)")
    p.add_argument("--negatives", type=Path, default=Path("cache/negative_faces.npz"),
                   help="face cache of the unmasked photos' training split (python -m training.data.negatives)")
    p.add_argument("--negative-fraction", type=float, default=0.0,
                   help="share of scenes that are real photos of unmasked people (hard negatives)")
    p.add_argument("--p-mouth-object", type=float, default=0.0,
                   help="per unmasked face: a hand, fingers, microphone, phone, cup or scarf at the mouth")
    p.add_argument("--p-loose-mask", type=float, default=0.0,
                   help="per synthetic scene: a mask nobody wears (under a chin, in a hand, lying about)")
    p.add_argument("--p-hand", type=float, default=0.0,
                   help="per synthetic scene: a drawn fist or open hand away from the faces (unlabelled)")
    p.add_argument("--p-sheer-limb", type=float, default=0.0,
                   help="per synthetic scene: an arm or a torso in see-through mesh away from the faces (unlabelled)")
    p.add_argument("--pseudo", type=Path, default=Path("cache/masked_pseudo.npz"),
                   help="labels of the masked photos' training split (python -m training.data.pseudo_masks)")
    p.add_argument("--pseudo-fraction", type=float, default=0.0,
                   help="share of scenes that are real masked photos labelled by the shipped models")
    p.add_argument("--init", type=Path, default=None,
                   help="start a new run from these weights (save_detector file); ignored when resuming")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr(timestamps=True)
    use_cpu_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        # TF32 keeps fp32 weights and optimiser while using the tensor cores; the detector
        # is small enough that the GPU run is bound by data and launches, not precision.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    config = DetectorConfig(backbone=args.backbone, norm=args.norm, input_size=tuple(args.input_size))
    data_config = DetectorDataConfig(
        input_size=config.input_size, real_fraction=args.real_fraction, p_sheer=args.p_sheer,
        negative_fraction=args.negative_fraction, p_mouth_object=args.p_mouth_object, p_loose_mask=args.p_loose_mask,
        pseudo_fraction=args.pseudo_fraction, p_hand=args.p_hand, p_sheer_limb=args.p_sheer_limb,
    )
    try:
        dataset = DetectorSceneDataset(
            data_root=args.data, landmarks=args.landmarks, config=data_config, split="train", seed=args.seed,
            negatives=args.negatives, pseudo=args.pseudo,
        )
    except DataUnavailableError as exc:
        logger.error("%s", exc)
        return 2

    model = build_detector(config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )

    args.out.mkdir(parents=True, exist_ok=True)
    latest = args.out / "latest.pt"
    step = 0
    elapsed_before = 0.0
    if latest.is_file():
        ckpt = torch.load(latest, map_location=device, weights_only=False)
        if DetectorConfig.from_dict(ckpt["config"]) != config:
            logger.error("config of %s differs from the requested one; use another --out", latest)
            return 2
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        logger.info("resumed from %s at step %d", latest, step)
    elif args.init is not None:
        initial, initial_config = load_detector(args.init)
        if initial_config != config:
            logger.error("config of %s differs from the requested one", args.init)
            return 2
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in initial.state_dict().items()})
        logger.info("initialised from %s (%s)", args.init, load_detector_meta(args.init))
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))

    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=CountingSampler(step * args.batch_size),
        num_workers=args.workers,
        collate_fn=collate,
        worker_init_fn=_worker_init,
        persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers > 0 else None,
        pin_memory=device.type == "cuda",
    )

    def checkpoint() -> None:
        _atomic_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "config": config.to_dict(), "args": vars(args), "elapsed_s": elapsed()},
            latest,
        )

    def export(path: Path) -> None:
        meta = {
            "steps": step,
            "train_hours": round(elapsed() / 3600.0, 3),
            "batch_size": args.batch_size,
            "data": f"synthetic scenes (UTKFace + MaskTheFace, {data_config.p_sheer:.2f} see-through) + real {data_config.real_fraction:.2f} IWM/CWM train split",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "lr": args.lr,
            "seed": args.seed,
            "init": None if args.init is None else str(args.init),
        }
        was_training = model.training
        save_detector(model, config, path, meta=meta)
        model.train(was_training)

    model.train()
    sums: dict[str, float] = defaultdict(float)
    n_logged, t_last = 0, time.time()
    log_file = (args.out / "log.jsonl").open("a")
    use_bf16 = args.bf16 and device.type == "cpu"
    t_start = time.time()

    def elapsed() -> float:
        return elapsed_before + time.time() - t_start

    def progress_step() -> int:
        """Step count on the schedule: real steps, or further along when time runs out first."""
        if args.time_budget_min is None:
            return step
        frac = elapsed() / (60.0 * args.time_budget_min)
        return max(step, int(frac * args.steps))

    for images, targets in loader:
        if progress_step() >= args.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(progress_step(), total=args.steps, warmup=args.warmup, final=args.final_lr)
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            logger.warning("non-finite loss at step %d, skipping batch: %s", step, {k: float(v) for k, v in losses.items()})
            optimizer.zero_grad(set_to_none=True)
            step += 1
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        optimizer.step()
        step += 1
        for k, v in losses.items():
            sums[k] += v.item()
        sums["loss"] += loss.item()
        n_logged += 1
        if step % args.log_every == 0:
            now = time.time()
            rec = {k: round(v / n_logged, 4) for k, v in sums.items()}
            rec.update(step=step, steps_per_s=round(n_logged / (now - t_last), 3), lr=optimizer.param_groups[0]["lr"])
            logger.info("step %d %s", step, json.dumps(rec))
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
            sums.clear()
            n_logged, t_last = 0, now
        if step % args.ckpt_every == 0:
            checkpoint()
        if step % args.snapshot_every == 0:
            _atomic_save({"model": model.state_dict(), "step": step, "config": config.to_dict()},
                         args.out / f"step_{step:06d}.pt")
        if args.export is not None and step % args.export_every == 0:
            export(args.export)
    checkpoint()
    if args.export is not None:
        export(args.export)
    export(args.out / "final_fp16.pt")
    log_file.close()
    logger.info("done at step %d", step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
