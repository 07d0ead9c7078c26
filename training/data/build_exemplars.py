"""The exemplar bank: unmasked faces that lend their detail to a masked face without a reference.

    python -m training.data.build_exemplars --data ../shared/data --landmarks cache/utkface_landmarks.npz \\
        --out engines/weights/exemplars_192.npz

Faces come from the generator's training split only (``generator_data.split_records``), so no
held-out face can be its own exemplar. They are nearly frontal, with open eyes and a closed
mouth, beardless (women and children) and up to 45, spread over UTKFace's age, gender and
ethnicity labels (from the file names), and cut as the generator's crop window
(``stream.reference.cut_face``) at ``REFERENCE_SIDE`` pixels.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from stream.reference import REFERENCE_SIDE, cut_face, save_exemplars
from training.data.generator_data import FaceDataError, load_face_records, read_rgb, split_records
from training.data.synth import face_box_from_landmarks, face_turn

logger = logging.getLogger(__name__)

AGE_BUCKETS = (12, 25, 45, 65)
# Faces found by eye (the whole bank looked at) to carry what a paste lends as it is over the lower
# face: a stock photo's watermark, or hands, a painted moustache, a smear, a headset microphone, a
# nose ring's chain. The default bank leaves them out, each replaced by the next face of its group.
WATERMARKED = ("13_1_0_20170109204923296.jpg", "26_1_1_20170112213007903.jpg", "5_0_1_20170116030347859.jpg",
               "7_0_1_20170114025451554.jpg", "4_0_2_20161219141105897.jpg")
COVERED = ("9_0_0_20170110224736067.jpg", "5_1_3_20161219230446729.jpg", "19_1_0_20170116163837603.jpg",
           "18_1_1_20170114030232014.jpg", "24_1_2_20170116174805466.jpg", "12_0_0_20170110224603045.jpg",
           "3_1_2_20161219141400280.jpg", "26_1_2_20170116175458291.jpg", "26_1_3_20170112212035747.jpg",
           "23_1_0_20170116221829199.jpg")


def _labels(name: str) -> tuple[int, int, int] | None:
    """(age bucket, gender, ethnicity) from a UTKFace name ``AGE_GENDER_RACE_DATE.jpg``."""
    parts = name.split("_")
    try:
        age, gender, race = int(parts[0]), int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return None
    return int(np.searchsorted(AGE_BUCKETS, age)), gender, race


def _mouth_open(lm: np.ndarray) -> float:
    """Inner-lip gap over mouth width."""
    return float(np.linalg.norm(lm[66] - lm[62]) / max(np.linalg.norm(lm[54] - lm[48]), 1e-6))


def choose(records, *, per_group: int, seed: int, beardless: bool = True, min_age: int = 0, max_age: int = 45,
           mouth_gap: float = 0.03, exclude: frozenset[str] = frozenset()) -> list:
    """Up to ``per_group`` faces of each (age bucket, gender, ethnicity) group; ``beardless``:
    women and children only (UTKFace's labels), since a lent beard or stubble shows on anyone
    who gets it, while lent lips and nostrils suit every face; likewise wrinkles (``max_age``)
    and teeth (``mouth_gap``: inner-lip gap over mouth width). ``min_age``: a small child's
    mouth and cheeks sit differently, and lent to an adult they look pasted on. ``exclude``:
    file names left out (faces that carry a stock-photo watermark), each replaced by the next face
    its group drew, so the rest of the bank stays as it was."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[int, int, int], list] = {}
    for r in records:
        key = _labels(r.path.name)
        if key is None or abs(face_turn(r.landmarks) - 0.5) > 0.06 or _mouth_open(r.landmarks) > mouth_gap:
            continue
        age = int(r.path.name.split("_")[0])
        if (beardless and key[1] == 0 and key[0] > 0) or not min_age <= age <= max_age:
            continue
        groups.setdefault(key, []).append(r)
    chosen = []
    for key in sorted(groups):
        members = groups[key]
        drawn = [members[i] for i in rng.permutation(len(members)) if members[i].path.name not in exclude]
        chosen += drawn[:per_group]
    return chosen


def deblock(image: np.ndarray, strength: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo cleaned by non-local means. Done on the photo as stored, where its JPEG
    blocks sit on their own 8-pixel grid, before the crop resamples them: the paste lends the exemplar's
    finest band at frame resolution, and there the blocks showed as a dotted grain over the cheeks."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV's colour denoiser works in Lab from BGR
    return cv2.cvtColor(cv2.fastNlMeansDenoisingColored(bgr, None, strength, strength, 5, 15), cv2.COLOR_BGR2RGB)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Build the exemplar bank from the generator's training faces.")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--out", type=Path, default=Path("engines/weights/exemplars_192.npz"))
    p.add_argument("--per-group", type=int, default=8, help="faces per (age bucket, gender, ethnicity) group")
    p.add_argument("--beardless", action=argparse.BooleanOptionalAction, default=True,
                   help="women and children only (no lent beards)")
    p.add_argument("--min-age", type=int, default=0,
                   help="youngest face (UTKFace's age label; 16: a child's mouth looks pasted on an adult)")
    p.add_argument("--max-age", type=int, default=45, help="oldest face (UTKFace's age label): no lent wrinkles")
    p.add_argument("--mouth-gap", type=float, default=0.03,
                   help="widest inner-lip gap over mouth width (closed mouths: no lent teeth)")
    p.add_argument("--crop-scale", type=float, default=1.2, help="the generator's crop_scale")
    p.add_argument("--denoise", type=float, default=3.0,
                   help="non-local means strength on each source photo before it is cut, 0 for none (3, the "
                        "shipped bank's: UTKFace's JPEG blocks, magnified with the face, are otherwise lent as a "
                        "grid over the cheeks)")
    p.add_argument("--exclude", nargs="*", default=list(WATERMARKED + COVERED), metavar="NAME",
                   help="UTKFace file names to leave out, each replaced by the next face of its group (default: the "
                        "faces with a watermark or a hand, a moustache or jewellery over the lower face, WATERMARKED "
                        "and COVERED; none: --exclude alone)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        train, _ = split_records(load_face_records(args.data / "faces" / "utkface", args.landmarks))
    except FaceDataError as exc:
        logger.error("%s", exc)
        return 2
    chosen = choose(train, per_group=args.per_group, seed=args.seed, beardless=args.beardless,
                    min_age=args.min_age, max_age=args.max_age, mouth_gap=args.mouth_gap, exclude=frozenset(args.exclude))
    crops, names = [], []
    for r in chosen:
        image = read_rgb(r.path)
        if args.denoise > 0:
            image = deblock(image, args.denoise)
        crop = cut_face(image, face_box_from_landmarks(r.landmarks, image.shape), crop_scale=args.crop_scale)
        crops.append(crop)
        names.append(r.path.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_exemplars(args.out, crops, names)
    logger.info("wrote %s: %d exemplars at %d px, %.0f kB", args.out, len(crops), REFERENCE_SIDE,
                args.out.stat().st_size / 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
