"""Train the face-completion generator (DeepFill v1 style, with GFC's parsing loss) from scratch.

    python -m training.train.train_generator --data ../shared/data --out runs/generator \
        --parsing runs/parsing/parsing.pt --steps 8000 --adv-start 4000

Phase 1 (steps < --adv-start): reconstruction only (hole-weighted L1 on the coarse and refined
outputs + parsing loss). Phase 2: adds the SN-PatchGAN hinge loss. The run is resumable
(OUT/last.pt is picked up automatically); OUT/generator_<size>.pt holds the EMA weights in the
shipped format, OUT/samples/step_XXXXXX.png grids (input / coarse / completed / ground truth),
OUT/log.jsonl losses and quick held-out PSNR.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from engines.models.discriminators import DiscriminatorConfig, build_discriminator
from engines.models.checkpoint import load_checkpoint
from engines.models.generator import GeneratorConfig, build_generator, save_generator, widen_inputs
from engines.models.parsing import ParsingWeightsError, load_parsing_net
from engines.runtime import WeightsError
from training.cli import log_to_stderr, training_device
from training.data.generator_data import (
    FaceDataError,
    MaskedFaceDataset,
    ReferenceSampling,
    build_synthesizer,
    load_face_records,
    load_pair_records,
    split_records,
)
from training.train.generator_losses import (
    ParsingLoss,
    composite,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    masked_l1,
)
from training.metrics.image_metrics import psnr

logger = logging.getLogger(__name__)


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def lr_factor(step: int, total: int, *, decay_frac: float = 0.25, floor: float = 0.1) -> float:
    """1 until the last ``decay_frac`` of training, then linear down to ``floor``."""
    start = int(total * (1.0 - decay_frac))
    if step < start:
        return 1.0
    return 1.0 - (1.0 - floor) * min(1.0, (step - start) / max(total - start, 1))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    # Short-memory EMA early on, so the first exports are not dominated by the random init.
    d = min(decay, (1.0 + step) / (10.0 + step))
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1.0 - d)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def to_uint8_rows(*batches: torch.Tensor) -> np.ndarray:
    """Grid (rows = samples, columns = the given batches) as HxWx3 uint8 RGB."""
    cols = [b.detach().float().clamp(0, 1).permute(0, 2, 3, 1).mul(255).round().byte().numpy() for b in batches]
    return np.concatenate([np.concatenate([c[i] for c in cols], axis=1) for i in range(cols[0].shape[0])], axis=0)


def save_grid(path: Path, grid_rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid_rgb, cv2.COLOR_RGB2BGR))


def reseed_worker(worker_id: int) -> None:
    """Each loader process draws its own masks: a forked copy of one generator would repeat them."""
    info = torch.utils.data.get_worker_info()
    info.dataset._rng = np.random.default_rng((info.seed % 2**32, worker_id))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the face-completion generator.")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared data root")
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--out", type=Path, default=Path("runs/generator"))
    p.add_argument("--reference", action="store_true",
                   help="train the reference-conditioned generator (v2): each sample gets its own face "
                        "re-cut and re-coloured, another face, or none (--p-own, --p-other)")
    p.add_argument("--p-own", type=float, default=ReferenceSampling.own)
    p.add_argument("--p-other", type=float, default=ReferenceSampling.other)
    p.add_argument("--p-pair", type=float, default=ReferenceSampling.pair,
                   help="share of samples that are an LFW training person masked, with another photo of "
                        "them as the reference (needs --pairs)")
    p.add_argument("--pairs", type=Path, default=Path("cache/negative_faces.npz"),
                   help="face cache of the LFW training split (python -m training.data.negatives)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these shipped generator weights (a generator without a reference "
                        "is widened: the reference's input weights start at zero)")
    p.add_argument("--parsing", type=Path, default=Path("runs/parsing/parsing.pt"),
                   help="frozen face-parsing net for the parsing loss")
    p.add_argument("--no-parsing-loss", action="store_true")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--minutes", type=float, default=None,
                   help="stop (with a checkpoint and the weights) after this many minutes of training, "
                        "so a short loan of a GPU goes wholly into training")
    p.add_argument("--adv-start", type=int, default=4000, help="step at which the adversarial loss starts")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr-g", type=float, default=5e-4)
    p.add_argument("--lr-d", type=float, default=2e-4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--d-width", type=int, default=24)
    p.add_argument("--crop-scale", type=float, default=GeneratorConfig.crop_scale)
    p.add_argument("--mask-dilation", type=int, default=GeneratorConfig.mask_dilation)
    p.add_argument("--hole-weight", type=float, default=5.0)
    p.add_argument("--coarse-weight", type=float, default=0.5)
    p.add_argument("--adv-weight", type=float, default=0.01)
    p.add_argument("--fm-weight", type=float, default=0.0,
                   help="discriminator feature matching (real vs completed face), from --adv-start on")
    p.add_argument("--parsing-weight", type=float, default=0.05)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--val-count", type=int, default=500)
    p.add_argument("--quick-val", type=int, default=48, help="held-out images for the periodic PSNR check")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="data loader processes (a GPU outruns one)")
    p.add_argument("--no-bf16", action="store_true", help="disable bf16 autocast on CPU")
    p.add_argument("--seed", type=int, default=0)
    return p


class Trainer:
    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        init_config, init_state = {}, None
        if args.init is not None:
            init_config, init_state, _ = load_checkpoint(args.init)
            for key in ("size", "width"):
                if init_config.get(key) != getattr(args, key):
                    raise ValueError(f"--init {args.init} has {key} {init_config.get(key)}, training {getattr(args, key)}")
        # The inference-time output blur belongs to the architecture the init weights were tuned with.
        self.config = GeneratorConfig(size=args.size, width=args.width, crop_scale=args.crop_scale,
                                      mask_dilation=args.mask_dilation, reference=args.reference,
                                      output_blur=init_config.get("output_blur", 0.0))
        self.gen = build_generator(config=self.config).to(device)
        if init_state is not None:
            widen_inputs(self.gen, init_state)
        self.ema = copy.deepcopy(self.gen).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.disc = build_discriminator(config=DiscriminatorConfig(width=args.d_width)).to(device)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=args.lr_g, betas=(0.5, 0.9))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=args.lr_d, betas=(0.5, 0.9))
        self.parsing: ParsingLoss | None = None
        if not args.no_parsing_loss:
            net, _ = load_parsing_net(args.parsing, device=device)
            self.parsing = ParsingLoss(net)
        self.use_bf16 = device.type == "cpu" and not args.no_bf16
        self.step = 0

    def state(self) -> dict:
        return {
            "step": self.step,
            "gen": self.gen.state_dict(),
            "ema": self.ema.state_dict(),
            "disc": self.disc.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "config": dataclasses.asdict(self.config),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state(self, state: dict) -> None:
        if GeneratorConfig(**state["config"]) != self.config:
            raise ValueError(f"checkpoint config {state['config']} differs from {self.config}")
        self.gen.load_state_dict(state["gen"])
        self.ema.load_state_dict(state["ema"])
        self.disc.load_state_dict(state["disc"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        a = self.args
        image, mask, target = (batch[k].to(self.device) for k in ("image", "mask", "target"))
        reference = self._reference(batch)
        adversarial = self.step >= a.adv_start
        factor = lr_factor(self.step, a.steps)
        for group in self.opt_g.param_groups:
            group["lr"] = a.lr_g * factor
        for group in self.opt_d.param_groups:
            group["lr"] = a.lr_d * factor
        logs: dict[str, float] = {}

        with autocast(self.device, self.use_bf16):
            coarse, refined = self.gen.forward_stages(image, mask, *reference)
        completed = composite(refined, target, mask)

        if adversarial:
            with autocast(self.device, self.use_bf16):
                d_real = self.disc(target, mask)
                d_fake = self.disc(completed.detach(), mask)
            d_loss = hinge_d_loss(d_real, d_fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            logs["d"] = d_loss.item()

        loss = masked_l1(refined, target, mask, hole_weight=a.hole_weight)
        logs["l1"] = loss.item()
        coarse_l1 = masked_l1(coarse, target, mask, hole_weight=a.hole_weight)
        logs["l1_coarse"] = coarse_l1.item()
        loss = loss + a.coarse_weight * coarse_l1
        if self.parsing is not None and a.parsing_weight > 0:
            with autocast(self.device, self.use_bf16):
                p_loss = self.parsing(completed, target)
            logs["parsing"] = p_loss.item()
            loss = loss + a.parsing_weight * p_loss
        if adversarial:
            for p in self.disc.parameters():
                p.requires_grad_(False)
            with autocast(self.device, self.use_bf16):
                scores, fake_acts = self.disc.features(completed, mask)
                g_adv = hinge_g_loss(scores)
                if a.fm_weight > 0:
                    with torch.no_grad():
                        real_acts = self.disc.features(target, mask)[1]
            for p in self.disc.parameters():
                p.requires_grad_(True)
            logs["g_adv"] = g_adv.item()
            loss = loss + a.adv_weight * g_adv
            if a.fm_weight > 0:
                fm = feature_matching_loss(fake_acts, real_acts)
                logs["fm"] = fm.item()
                loss = loss + a.fm_weight * fm
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        update_ema(self.ema, self.gen, self.step, a.ema)
        self.step += 1
        logs["loss"] = loss.item()
        return logs

    def _reference(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if not self.config.reference:
            return ()
        return batch["reference"].to(self.device), batch["reference_mask"].to(self.device)

    @torch.no_grad()
    def preview(self, val: dict[str, torch.Tensor]) -> tuple[float, float, np.ndarray]:
        """Quick held-out check with the EMA weights: whole-crop and hole PSNR of the
        composited output, and a sample grid."""
        image, mask, target = (val[k].to(self.device) for k in ("image", "mask", "target"))
        reference = self._reference(val)
        coarse, refined = self.ema.forward_stages(image, mask, *reference)
        completed = composite(refined, target, mask)
        shown = image * (1 - mask) + 0.5 * mask
        columns = [shown[:8], composite(coarse, target, mask)[:8], completed[:8], target[:8]]
        if reference:
            columns.append(reference[0][:8])
        grid = to_uint8_rows(*columns)
        return float(psnr(completed, target).mean()), float(psnr(completed, target, mask).mean()), grid


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr(timestamps=True)
    device = training_device(args.threads)
    torch.manual_seed(args.seed)
    try:
        records = load_face_records(args.data / "faces" / "utkface", args.landmarks)
        train_recs, val_recs = split_records(records, val_count=args.val_count)
        synth = build_synthesizer(args.data / "mask_templates")
        pairs = load_pair_records(args.data, args.pairs) if args.reference and args.p_pair > 0 else []
        trainer = Trainer(args, device)
    except (FaceDataError, ParsingWeightsError, WeightsError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "last.pt"
    if ckpt_path.is_file():
        trainer.load_state(torch.load(ckpt_path, map_location=device, weights_only=False))
        logger.info("resumed from %s at step %d", ckpt_path, trainer.step)
    n_params = sum(p.numel() for p in trainer.gen.parameters())
    logger.info("generator %s: %d parameters; %d train / %d held-out faces; %d same-person groups", trainer.config,
                n_params, len(train_recs), len(val_recs), len(pairs))

    sampling = ReferenceSampling(own=args.p_own, other=args.p_other, pair=args.p_pair) if args.reference else None
    train_ds = MaskedFaceDataset(train_recs, synthesizer=synth, config=trainer.config, train=True,
                                 seed=args.seed + trainer.step, references=sampling, pairs=pairs)
    val_ds = MaskedFaceDataset(val_recs[: args.quick_val], synthesizer=synth, config=trainer.config, train=False,
                               references=sampling)
    val_batch = next(iter(DataLoader(val_ds, batch_size=len(val_ds))))
    loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0,
                        worker_init_fn=reseed_worker)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    log = (args.out / "log.jsonl").open("a")
    weights_path = args.out / f"generator_{args.size}.pt"

    def checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(trainer.state(), tmp)
        tmp.replace(ckpt_path)
        save_generator(trainer.ema, trainer.config, weights_path, meta={
            "steps": trainer.step, "batch_size": args.batch_size, "train_images": len(train_recs),
            "adv_start": args.adv_start, "parsing_loss": not args.no_parsing_loss,
            "adv_weight": args.adv_weight, "fm_weight": args.fm_weight, "pair_people": len(pairs),
        })

    t_last, window = time.time(), []
    deadline = None if args.minutes is None else time.time() + 60.0 * args.minutes
    while trainer.step < args.steps:
        if deadline is not None and time.time() > deadline:
            logger.info("--minutes %.1f reached at step %d", args.minutes, trainer.step)
            checkpoint()
            break
        logs = trainer.train_step(next(batches))
        window.append(logs)
        step = trainer.step
        if step % 50 == 0:
            now = time.time()
            rec = {"step": step, "s_per_step": round((now - t_last) / len(window), 3)}
            rec.update({k: round(float(np.mean([w[k] for w in window if k in w])), 4) for k in window[-1]})
            log.write(json.dumps(rec) + "\n")
            log.flush()
            logger.info("%s", rec)
            t_last, window = now, []
        if step % args.sample_every == 0 or step == args.steps:
            whole, hole, grid = trainer.preview(val_batch)
            save_grid(args.out / "samples" / f"step_{step:06d}.png", grid)
            log.write(json.dumps({"step": step, "val_psnr": round(whole, 3), "val_psnr_hole": round(hole, 3)}) + "\n")
            log.flush()
            logger.info("step %d held-out PSNR %.2f dB (hole %.2f dB)", step, whole, hole)
        if step % args.ckpt_every == 0 or step == args.steps:
            checkpoint()
    return 0


if __name__ == "__main__":
    sys.exit(main())
