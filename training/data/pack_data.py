"""A reduced copy of the detector's training data, for a machine that takes few bytes per job.

The GPU machine lent to some sessions takes at most 64 MiB of files with each command, and the
shared data is about 140 MiB. This writes a copy that ``training.train.train_detector`` reads with
``--data OUT/data --landmarks OUT/landmarks.npz``:

* ``faces`` UTKFace images drawn from the training split only (the faces the detector's
  validation set reserves never leave), with their landmarks;
* the mask templates unchanged (their anchor points are in template pixels);
* the textures shrunk to ``--texture-size`` px JPEG;
* the whole IWM/CWM set resized to ``--segmentation-size`` square (the network sees 320x320),
  ground truth with nearest-neighbour so its colours stay exact. Its held-out images come along
  because the split is by position in the sorted list: a copy of the training images alone would
  be split again and lose a fifth of them. Training still never reads the held-out ones.

Example::

    python -m training.data.pack_data --data ../shared/data --landmarks cache/utkface_landmarks.npz \\
        --faces 4000 --out .gpu
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from training.data.detector_data import TEXTURE_SUFFIXES, segmentation_files, utk_split_indices
from training.data.generator_data import DEFAULT_VAL_COUNT, FaceDataError, load_face_records, split_records
from training.data.landmarks import LandmarkCache, load_landmark_cache, save_landmark_cache

logger = logging.getLogger(__name__)


class PackError(RuntimeError):
    """The requested copy cannot be made from the given data."""


@dataclass(frozen=True)
class PackSummary:
    faces: int
    textures: int
    segmentation_images: int
    bytes: int


def pack(
    *,
    data: Path,
    landmarks: Path,
    out: Path,
    faces: int,
    seed: int = 0,
    avoid: LandmarkCache | None = None,
    texture_size: int = 512,
    segmentation_size: int = 384,
    split_of: str = "detector",
    generator_val_count: int = DEFAULT_VAL_COUNT,
) -> PackSummary:
    """Write the reduced copy into ``out`` (which must not exist yet). ``split_of``: whose
    training split the faces come from ("detector" or "generator": their held-out faces differ;
    the generator's is ``split_records(..., val_count=generator_val_count)``)."""
    if out.exists():
        raise PackError(f"{out} exists; choose a new folder")
    cache = load_landmark_cache(landmarks)
    avoided = set(avoid.files) if avoid is not None else set()
    if split_of == "generator":
        train, _ = split_records(load_face_records(data / "faces" / "utkface", landmarks), val_count=generator_val_count)
        names = {r.path.name for r in train}
        candidates = [i for i, f in enumerate(cache.files) if f in names]
    elif split_of == "detector":
        candidates = list(utk_split_indices(len(cache), "train"))
    else:
        raise PackError(f"split_of must be 'detector' or 'generator', got {split_of!r}")
    pool = [i for i in candidates if cache.files[i] not in avoided]
    if faces > len(pool):
        raise PackError(f"asked for {faces} faces, only {len(pool)} training faces are available")
    chosen = np.sort(np.random.default_rng(seed).choice(pool, faces, replace=False))

    root = out / "data"
    face_dir = root / "faces" / "utkface"
    for i in chosen:
        target = face_dir / cache.files[i]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / "faces" / "utkface" / cache.files[i], target)
    save_landmark_cache(
        LandmarkCache(
            files=tuple(cache.files[i] for i in chosen),
            landmarks=cache.landmarks[chosen],
            detected=cache.detected[chosen],
        ),
        out / "landmarks.npz",
    )

    templates = data / "mask_templates"
    shutil.copytree(templates, root / "mask_templates", ignore=shutil.ignore_patterns("textures"))
    n_textures = 0
    for path in sorted((templates / "textures").rglob("*")):
        if path.suffix.lower() not in TEXTURE_SUFFIXES:
            continue
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise PackError(f"unreadable texture {path}")
        scale = texture_size / max(bgr.shape[:2])
        if scale < 1:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        target = (root / "mask_templates" / "textures" / path.relative_to(templates / "textures")).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        n_textures += 1

    seg = data / "segmentation" / "training"
    pairs = segmentation_files(seg, "train") + segmentation_files(seg, "val")
    size = (segmentation_size, segmentation_size)
    for image, truth in pairs:
        for path, interpolation, params in (
            (image, cv2.INTER_AREA, [cv2.IMWRITE_JPEG_QUALITY, 85]),
            (truth, cv2.INTER_NEAREST, [cv2.IMWRITE_PNG_COMPRESSION, 9]),
        ):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise PackError(f"unreadable {path}")
            target = root / "segmentation" / "training" / path.relative_to(seg)
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), cv2.resize(bgr, size, interpolation=interpolation), params)

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return PackSummary(faces=faces, textures=n_textures, segmentation_images=len(pairs), bytes=total)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write a reduced copy of the detector's training data.")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared data root")
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--out", type=Path, required=True, help="new folder for the copy")
    p.add_argument("--faces", type=int, default=4000, help="UTKFace training faces to take")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--avoid", type=Path, default=None,
                   help="landmarks.npz of an earlier copy: take other faces than it has")
    p.add_argument("--split-of", default="detector", choices=["detector", "generator"],
                   help="take faces from this model's training split (their held-out faces differ)")
    p.add_argument("--texture-size", type=int, default=512)
    p.add_argument("--segmentation-size", type=int, default=384)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = pack(
            data=args.data, landmarks=args.landmarks, out=args.out, faces=args.faces, seed=args.seed,
            avoid=load_landmark_cache(args.avoid) if args.avoid is not None else None,
            texture_size=args.texture_size, segmentation_size=args.segmentation_size, split_of=args.split_of,
        )
    except (PackError, FileNotFoundError, FaceDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logger.info("%s: %d faces, %d textures, %d segmentation images, %.1f MiB", args.out, summary.faces,
                summary.textures, summary.segmentation_images, summary.bytes / 2**20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
