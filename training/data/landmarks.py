"""68-point facial landmarks with dlib, plus a cache builder for aligned face datasets.

Landmarks follow the iBUG 300-W 68-point layout (0-16 jaw, 17-26 brows, 27-35 nose,
36-47 eyes, 48-67 mouth), as (68, 2) float32 arrays of xy pixel coordinates.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class LandmarkModelNotFoundError(FileNotFoundError):
    """The dlib 68-point shape predictor file could not be located."""


def default_predictor_path() -> Path:
    """Path of the 68-point model shipped by the face_recognition_models package.

    The package's own ``pose_predictor_model_location()`` imports pkg_resources, which recent
    setuptools no longer ships, so the file is located without importing the package.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkModelNotFoundError("face_recognition_models is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise LandmarkModelNotFoundError(f"missing {path}")
    return path


def _shape_to_array(shape) -> np.ndarray:
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype=np.float32)


class LandmarkDetector:
    """dlib HOG face detector + 68-point shape predictor.

    Images are HxWx3 uint8 RGB. Returned landmarks are (68, 2) float32 xy pixels.
    """

    def __init__(self, *, predictor_path: str | Path | None = None, upsample: int = 1) -> None:
        path = Path(predictor_path) if predictor_path is not None else default_predictor_path()
        if not path.is_file():
            raise LandmarkModelNotFoundError(f"missing {path}")
        # Imported here so that reading a landmark cache (all training needs) works without dlib.
        import dlib

        self._rectangle = dlib.rectangle
        self.upsample = int(upsample)
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(path))

    @staticmethod
    def _check_image(image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        return np.ascontiguousarray(image)

    def detect_boxes(self, image: np.ndarray) -> list[np.ndarray]:
        """Face boxes as (4,) float32 xyxy pixels, largest first."""
        image = self._check_image(image)
        rects = self._detector(image, self.upsample)
        boxes = [np.array([r.left(), r.top(), r.right(), r.bottom()], dtype=np.float32) for r in rects]
        boxes.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
        return boxes

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """Landmarks of every detected face, largest face first; each (68, 2) float32 xy pixels."""
        image = self._check_image(image)
        return [self._predict(image, box) for box in self.detect_boxes(image)]

    def detect_in_box(self, image: np.ndarray, box_xyxy) -> np.ndarray:
        """Run the shape predictor on a given face box (xyxy pixels); returns (68, 2) float32."""
        return self._predict(self._check_image(image), np.asarray(box_xyxy, dtype=np.float32))

    def _predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        return _shape_to_array(self._predictor(image, self._rectangle(x0, y0, x1, y1)))


def aligned_fallback_box(image_shape: tuple[int, ...]) -> np.ndarray:
    """Face box for a centred, aligned crop (UTKFace style) when the HOG detector finds nothing.

    The fractions are the median dlib detection box on UTKFace's 200x200 crops.
    """
    h, w = image_shape[:2]
    return np.array([0.06 * w, 0.06 * h, 0.835 * w, 0.835 * h], dtype=np.float32)


@dataclass(frozen=True)
class LandmarkCache:
    """Landmarks for a directory of images.

    files: relative file names (N,); landmarks: (N, 68, 2) float32 xy pixels;
    detected: (N,) bool, False where the fallback box was used instead of a detection.
    """

    files: tuple[str, ...]
    landmarks: np.ndarray
    detected: np.ndarray

    def __len__(self) -> int:
        return len(self.files)


def load_landmark_cache(path: str | Path) -> LandmarkCache:
    with np.load(path, allow_pickle=False) as data:
        files = tuple(str(f) for f in data["files"])
        landmarks = data["landmarks"].astype(np.float32)
        detected = data["detected"].astype(bool)
    if landmarks.shape != (len(files), 68, 2) or detected.shape != (len(files),):
        raise ValueError(f"inconsistent landmark cache {path}: {landmarks.shape} {detected.shape}")
    return LandmarkCache(files=files, landmarks=landmarks, detected=detected)


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def build_cache(
    *, images: Path, detector: LandmarkDetector, limit: int | None = None
) -> LandmarkCache:
    paths = list_images(images)
    if limit is not None:
        paths = paths[:limit]
    files, marks, detected = [], [], []
    for path in tqdm(paths, desc="landmarks", unit="img"):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            logger.warning("unreadable image %s", path)
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        found = detector.detect(rgb)
        if found:
            lm, ok = found[0], True
        else:
            lm, ok = detector.detect_in_box(rgb, aligned_fallback_box(rgb.shape)), False
        files.append(path.relative_to(images).as_posix())
        marks.append(lm)
        detected.append(ok)
    landmarks = np.stack(marks).astype(np.float32) if marks else np.zeros((0, 68, 2), np.float32)
    return LandmarkCache(files=tuple(files), landmarks=landmarks, detected=np.array(detected, dtype=bool))


def save_landmark_cache(cache: LandmarkCache, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, files=np.array(cache.files, dtype=str), landmarks=cache.landmarks, detected=cache.detected
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compute dlib 68-point landmarks for a folder of faces.")
    parser.add_argument("--images", type=Path, required=True, help="image folder (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (sorted)")
    parser.add_argument("--upsample", type=int, default=1, help="HOG detector upsampling")
    parser.add_argument("--predictor", type=Path, default=None, help="dlib 68-point model file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.images.is_dir():
        logger.error("not a directory: %s", args.images)
        return 2
    try:
        detector = LandmarkDetector(predictor_path=args.predictor, upsample=args.upsample)
    except LandmarkModelNotFoundError as exc:
        logger.error("%s", exc)
        return 2
    cache = build_cache(images=args.images, detector=detector, limit=args.limit)
    save_landmark_cache(cache, args.out)
    logger.info(
        "wrote %s: %d images, %d detected, %d fallback",
        args.out, len(cache), int(cache.detected.sum()), int((~cache.detected).sum()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
