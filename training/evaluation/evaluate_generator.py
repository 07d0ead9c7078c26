"""Evaluate the face-completion generator against OpenCV's Telea inpainting on the held-out split.

    python -m training.evaluation.evaluate_generator --weights engines/weights/generator_128.pt \
        --data ../shared/data --out runs/generator_eval

Both methods get the same inputs (masked crop + dilated synthetic mask, fixed per image) and
are scored on the composited result (prediction inside the hole, original outside): PSNR, SSIM
and L1 over the whole crop and inside the hole. Writes OUT/metrics.json and OUT/grid.png
(columns: input with the hole greyed, ours, Telea, ground truth).

``--backend onnxruntime [--int8]`` scores the exported model (``build_engines.py [--int8]``)
through the same engine interface the pipeline uses, so an export's accuracy is measured,
not assumed.
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
from torch.utils.data import DataLoader

from engines.models.generator import GeneratorWeightsError
from engines.artifacts import ARTIFACTS_DIR
from engines.registry import load_model
from engines.runtime import EngineError
from training.cli import log_to_stderr, use_cpu_threads
from training.data.generator_data import FaceDataError, MaskedFaceDataset, build_synthesizer, load_face_records, split_records
from training.train.generator_losses import composite
from training.metrics.image_metrics import l1, psnr, ssim

logger = logging.getLogger(__name__)


def telea(image: torch.Tensor, mask: torch.Tensor, *, radius: int = 5) -> torch.Tensor:
    """cv2.inpaint (Telea) per image: image (N,3,H,W) [0,1] RGB, mask (N,1,H,W) -> (N,3,H,W)."""
    out = []
    for img, m in zip(image, mask):
        u8 = (img.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        filled = cv2.inpaint(u8, (m[0].numpy() > 0.5).astype(np.uint8), radius, cv2.INPAINT_TELEA)
        out.append(torch.from_numpy(filled).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out)


def scores(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image metrics (N,) for a composited prediction."""
    return {
        "psnr": psnr(pred, target), "ssim": ssim(pred, target), "l1": l1(pred, target),
        "psnr_hole": psnr(pred, target, mask), "ssim_hole": ssim(pred, target, mask), "l1_hole": l1(pred, target, mask),
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Held-out evaluation of the face-completion generator vs Telea.")
    p.add_argument("--weights", type=Path, default=Path("engines/weights/generator_128.pt"))
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--out", type=Path, default=Path("runs/generator_eval"))
    p.add_argument("--val-count", type=int, default=500, help="size of the held-out split (as in training)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N held-out images")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--int8", action="store_true", help="the int8 ONNX Runtime variant")
    p.add_argument("--artifacts", type=Path, default=ARTIFACTS_DIR, help="where build_engines.py wrote the exports")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr(timestamps=True)
    use_cpu_threads(args.threads)
    try:
        # Held-out faces have no reference: the form of the generator the pipeline runs for them.
        loaded = load_model("generator_noref", backend=args.backend, device="cpu", weights=args.weights,
                            threads=args.threads, precision="int8" if args.int8 else "fp32", artifacts=args.artifacts)
        config = loaded.config
        records = load_face_records(args.data / "faces" / "utkface", args.landmarks)
        _, val_recs = split_records(records, val_count=args.val_count)
    except (GeneratorWeightsError, FaceDataError, EngineError) as exc:
        logger.error("%s", exc)
        return 2
    if args.limit is not None:
        val_recs = val_recs[: args.limit]
    dataset = MaskedFaceDataset(val_recs, synthesizer=build_synthesizer(args.data / "mask_templates"),
                                config=config, train=False)
    results: dict[str, dict[str, list[torch.Tensor]]] = {"ours": {}, "telea": {}}
    hole_frac, grid_rows, model_s = [], [], 0.0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=args.batch_size):
            image, mask, target = batch["image"], batch["mask"], batch["target"]
            t0 = time.perf_counter()
            ours = composite(loaded.engine.run({"image": image, "mask": mask})["output"], target, mask)
            model_s += time.perf_counter() - t0
            theirs = composite(telea(image, mask), target, mask)
            for name, pred in (("ours", ours), ("telea", theirs)):
                for k, v in scores(pred, target, mask).items():
                    results[name].setdefault(k, []).append(v)
            hole_frac.append(mask.flatten(1).mean(1))
            if len(grid_rows) < 8:
                shown = image * (1 - mask) + 0.5 * mask
                for i in range(min(8 - len(grid_rows), len(image))):
                    cells = [t[i].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().numpy()
                             for t in (shown, ours, theirs, target)]
                    grid_rows.append(np.concatenate(cells, axis=1))
    summary = {name: {k: float(torch.cat(v).mean()) for k, v in res.items()} for name, res in results.items()}
    summary["ours_minus_telea_psnr_db"] = summary["ours"]["psnr"] - summary["telea"]["psnr"]
    summary["images"] = len(dataset)
    summary["mean_hole_fraction"] = float(torch.cat(hole_frac).mean())
    summary["weights"] = str(args.weights)
    summary["backend"] = args.backend + ("-int8" if args.int8 else "")
    summary["config"] = {"size": config.size, "width": config.width, "crop_scale": config.crop_scale,
                         "mask_dilation": config.mask_dilation}
    summary["model_ms_per_crop"] = 1000.0 * model_s / len(dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2))
    cv2.imwrite(str(args.out / "grid.png"), cv2.cvtColor(np.concatenate(grid_rows, axis=0), cv2.COLOR_RGB2BGR))
    logger.info("ours: %s", {k: round(v, 4) for k, v in summary["ours"].items()})
    logger.info("telea: %s", {k: round(v, 4) for k, v in summary["telea"].items()})
    logger.info("wrote %s", args.out / "metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
