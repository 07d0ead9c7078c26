"""Held-out F-scores of face-parsing nets, on bare faces and on faces wearing a drawn mask.

    python -m training.evaluation.evaluate_parsing --weights engines/weights/face_parsing.pt \
        engines/weights/face_parsing_masked.pt --json runs/parsing_eval.json

The faces are the generator's held-out UTKFace split (``split_records``), framed as the generator's
crops; with ``masked`` every face wears a mask drawn by the generator's synthesizer, the same mask for
a face on every run (seeded by its index). ``eyes`` is the mean F-score of the two eye classes: what
the eye guard (``stream.inpaint.EyeGuard``) relies on, above a worn mask.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from engines.models.generator import GeneratorConfig
from engines.models.parsing import ParsingWeightsError, load_parsing_net
from training.cli import log_to_stderr, use_cpu_threads, write_json
from training.data.generator_data import (
    FaceDataError,
    ParsingDataset,
    build_synthesizer,
    load_face_records,
    split_records,
)
from training.train.train_parsing import confusion, f_scores

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Held-out F-scores of parsing nets, with and without drawn masks.")
    p.add_argument("--weights", type=Path, nargs="+", required=True)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr()
    use_cpu_threads(args.threads)
    try:
        nets = {weights: load_parsing_net(weights) for weights in args.weights}
    except ParsingWeightsError as exc:
        logger.error("%s", exc)
        return 2
    try:
        _, held_out = split_records(load_face_records(args.data / "faces" / "utkface", args.landmarks))
    except FaceDataError as exc:
        logger.error("%s", exc)
        return 2
    config = GeneratorConfig()
    sets = {"bare": ParsingDataset(held_out, config=config, train=False),
            "masked": ParsingDataset(held_out, config=config, train=False,
                                     synthesizer=build_synthesizer(args.data / "mask_templates"), masked=1.0)}
    results: dict[str, dict] = {}
    print(f"{'weights':40s} {'faces':>8s} {'eyes':>6s} {'mean face':>10s}")
    for weights, (model, parsing_config) in nets.items():
        results[str(weights)] = {}
        for name, dataset in sets.items():
            scores = f_scores(confusion(model.eval(), DataLoader(dataset, batch_size=32), parsing_config.num_classes,
                                        torch.device("cpu")))
            scores["eyes"] = (scores["eye_left"] + scores["eye_right"]) / 2
            results[str(weights)][name] = scores
            print(f"{weights.name:40s} {name:>8s} {scores['eyes']:6.3f} {scores['mean_face']:10.3f}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
