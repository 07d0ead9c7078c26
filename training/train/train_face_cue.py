"""Train a face cue: a yes/no question about the face above the mask, asked of its upper rows only
(engines/models/verifier.py, the mask verifier's architecture).

    python -m training.train.train_face_cue --question man --out runs/man_cue

Without a reference, a track borrows the detail of an exemplar picked by its upper face's grey levels
and skin tone, and that signature cannot tell a man from a woman or a boy: the bank held no grown man
(``build_exemplars --beardless``), and the man of the test clips was lent a baby's mouth (2026-12-07).
The cue is asked once per track and says which part of the bank it may borrow from
(``stream.reference.References``). ``--question man``: a man of ``MAN_AGE`` or older (UTKFace's
gender and age labels); ``child``: anyone under ``CHILD_AGE`` (the age cue, judged and not kept).

Faces: UTKFace's generator training split only (``generator_data.split_records``, so the held-out
faces the completion is measured on stay unseen), labelled from their file names. Each is cut with
the generator's crop window around its landmark face box, jittered as a detector's box would be; the
net sees the rows above ``visible_rows`` (the config's, grey below), and in training the grey starts
up to 8 % higher still, since a mask worn high covers the nose bridge. Batches are half yes, half no;
flips, colour gain, and half of each batch blurred as video frames are. Every 10th training face is
held out to choose the threshold: the lowest probability that says yes to at most ``--max-fpr`` of the
held-out noes (a woman lent a man's mouth is the harm; a man who is not recognised keeps the bank's
women and children, as before). OUT/<question>_cue.pt holds the weights with that threshold,
OUT/log.json the held-out numbers and those on the 500 faces of the validation split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engines.models.verifier import VerifierConfig, save_verifier
from stream.geometry import CropWindow
from stream.reference import CHILD_AGE, MAN_AGE
from training.cli import log_to_stderr, use_cpu_threads
from training.data.generator_data import FaceDataError, FaceRecord, load_face_records, read_rgb, split_records
from training.data.synth import face_box_from_landmarks
from training.train.train_verifier import choose_threshold, held_out_probs, train_balanced, verdict_rates

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a face cue (a question about the face above the mask).")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared data root")
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--out", type=Path, default=Path("runs/man_cue"))
    p.add_argument("--question", default="man", choices=sorted(QUESTIONS),
                   help=f"man: a man of {MAN_AGE} or older; child: anyone under {CHILD_AGE} (UTKFace's labels)")
    p.add_argument("--visible-rows", type=float, default=0.46,
                   help="share of the crop window's rows, from the top, the net sees")
    p.add_argument("--jitters", type=int, default=2, help="jittered crops per training face")
    p.add_argument("--width", type=int, default=16, help="channels of the first layer")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-fpr", type=float, default=0.01, help="held-out noes answered yes, at most")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p


def labels_of(record: FaceRecord) -> tuple[int, int]:
    """UTKFace's age and gender labels (0: male) from ``age_gender_race_date.jpg``."""
    age, gender = record.path.name.split("_")[:2]
    return int(age), int(gender)


QUESTIONS = {
    "man": lambda age, gender: gender == 0 and age >= MAN_AGE,
    "child": lambda age, gender: age < CHILD_AGE,
}


def face_crops(records: list[FaceRecord], *, config: VerifierConfig, jitters: int, spread: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N * jitters, S, S, 3) uint8 RGB crop windows around each face's box, moved and scaled by
    up to ``spread`` of its size, and the index of the record each came from."""
    crops, owners = [], []
    for i, record in enumerate(records):
        image = read_rgb(record.path)
        box = face_box_from_landmarks(record.landmarks, image.shape)
        size = box[2:] - box[:2]
        for _ in range(jitters):
            shift = rng.uniform(-spread, spread, 2) * size
            grow = 1.0 + rng.uniform(-spread, spread)
            centre = (box[:2] + box[2:]) / 2 + shift
            moved = np.concatenate([centre - grow * size / 2, centre + grow * size / 2]).astype(np.float32)
            crops.append(CropWindow.for_face(moved, config.crop_scale).cut(image, config.size))
            owners.append(i)
    return np.stack(crops), np.array(owners)


def grey_lower(batch: torch.Tensor, generator: torch.Generator, *, rows: float, lift: float) -> torch.Tensor:
    """Each image grey from a row between ``rows - lift`` and ``rows`` (of its height) down."""
    size = batch.shape[-1]
    start = (rows - lift * torch.rand(batch.shape[0], generator=generator)) * size
    below = torch.arange(size, dtype=torch.float32)[None, :] >= start[:, None]
    return torch.where(below[:, None, :, None], torch.full_like(batch, 0.5), batch)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr(timestamps=True)
    use_cpu_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    config = VerifierConfig(width=args.width, visible_rows=args.visible_rows)
    try:
        train, validation = split_records(load_face_records(args.data / "faces" / "utkface", args.landmarks))
    except FaceDataError as exc:
        logger.error("%s", exc)
        return 2
    held = train[::10]
    train = [r for i, r in enumerate(train) if i % 10]
    t0 = time.time()
    crops, owners = face_crops(train, config=config, jitters=args.jitters, spread=0.08, rng=rng)
    answer = QUESTIONS[args.question]
    labels = np.array([answer(*labels_of(train[i])) for i in owners], np.uint8)
    held_crops, _ = face_crops(held, config=config, jitters=1, spread=0.04, rng=rng)
    held_labels = np.array([answer(*labels_of(r)) for r in held], np.uint8)
    val_crops, _ = face_crops(validation, config=config, jitters=1, spread=0.0, rng=rng)
    val_labels = np.array([answer(*labels_of(r)) for r in validation], np.uint8)
    logger.info("%d training crops (%.0f %% yes to %r), %d held out, %d validation, in %.0f s",
                len(labels), 100 * labels.mean(), args.question, len(held_labels), len(val_labels), time.time() - t0)

    model = train_balanced(config, crops, labels, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed,
                           transform=lambda batch, gen: grey_lower(batch, gen, rows=config.visible_rows, lift=0.08))

    held_probs = held_out_probs(model, held_crops)
    threshold = choose_threshold(held_probs, held_labels, max_fpr=args.max_fpr)
    report = {
        "question": args.question, "train_crops": int(len(labels)), "steps": args.steps,
        "held_out": {"faces": int(len(held_labels)), "yes": int(held_labels.sum()),
                     **verdict_rates(held_probs, held_labels, threshold)},
        "validation": {"faces": int(len(val_labels)), "yes": int(val_labels.sum()),
                       **verdict_rates(held_out_probs(model, val_crops), val_labels, threshold)},
        "seconds": round(time.time() - t0),
    }
    logger.info("held out: %s", report)
    save_verifier(model, dataclasses.replace(config, threshold=threshold), args.out / f"{args.question}_cue.pt", meta=report)
    (args.out / "log.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
