"""Real photos of people without masks: the detector's hard negatives, and its precision test sets.

Two sets from the shared data, each with a fixed measuring split that is never trained on:

* ``photos``: ``photos/unmasked`` (web photos, many with a hand or an object near the mouth);
  every ``holdout_every``-th file by sorted name is held out;
* ``lfw``: ``faces/lfw/PERSON/*.jpg`` (news photos); every ``holdout_every``-th person by sorted
  name is held out, so no held-out face was seen in training under another photo.

The real masked web photos (``photos/masked``) are split the same way (``masked_photo_files``):
their held-out fifth measures recall, the rest may train the mask verifier. What the detector finds
there that is not a face was labelled by eye (``load_nonfaces``): it measures harm, so training
may leave those boxes out of its faces but must not learn them as anything.

For training, every face dlib finds in a training image is stored with its 68 landmarks
(``python -m training.data.negatives``), so the scenes can label the faces (box and face region,
no worn mask) and put objects in front of their mouths.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from stream.geometry import box_iou
from training.data.landmarks import IMAGE_SUFFIXES, LandmarkDetector, LandmarkModelNotFoundError

logger = logging.getLogger(__name__)

NEGATIVE_SETS = ("photos", "lfw")
SPLITS = ("train", "val")
# Faces found with a worn mask in photos/masked that are not faces, labelled by eye (cars, logos, signs, hands).
NONFACE_ANNOTATIONS = Path(__file__).resolve().parents[1] / "evaluation" / "annotations" / "masked_photo_nonfaces.json"


def load_nonfaces(path: Path = NONFACE_ANNOTATIONS) -> list[tuple[str, np.ndarray]]:
    """(photo name, (4,) xyxy box as the detector drew it) of each labelled non-face in ``photos/masked``."""
    return [(item["file"], np.asarray(item["box"], np.float32))
            for item in json.loads(Path(path).read_text(encoding="utf-8"))["nonfaces"]]


def nonfaces_by_photo(path: Path = NONFACE_ANNOTATIONS) -> dict[str, np.ndarray]:
    """Photo name -> (K, 4) xyxy boxes of its labelled non-faces (see ``load_nonfaces``)."""
    boxes: dict[str, list[np.ndarray]] = {}
    for name, box in load_nonfaces(path):
        boxes.setdefault(name, []).append(box)
    return {name: np.stack(b) for name, b in boxes.items()}


def is_labelled_nonface(box: np.ndarray, labelled: np.ndarray | None) -> bool:
    """Whether a found (4,) xyxy box is one of a photo's labelled non-faces ((K, 4) boxes, or None):
    IoU >= 0.5, since the labels are the detector's own boxes of an earlier version."""
    return labelled is not None and box_iou(box[None], labelled).max() >= 0.5


def negative_files(data_root: str | Path, name: str, split: str, *, holdout_every: int = 5) -> list[Path]:
    """Image paths of one negative set's split (see the module docstring)."""
    if name not in NEGATIVE_SETS:
        raise ValueError(f"set must be one of {NEGATIVE_SETS}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    root = Path(data_root)
    held = split == "val"
    if name == "photos":
        return _file_split(root / "photos" / "unmasked", held, holdout_every)
    people = sorted(p for p in (root / "faces" / "lfw").iterdir() if p.is_dir()) if (root / "faces" / "lfw").is_dir() else []
    out = []
    for i, person in enumerate(people):
        if (i % holdout_every == 0) == held:
            out.extend(sorted(p for p in person.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
    return out


def masked_photo_files(data_root: str | Path, split: str, *, holdout_every: int = 5) -> list[Path]:
    """Image paths of one split of ``photos/masked``: every ``holdout_every``-th file is ``val``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    return _file_split(Path(data_root) / "photos" / "masked", split == "val", holdout_every)


def _file_split(folder: Path, held: bool, holdout_every: int) -> list[Path]:
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [p for i, p in enumerate(files) if (i % holdout_every == 0) == held]


@dataclass(frozen=True)
class FaceCache:
    """Every face found in a list of images.

    files: image paths relative to the data root (N,); image: (M,) int index into ``files`` of
    each face; landmarks: (M, 68, 2) float32 xy pixels of the image as stored on disk.
    """

    files: tuple[str, ...]
    image: np.ndarray
    landmarks: np.ndarray

    def faces_of(self, i: int) -> np.ndarray:
        """(K, 68, 2) landmarks of the faces in image ``i`` (K may be 0)."""
        return self.landmarks[self.image == i]


def build_face_cache(paths: list[Path], data_root: Path, detector: LandmarkDetector, *, max_side: int = 640) -> FaceCache:
    files, index, marks = [], [], []
    for path in tqdm(paths, desc="faces", unit="img", mininterval=5):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            logger.warning("unreadable image %s", path)
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        # HOG detection time grows with the pixel count; the landmarks are scaled back.
        scale = min(1.0, max_side / max(rgb.shape[:2]))
        small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        found = detector.detect(small)
        if not found:
            continue
        files.append(path.relative_to(data_root).as_posix())
        for lm in found:
            index.append(len(files) - 1)
            marks.append(np.asarray(lm, np.float32) / scale)
    landmarks = np.stack(marks).astype(np.float32) if marks else np.zeros((0, 68, 2), np.float32)
    return FaceCache(tuple(files), np.array(index, np.int64), landmarks)


def save_face_cache(cache: FaceCache, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, files=np.array(cache.files, dtype=str), image=cache.image, landmarks=cache.landmarks)


def load_face_cache(path: str | Path) -> FaceCache:
    with np.load(path, allow_pickle=False) as data:
        cache = FaceCache(tuple(str(f) for f in data["files"]), data["image"].astype(np.int64),
                          data["landmarks"].astype(np.float32))
    if cache.landmarks.shape != (len(cache.image), 68, 2):
        raise ValueError(f"inconsistent face cache {path}")
    return cache


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Find every face (dlib) in the training split of the unmasked photo sets.")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared data root")
    p.add_argument("--out", type=Path, default=Path("cache/negative_faces.npz"))
    p.add_argument("--sets", nargs="+", default=list(NEGATIVE_SETS), choices=NEGATIVE_SETS)
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each set")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = []
    for name in args.sets:
        paths.extend(negative_files(args.data, name, "train")[: args.limit])
    if not paths:
        logger.error("no images under %s", args.data)
        return 2
    try:
        detector = LandmarkDetector(upsample=1)
    except LandmarkModelNotFoundError as exc:
        logger.error("%s", exc)
        return 2
    cache = build_face_cache(paths, args.data, detector)
    save_face_cache(cache, args.out)
    logger.info("wrote %s: %d of %d images with a face, %d faces", args.out, len(cache.files), len(paths), len(cache.image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
