"""Train the small face-parsing net on landmark-derived part labels (UTKFace).

    python -m training.train.train_parsing --data ../shared/data --landmarks cache/utkface_landmarks.npz \
        --out runs/parsing --steps 2500

Writes OUT/parsing.pt (fp16 weights), OUT/metrics.json (per-class F-score on the held-out split)
and OUT/log.jsonl. The held-out split is the generator's (training.data.generator_data.split_records).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from engines.models.generator import GeneratorConfig
from engines.models.parsing import PARSING_CLASSES, ParsingConfig, build_parsing_net, load_parsing_net, save_parsing_net
from training.cli import log_to_stderr, training_device
from training.data.generator_data import (
    FaceDataError,
    ParsingDataset,
    build_synthesizer,
    load_face_records,
    split_records,
)

logger = logging.getLogger(__name__)


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def class_weights(loader: DataLoader, num_classes: int, *, batches: int = 20) -> torch.Tensor:
    """Inverse square-root class frequencies (mean 1), so eyes and brows, a few percent of the
    pixels, are not drowned by background and skin."""
    counts = torch.zeros(num_classes)
    for _, labels in itertools.islice(loader, batches):
        counts += torch.bincount(labels.flatten(), minlength=num_classes).float()
    w = (counts / counts.sum()).clamp_min(1e-4).rsqrt()
    return w / w.mean()


@torch.no_grad()
def confusion(model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device) -> torch.Tensor:
    """(C, C) int64 confusion counts, rows = true class, cols = predicted."""
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for images, labels in loader:
        pred = model(images.to(device)).argmax(1).cpu()
        conf += torch.bincount(labels.flatten() * num_classes + pred.flatten(), minlength=num_classes**2).reshape(num_classes, num_classes)
    return conf


def f_scores(conf: torch.Tensor) -> dict[str, float]:
    """Per-class F1 plus ``mean_face`` (mean over classes except background, as in GFC)."""
    tp = conf.diag().double()
    precision = tp / conf.sum(0).double().clamp_min(1)
    recall = tp / conf.sum(1).double().clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    out = {name: float(f1[i]) for i, name in enumerate(PARSING_CLASSES)}
    out["mean_face"] = float(f1[1:].mean())
    out["pixel_accuracy"] = float(tp.sum() / conf.sum())
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the face-parsing net used by the generator's parsing loss.")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared data root (faces/utkface)")
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--out", type=Path, default=Path("runs/parsing"))
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--val-count", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-bf16", action="store_true", help="disable bf16 autocast on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None, help="start from these parsing weights (fine-tuning)")
    p.add_argument("--masked", type=float, default=0.0,
                   help="share of training faces that wear a drawn mask (templates under DATA/mask_templates)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr(timestamps=True)
    device = training_device(args.threads)
    torch.manual_seed(args.seed)
    try:
        records = load_face_records(args.data / "faces" / "utkface", args.landmarks)
        train_recs, val_recs = split_records(records, val_count=args.val_count)
    except FaceDataError as exc:
        logger.error("%s", exc)
        return 2
    gen_cfg = GeneratorConfig(size=args.size)
    synth = build_synthesizer(args.data / "mask_templates") if args.masked > 0 else None
    train_ds = ParsingDataset(train_recs, config=gen_cfg, train=True, seed=args.seed, synthesizer=synth,
                              masked=args.masked)
    val_ds = ParsingDataset(val_recs, config=gen_cfg, train=False)
    # Held out again with every face masked: where the eyes are above a worn mask.
    val_masked = ParsingDataset(val_recs, config=gen_cfg, train=False, synthesizer=synth, masked=1.0) if synth else None
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=32)

    if args.init is not None:
        model, config = load_parsing_net(args.init)
        model = model.to(device)
    else:
        config = ParsingConfig(width=args.width)
        model = build_parsing_net(config=config).to(device)
    weights = class_weights(train_loader, config.num_classes).to(device)
    logger.info("class weights %s", [round(float(w), 2) for w in weights])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=max(0.05, 3.0 / args.steps))
    use_bf16 = device.type == "cpu" and not args.no_bf16
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "log.jsonl").open("a")
    batches = itertools.chain.from_iterable(itertools.repeat(train_loader))
    model.train()
    t0 = time.time()
    for step in range(1, args.steps + 1):
        images, labels = next(batches)
        with autocast(device, use_bf16):
            logits = model(images.to(device))
        loss = F.cross_entropy(logits.float(), labels.to(device), weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps:
            rec = {"step": step, "loss": round(loss.item(), 4), "lr": sched.get_last_lr()[0], "elapsed_s": round(time.time() - t0, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            logger.info("%s", rec)
    scores = f_scores(confusion(model, val_loader, config.num_classes, device))
    logger.info("held-out F-scores: %s", {k: round(v, 3) for k, v in scores.items()})
    masked_scores = None
    if val_masked is not None:
        masked_scores = f_scores(confusion(model, DataLoader(val_masked, batch_size=32), config.num_classes, device))
        logger.info("held-out F-scores, masked: %s", {k: round(v, 3) for k, v in masked_scores.items()})
    meta = {"steps": args.steps, "init": None if args.init is None else str(args.init), "masked": args.masked, "val_images": len(val_ds), "train_images": len(train_ds), "f_scores": scores, "f_scores_masked": masked_scores,
            "classes": list(PARSING_CLASSES), "crop_scale": gen_cfg.crop_scale, "size": args.size}
    save_parsing_net(model, config, args.out / "parsing.pt", meta=meta)
    (args.out / "metrics.json").write_text(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
