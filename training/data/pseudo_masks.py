"""Real masked photos labelled by the shipped models: recall anchors for a hard-negative fine-tune.

``photos/masked`` has no labels, and the hard negatives of ``training.data.negatives`` pull the
detector away from real masks (a face seen through fabric looks like an unmasked one). Its
training split (``negatives.masked_photo_files(..., "train")``; the held-out fifth stays for
measuring) is labelled here by the shipped detector and mask verifier together, and only where
they are sure: every face the detector finds must wear a mask it segments and the verifier
confirms. An image with any unconfirmed face is left out, because an unlabelled masked face
in a scene teaches "no mask". So is an image holding something labelled by eye as no face
(``negatives.load_nonfaces``: cars, signs, a fire that both models were sure of): labelled, it
would teach a face there; unlabelled, a background, and those labels measure harm.

The stored face region is the ellipse inscribed in the face box: the detector's face masks are
not what the pipeline uses, and the boxes are what the scenes need.

``python -m training.data.pseudo_masks --data ../shared/data --out cache/masked_pseudo.npz``
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from training.data.negatives import NONFACE_ANNOTATIONS, load_nonfaces, masked_photo_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoLabels:
    """Confident masked faces in a list of images.

    files: image paths relative to the data root (N,); image: (M,) int index into ``files`` of
    each face; boxes: (M, 4) float32 xyxy pixels of the image as stored on disk; masks: (M,)
    COCO RLE counts (str) of each face's worn mask at the image's size; sizes: (N, 2) int (h, w).
    """

    files: tuple[str, ...]
    image: np.ndarray
    boxes: np.ndarray
    masks: tuple[str, ...]
    sizes: np.ndarray

    def faces_of(self, i: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """(K, 4) boxes and K (h, w) bool worn masks of image ``i``."""
        idx = np.flatnonzero(self.image == i)
        h, w = (int(v) for v in self.sizes[i])
        worn = [mask_utils.decode({"size": [h, w], "counts": self.masks[k].encode("ascii")}).astype(bool) for k in idx]
        return self.boxes[idx], worn


def label_image(detector, image: np.ndarray, *, min_prob: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(boxes (K, 4), masks (K, H, W) bool) when every face found wears a confirmed mask, else None.

    ``detector`` is a ``stream.detect.FaceDetector`` with a verifier."""
    found = detector(image)
    if len(found) == 0:
        return None
    worn = found.confident_masks()
    if not worn.all() or found.mask_probs is None or (found.mask_probs < min_prob).any():
        return None
    return found.boxes, found.masks


def build_pseudo_labels(detector, paths: list[Path], data_root: Path, *, min_prob: float,
                        leave_out: frozenset[str] = frozenset()) -> PseudoLabels:
    """Labels of the ``paths`` whose every face wears a confirmed mask; file names in ``leave_out`` are skipped."""
    files, index, boxes, masks, sizes = [], [], [], [], []
    for path in tqdm(paths, desc="pseudo labels", unit="img", mininterval=5):
        if path.name in leave_out:
            continue
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            logger.warning("unreadable image %s", path)
            continue
        labelled = label_image(detector, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), min_prob=min_prob)
        if labelled is None:
            continue
        files.append(path.relative_to(data_root).as_posix())
        sizes.append(bgr.shape[:2])
        for box, worn in zip(*labelled):
            index.append(len(files) - 1)
            boxes.append(box)
            rle = mask_utils.encode(np.asfortranarray(worn.astype(np.uint8)))
            masks.append(rle["counts"].decode("ascii"))
    return PseudoLabels(tuple(files), np.array(index, np.int64), np.array(boxes, np.float32).reshape(-1, 4),
                        tuple(masks), np.array(sizes, np.int64).reshape(-1, 2))


def save_pseudo_labels(labels: PseudoLabels, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, files=np.array(labels.files, dtype=str), image=labels.image, boxes=labels.boxes,
                        masks=np.array(labels.masks, dtype=str), sizes=labels.sizes)


def load_pseudo_labels(path: str | Path) -> PseudoLabels:
    with np.load(path, allow_pickle=False) as data:
        labels = PseudoLabels(tuple(str(f) for f in data["files"]), data["image"].astype(np.int64),
                              data["boxes"].astype(np.float32), tuple(str(m) for m in data["masks"]),
                              data["sizes"].astype(np.int64))
    if len(labels.masks) != len(labels.image) or labels.boxes.shape != (len(labels.image), 4):
        raise ValueError(f"inconsistent pseudo labels {path}")
    return labels


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Label the training split of the real masked photos with the shipped "
                                            "detector and mask verifier, where both are sure.")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared data root")
    p.add_argument("--out", type=Path, default=Path("cache/masked_pseudo.npz"))
    p.add_argument("--detector-weights", type=Path, default=None, help="default: the shipped detector")
    p.add_argument("--verifier-weights", type=Path, default=None, help="default: the shipped verifier")
    p.add_argument("--min-prob", type=float, default=0.95, help="verifier probability every face must reach")
    p.add_argument("--not-faces", type=Path, default=NONFACE_ANNOTATIONS,
                   help="boxes labelled as no face; their photos are left out")
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from engines.registry import load_model
    from engines.runtime import EngineError
    from stream.detect import CropVerifier, FaceDetector
    from training.cli import log_to_stderr, use_cpu_threads

    log_to_stderr()
    use_cpu_threads(args.threads)
    paths = masked_photo_files(args.data, "train")
    if not paths:
        logger.error("no masked photos under %s", args.data / "photos" / "masked")
        return 2
    try:
        det = load_model("detector", backend="torch", device="cpu", weights=args.detector_weights, threads=args.threads)
        ver = load_model("verifier", backend="torch", device="cpu", weights=args.verifier_weights, threads=args.threads)
    except EngineError as exc:
        logger.error("%s", exc)
        return 2
    detector = FaceDetector(det.engine, det.config, verifier=CropVerifier(ver.engine, ver.config))
    leave_out = frozenset(name for name, _ in load_nonfaces(args.not_faces))
    labels = build_pseudo_labels(detector, paths, args.data, min_prob=args.min_prob, leave_out=leave_out)
    save_pseudo_labels(labels, args.out)
    logger.info("%d of %d images labelled, %d masked faces -> %s", len(labels.files), len(paths), len(labels.image),
                args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
