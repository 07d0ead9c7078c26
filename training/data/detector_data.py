"""Training scenes for the face / face-mask Mask R-CNN, built on the fly.

Every scene is a letterboxed frame: a "frame" of random aspect ratio is rendered directly at
the size it has after letterboxing into ``input_size`` (long side fits, aspect kept), then
padded right/bottom with 0, exactly as the streaming pipeline feeds the model.

Two kinds of scenes:

* synthetic: 1-3 UTKFace faces (masked with :class:`training.data.synth.MaskSynthesizer`, some
  pulled under the nose, some left unmasked as negatives) pasted at many scales, positions
  and rotations on varied backgrounds (textures, gradients, noise, blurred photo crops), with
  occluding skin-coloured blobs, mask-coloured distractor blobs, blur, noise, JPEG, lighting
  and colour changes;
* real: an image of the IWM/CWM segmentation set (train split) with its ground truth, either
  filling the frame or shrunk onto a synthetic background, with the same photometric noise.

Targets follow torchvision's Mask R-CNN: ``boxes`` (N, 4) float32 xyxy input pixels,
``labels`` (N,) int64 (1 face, 2 face_mask), ``masks`` (N, H, W) uint8 {0, 1}. The face
instance's mask is the face region (forehead to chin, plus the worn mask), its box the
whole-face box; a face_mask instance's mask is the visible worn mask, its box that mask's
bounding box.

Scene ``i`` of a split is a pure function of ``(seed, split, i)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from engines.models.detector import FACE, FACE_MASK
from training.data.landmarks import load_landmark_cache
from training.data.negatives import load_face_cache
from training.data.pseudo_masks import load_pseudo_labels
from training.data.synth import MaskSynthesizer, face_box_from_landmarks, sheer_layer

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
SEGMENTATION_SETS = ("IWM", "CWM")
TEXTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataUnavailableError(FileNotFoundError):
    """A data folder or the landmark cache needed to build scenes is missing."""


@dataclass(frozen=True)
class DetectorDataConfig:
    """Scene generation settings. Probabilities are per scene unless stated."""

    input_size: tuple[int, int] = (320, 320)
    real_fraction: float = 0.35
    face_counts: tuple[float, float, float] = (0.5, 0.3, 0.2)  # P(1, 2, 3 faces)
    p_unmasked: float = 0.2  # per face
    p_pulled_down: float = 0.12  # per masked face
    p_sheer: float = 0.0  # per masked face: see-through mesh / rhinestone fabric (synth.sheer_layer)
    min_face: float = 18.0  # face box width range in input pixels
    max_face_frac: float = 0.85  # of the content's short side
    p_occluder: float = 0.3
    p_distractor: float = 0.3
    val_utk_every: int = 20  # every n-th UTKFace image (sorted) is reserved for validation
    seg_holdout_every: int = 5  # every n-th segmentation image (sorted per set) is held out
    # Hard negatives (all 0 keeps the scenes of earlier runs, and the validation scenes, as they were).
    negative_fraction: float = 0.0  # real photos of unmasked people (training.data.negatives)
    p_mouth_object: float = 0.0  # per unmasked face: hand, fingers, microphone, phone, cup or scarf at the mouth
    p_loose_mask: float = 0.0  # per synthetic scene: a mask not worn (under the chin, in a hand, lying about)
    pseudo_fraction: float = 0.0  # real masked photos labelled by the shipped models (training.data.pseudo_masks)
    # Per synthetic scene, away from the faces and unlabelled: a real clip's fist with rings, and her arm
    # and clothes in see-through mesh, were taken for masked faces (2026-12-07, the mesh-mask dancer).
    p_hand: float = 0.0  # a drawn fist or open hand (draw_hand)
    p_sheer_limb: float = 0.0  # an arm or a torso in see-through mesh fabric (synth.sheer_layer)


# ----------------------------------------------------------------------------- geometry


def face_region(lm: np.ndarray, box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Face region (h, w) bool from 68 landmarks: the jaw line plus a forehead arc up to the top
    of the whole-face ``box``."""
    jaw = lm[0:17]
    top = box[1]
    brow_y = lm[17:27, 1].min()
    fore = []
    for t in np.linspace(0, 1, 9):
        x = jaw[16, 0] + t * (jaw[0, 0] - jaw[16, 0])
        y = top + (brow_y - top) * (2 * t - 1) ** 2 * 0.6
        fore.append((x, y))
    poly = np.concatenate([jaw, np.array(fore, np.float32)]).round().astype(np.int32)
    face = np.zeros(shape, np.uint8)
    cv2.fillPoly(face, [cv2.convexHull(poly)], 1)
    return face.astype(bool)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Bounding box (4,) float32 xyxy (exclusive max) of a boolean mask, None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


# ----------------------------------------------------------------------------- real photos


def utk_split_indices(n: int, split: str, config: DetectorDataConfig = DetectorDataConfig()) -> np.ndarray:
    """Indices into a UTKFace landmark cache of ``n`` entries that belong to ``split``: "val" is
    every ``config.val_utk_every``-th entry in cache order, "train" the rest."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    held_out = np.arange(n) % config.val_utk_every == 0
    return np.nonzero(held_out if split == "val" else ~held_out)[0]


def segmentation_files(root: Path, split: str, *, holdout_every: int = 5) -> list[tuple[Path, Path]]:
    """(image, ground truth) pairs of the IWM/CWM sets under ``root`` (the folder holding IWM,
    CWM). ``split`` "val" is every ``holdout_every``-th image by sorted name within each set,
    "train" the rest."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    pairs = []
    for name in SEGMENTATION_SETS:
        images = sorted((root / name / "images").glob("*.jpg"))
        for i, img in enumerate(images):
            gt = root / name / "masks" / f"{img.stem}_gt.png"
            if not gt.is_file():
                continue
            if (i % holdout_every == 0) == (split == "val"):
                pairs.append((img, gt))
    return pairs


def segmentation_instances(gt_bgr: np.ndarray, *, min_area_frac: float = 0.002) -> list[tuple[np.ndarray, np.ndarray]]:
    """Face / worn-mask instances from an IWM/CWM ground-truth image (HxWx3 uint8 BGR as read by
    OpenCV; red = visible face skin, green = worn mask).

    Returns [(face_mask (H, W) bool, worn_mask (H, W) bool)], one per connected face region
    (skin united with mask) larger than ``min_area_frac`` of the image.
    """
    red = gt_bgr[..., 2] > 64
    green = gt_bgr[..., 1] > 64
    face = red | green
    n, labels = cv2.connectedComponents(cv2.dilate(face.astype(np.uint8), np.ones((5, 5), np.uint8)))
    out = []
    for k in range(1, n):
        comp = (labels == k) & face
        if comp.sum() < min_area_frac * face.size:
            continue
        out.append((comp, comp & green))
    return out


# ----------------------------------------------------------------------------- image noise


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def skin_colour(rng: np.random.Generator) -> np.ndarray:
    # Skin tones from dark to light in RGB, with some jitter.
    t = rng.uniform(0, 1)
    dark, light = np.array([90, 55, 35], np.float32), np.array([245, 205, 180], np.float32)
    return np.clip(dark + t * (light - dark) + rng.normal(0, 12, 3), 0, 255).astype(np.float32)


def draw_hand(background: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A hand drawn over ``background`` ((S, S, 3) uint8 RGB): (image, matte, the hand's box xyxy); the
    matte ((S, S) float32 in [0, 1]) is the hand and its sleeve blurred as the image was: where it is 0
    the image is the background (blurred with it), so the hand can be cut out along it. A fist
    (a palm and a row of curled fingers with dark creases between them) or an open hand (a palm and
    spread fingers), in one skin tone shaded across, sometimes with rings or dark nails and a sleeve,
    turned at random and blurred as by motion or focus."""
    s = background.shape[0]
    image = background.astype(np.float32)
    hand = np.zeros((s, s), np.uint8)
    creases = np.zeros((s, s), np.uint8)
    drawn = np.zeros((s, s), np.float32)
    cx, cy, r = s / 2, s / 2, s * rng.uniform(0.22, 0.32)
    angle = rng.uniform(0, 180)
    cv2.ellipse(hand, (int(cx), int(cy)), (int(r), int(r * rng.uniform(0.8, 1.1))), angle, 0, 360, 1, -1)
    fingers = int(rng.integers(3, 5))
    fist = rng.random() < 0.6
    t = np.radians(angle)
    along, across = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
    width = 2 * r / fingers
    for k in range(fingers):
        base = np.array([cx, cy]) + across * (k - (fingers - 1) / 2) * width * 0.95
        reach = r * (rng.uniform(0.7, 1.0) if fist else rng.uniform(1.4, 2.0))
        tip = base + along * reach
        cv2.line(hand, tuple(map(int, base)), tuple(map(int, tip)), 1, max(2, int(width * 0.85)))
        cv2.circle(hand, tuple(map(int, tip)), max(1, int(width * 0.42)), 1, -1)
        if fist and k:
            edge = base - across * width * 0.47
            cv2.line(creases, tuple(map(int, edge)), tuple(map(int, edge + along * reach)), 1,
                     max(1, int(width * 0.12)))
    if rng.random() < 0.5:  # the thumb
        root = np.array([cx, cy]) - across * r * 0.8
        tip = root + (along - across) * r * 0.7
        cv2.line(hand, tuple(map(int, root)), tuple(map(int, tip)), 1, max(2, int(width * 0.8)))
    if rng.random() < 0.5:  # a sleeve on the wrist
        wrist = np.array([cx, cy]) - along * r * 1.1
        arm = np.zeros((s, s), np.uint8)
        cv2.line(arm, tuple(map(int, wrist)), tuple(map(int, wrist - along * s)), 1, int(r * rng.uniform(1.2, 1.8)))
        sleeve = arm.astype(bool) & ~hand.astype(bool)
        drawn[sleeve] = 1.0
        image[sleeve] = rng.uniform(0, 80, 3) if rng.random() < 0.7 else rng.uniform(0, 255, 3)
    skin = skin_colour(rng)
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
    shade = 1.0 + rng.uniform(0.1, 0.35) * (((xs - cx) * np.cos(t + 1) + (ys - cy) * np.sin(t + 1)) / r).clip(-1, 1)
    painted = skin[None, None] * shade[..., None] + rng.normal(0, 4, (s, s, 3))
    mask = hand.astype(bool)
    image[mask] = painted[mask]
    image[creases.astype(bool) & mask] *= rng.uniform(0.45, 0.7)
    for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.5 else 0):  # rings, nails, glints
        y, x = np.argwhere(mask)[rng.integers(mask.sum())]
        metal = rng.uniform(150, 255) if rng.random() < 0.6 else rng.uniform(10, 60)
        radius = max(1, int(width * rng.uniform(0.15, 0.35)))
        cv2.circle(image, (int(x), int(y)), radius, (metal,) * 3, -1)
        cv2.circle(drawn, (int(x), int(y)), radius, 1.0, -1)
    drawn = np.maximum(drawn, mask)
    if rng.random() < 0.5:  # motion blur along one direction
        k = int(rng.integers(3, max(4, s // 8)))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1.0 / k
        turn = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, turn, (k, k))
        image = cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6))
        drawn = cv2.filter2D(drawn, -1, kernel / max(kernel.sum(), 1e-6))
    sigma = rng.uniform(0.3, 2.0)
    image = cv2.GaussianBlur(image, (0, 0), sigma)
    matte = cv2.GaussianBlur(drawn, (0, 0), sigma)
    y, x = np.nonzero(mask)
    box = np.array([x.min(), y.min(), x.max() + 1, y.max() + 1], np.float32)
    return image.clip(0, 255).astype(np.uint8), matte.clip(0, 1), box


def _smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth random field (h, w, 3) float32 in 0..255 from upsampled random cells."""
    small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255)


def _gradient(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    a, b = _random_colour(rng), _random_colour(rng)
    ang = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xs * math.cos(ang) + ys * math.sin(ang)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return a + t[..., None] * (b - a)


def _blob_mask(h: int, w: int, cx: float, cy: float, rx: float, ry: float, rng: np.random.Generator) -> np.ndarray:
    """Irregular filled blob (h, w) bool: a polygon with jittered radius around (cx, cy)."""
    n = int(rng.integers(7, 14))
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = rng.uniform(0.6, 1.0, n)
    rot = rng.uniform(0, 2 * math.pi)
    pts = np.stack([cx + rx * rad * np.cos(ang + rot), cy + ry * rad * np.sin(ang + rot)], 1)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random lighting, colour, blur, noise and JPEG on an HxWx3 uint8 RGB image."""
    img = image.astype(np.float32)
    # Lighting and colour cast.
    img = img * rng.uniform(0.6, 1.35) + rng.uniform(-30, 30)
    img = img * rng.uniform(0.85, 1.15, 3)
    if rng.random() < 0.3:
        mean = img.mean()
        img = (img - mean) * rng.uniform(0.6, 1.3) + mean
    if rng.random() < 0.3:  # uneven lighting
        h, w = img.shape[:2]
        img = img * (0.6 + 0.8 * _smooth_noise(h, w, rng, 3)[..., :1] / 255.0)
    img = np.clip(img, 0, 255)
    if rng.random() < 0.3:
        gamma = rng.uniform(0.6, 1.6)
        img = 255.0 * (img / 255.0) ** gamma
    if rng.random() < 0.08:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    out = img.astype(np.uint8)
    r = rng.random()
    if r < 0.2:
        k = float(rng.uniform(0.5, 1.8))
        out = cv2.GaussianBlur(out, (0, 0), k)
    elif r < 0.3:
        n = int(rng.integers(3, 8))
        kern = np.zeros((n, n), np.float32)
        kern[n // 2] = 1.0 / n
        rot = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kern = cv2.warpAffine(kern, rot, (n, n))
        out = cv2.filter2D(out, -1, kern / max(kern.sum(), 1e-6))
    elif r < 0.4:  # low-resolution source
        h, w = out.shape[:2]
        f = rng.uniform(0.35, 0.7)
        small = cv2.resize(out, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.35:
        out = np.clip(out.astype(np.float32) + rng.normal(0, rng.uniform(2, 12), out.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 95))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


# ----------------------------------------------------------------------------- dataset


@dataclass
class _Instance:
    face_box: np.ndarray  # (4,) xyxy, whole face
    face: np.ndarray  # (h, w) bool
    worn: np.ndarray | None  # (h, w) bool visible worn mask, None for an unmasked face
    mouth: np.ndarray | None = None  # (2,) xy mouth centre, where known


class DetectorSceneDataset(Dataset):
    """Map-style dataset of letterboxed scenes; any non-negative index is valid.

    ``__getitem__`` returns (image (3, H, W) float32 RGB in [0, 1], target dict as in the
    module docstring). ``split`` "val" uses UTKFace faces reserved for validation, no real
    images, and is meant to be read at indices ``0..n-1`` for a fixed validation set.

    ``data_root`` is the shared data folder (faces/utkface, mask_templates,
    segmentation/training); ``landmarks`` the UTKFace landmark cache (training.data.landmarks);
    ``negatives`` the face cache of the unmasked photos' training split (training.data.negatives),
    needed when ``config.negative_fraction`` > 0.
    """

    def __init__(
        self,
        *,
        data_root: str | Path,
        landmarks: str | Path,
        config: DetectorDataConfig = DetectorDataConfig(),
        split: str = "train",
        seed: int = 0,
        negatives: str | Path | None = None,
        pseudo: str | Path | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        root = Path(data_root)
        self.config = config
        self.split = split
        self.seed = seed
        self.utk_root = root / "faces" / "utkface"
        templates = root / "mask_templates"
        for p in (self.utk_root, templates, Path(landmarks)):
            if not p.exists():
                raise DataUnavailableError(f"missing {p}")
        self.synth = MaskSynthesizer(
            templates_root=templates, textures_root=templates / "textures", p_sheer=config.p_sheer
        )
        cache = load_landmark_cache(landmarks)
        idx = utk_split_indices(len(cache), split, config)
        self.utk_files = [cache.files[i] for i in idx]
        self.utk_landmarks = cache.landmarks[idx]
        self.texture_paths = sorted(
            p for p in (templates / "textures").rglob("*") if p.suffix.lower() in TEXTURE_SUFFIXES
        )
        seg_root = root / "segmentation" / "training"
        self.real = segmentation_files(seg_root, "train", holdout_every=config.seg_holdout_every) if split == "train" else []
        self._textures: dict[Path, np.ndarray] = {}
        self.data_root = root
        self.negatives = None
        if split == "train" and config.negative_fraction > 0:
            if negatives is None or not Path(negatives).is_file():
                raise DataUnavailableError(f"negative_fraction > 0 needs the face cache of training.data.negatives, missing {negatives}")
            self.negatives = load_face_cache(negatives)
        self.pseudo = None
        if split == "train" and config.pseudo_fraction > 0:
            if pseudo is None or not Path(pseudo).is_file():
                raise DataUnavailableError(f"pseudo_fraction > 0 needs the labels of training.data.pseudo_masks, missing {pseudo}")
            self.pseudo = load_pseudo_labels(pseudo)

    def __len__(self) -> int:
        # Nominal length (one pass over the faces); indices beyond it are valid too.
        return len(self.utk_files)

    # -- sources

    def _utk(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        bgr = cv2.imread(str(self.utk_root / self.utk_files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataUnavailableError(f"unreadable {self.utk_root / self.utk_files[i]}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.utk_landmarks[i]

    def _texture(self, rng: np.random.Generator) -> np.ndarray:
        path = self.texture_paths[int(rng.integers(len(self.texture_paths)))]
        if path not in self._textures:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            self._textures[path] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return self._textures[path]

    def _background(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        kind = rng.random()
        if kind < 0.2 and self.texture_paths:
            tex = self._texture(rng)
            s = rng.uniform(0.5, 2.5)
            tex = cv2.resize(tex, (max(8, int(tex.shape[1] * s)), max(8, int(tex.shape[0] * s))))
            reps = (h // tex.shape[0] + 1, w // tex.shape[1] + 1, 1)
            bg = np.tile(tex, reps)[:h, :w].astype(np.float32)
        elif kind < 0.4:
            bg = _gradient(h, w, rng)
        elif kind < 0.55:
            bg = _smooth_noise(h, w, rng, int(rng.integers(2, 12)))
        elif kind < 0.8:
            # Zoomed, blurred photo crop: skin, hair and clutter without a recognisable face.
            img, _ = self._utk(int(rng.integers(len(self.utk_files))))
            x0, y0 = rng.integers(0, 150, 2)
            crop = img[y0:y0 + 50, x0:x0 + 50]
            bg = cv2.resize(crop, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
            bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(2, 8))
        else:
            bg = np.full((h, w, 3), _random_colour(rng), np.float32)
        # Clutter: a few flat or textured shapes, like furniture or posters.
        for _ in range(int(rng.integers(0, 5))):
            m = _blob_mask(h, w, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, w / 2), rng.uniform(10, h / 2), rng)
            if rng.random() < 0.5:
                x0, y0 = int(rng.uniform(0, w)), int(rng.uniform(0, h))
                m[:] = False
                m[y0:y0 + int(rng.uniform(10, h)), x0:x0 + int(rng.uniform(10, w))] = True
            bg[m] = _random_colour(rng)
        if rng.random() < 0.5:
            bg = bg + rng.normal(0, rng.uniform(2, 15), bg.shape)
        return np.clip(bg, 0, 255).astype(np.uint8)

    # -- synthetic scenes

    def _face_layers(self, rng: np.random.Generator):
        """A masked/unmasked UTKFace crop: (rgb, face region, worn mask or None, face box)."""
        img, lm = self._utk(int(rng.integers(len(self.utk_files))))
        masked = rng.random() >= self.config.p_unmasked
        box = face_box_from_landmarks(lm, img.shape)
        worn = None
        if masked:
            res = self.synth.apply(img, lm, rng=rng, pulled_down=rng.random() < self.config.p_pulled_down)
            img, worn, box = res.image, res.mask, res.face_box
        elif self.config.p_loose_mask > 0 and rng.random() < self.config.p_loose_mask:
            # Worn on the neck with the mouth and chin free: nothing on the face to fill.
            drop = (lm[8] - lm[27]) * rng.uniform(0.75, 1.0)
            img = self.synth.apply(img, lm + drop.astype(np.float32), rng=rng).image
        face = face_region(lm, box, img.shape[:2])
        if worn is not None:
            face |= worn
        return img, face, worn, box, lm[48:68].mean(axis=0)

    def _synthetic(self, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, list[_Instance]]:
        cfg = self.config
        canvas = self._background(h, w, rng).astype(np.float32)
        taken = np.zeros((h, w), bool)
        instances: list[_Instance] = []
        n_faces = 1 + int(rng.choice(3, p=np.array(cfg.face_counts) / sum(cfg.face_counts)))
        max_face = max(cfg.min_face + 1, cfg.max_face_frac * min(h, w) / (1.0 if n_faces == 1 else 1.6))
        for _ in range(n_faces):
            img, face, worn, box, mouth = self._face_layers(rng)
            bw = float(box[2] - box[0])
            target_w = math.exp(rng.uniform(math.log(cfg.min_face), math.log(max_face)))
            s = target_w / max(bw, 1.0)
            ang = rng.normal(0, 10) if rng.random() < 0.8 else rng.uniform(-35, 35)
            if rng.random() < 0.5:
                img, face = img[:, ::-1].copy(), face[:, ::-1].copy()
                worn = worn[:, ::-1].copy() if worn is not None else None
                iw = img.shape[1]
                box = np.array([iw - box[2], box[1], iw - box[0], box[3]], np.float32)
                mouth = np.array([iw - mouth[0], mouth[1]], np.float32)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            for _attempt in range(8):
                tx, ty = rng.uniform(0, w), rng.uniform(0, h)
                m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(ang), float(s))
                m[:, 2] += np.array([tx, ty]) - np.array([cx, cy])
                fbox = _warp_box(box, m)
                inside = _box_inside_fraction(fbox, w, h)
                if inside < 0.7:
                    continue
                # Paste region: an elliptic head region or, sometimes, the whole square photo.
                alpha_src = _paste_alpha(img.shape[:2], box, rng)
                alpha = cv2.warpAffine(alpha_src, m, (w, h), flags=cv2.INTER_LINEAR)
                if (taken & (alpha > 0.05)).any():
                    continue
                rgb = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                canvas = canvas * (1 - alpha[..., None]) + rgb.astype(np.float32) * alpha[..., None]
                taken |= alpha > 0.05
                face_w = cv2.warpAffine(face.astype(np.float32), m, (w, h)) > 0.5
                worn_w = cv2.warpAffine(worn.astype(np.float32), m, (w, h)) > 0.5 if worn is not None else None
                clipped = np.array([max(fbox[0], 0), max(fbox[1], 0), min(fbox[2], w), min(fbox[3], h)], np.float32)
                instances.append(_Instance(clipped, face_w, worn_w, m[:, :2] @ mouth + m[:, 2]))
                break
        if instances and rng.random() < cfg.p_occluder:
            canvas = self._occlude(canvas, instances, rng)
        if rng.random() < cfg.p_distractor:
            canvas = self._distractor(canvas, taken, rng)
        if cfg.p_loose_mask > 0 and rng.random() < cfg.p_loose_mask:
            canvas = self._loose_mask(canvas, taken, rng)
        if cfg.p_hand > 0 and rng.random() < cfg.p_hand:
            canvas = self._hand(canvas, taken, rng)
        if cfg.p_sheer_limb > 0 and rng.random() < cfg.p_sheer_limb:
            canvas = self._sheer_limb(canvas, taken, rng)
        canvas = self._mouth_objects(canvas, instances, rng)
        return np.clip(canvas, 0, 255).astype(np.uint8), instances

    def _hand(self, canvas: np.ndarray, taken: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A fist or an open hand (``draw_hand``) away from the faces: skin, knuckles and rings
        alone must not make a masked face."""
        h, w = canvas.shape[:2]
        side = int(math.exp(rng.uniform(math.log(24), math.log(max(25.0, 0.6 * min(h, w))))))
        for _ in range(6):
            x, y = int(rng.integers(0, max(1, w - side))), int(rng.integers(0, max(1, h - side)))
            region = np.s_[y:y + side, x:x + side]
            if canvas[region].shape[:2] != (side, side) or taken[region].any():
                continue
            image, matte, _ = draw_hand(np.clip(canvas[region], 0, 255).astype(np.uint8), rng)
            # Twice the matte: its soft rim is already mixed with the background in the image.
            a = np.minimum(1.0, 2.0 * matte)[..., None]
            canvas[region] = canvas[region] * (1 - a) + image.astype(np.float32) * a
            break
        return canvas

    def _sheer_limb(self, canvas: np.ndarray, taken: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A bare arm (a long band) or a torso (a broad blob) in see-through mesh away from the faces:
        the mesh over skin, without a face, must not make a masked face."""
        h, w = canvas.shape[:2]
        for _ in range(6):
            limb = np.zeros((h, w), np.uint8)
            if rng.random() < 0.6:
                width = rng.uniform(0.04, 0.12) * min(h, w)
                start = rng.uniform((0, 0), (w, h))
                turn = rng.uniform(0, np.pi)
                end = start + rng.uniform(2, 6) * width * np.array([np.cos(turn), np.sin(turn)])
                cv2.line(limb, tuple(map(int, start)), tuple(map(int, end)), 1, max(2, int(width)))
            else:
                r = rng.uniform(0.1, 0.3) * min(h, w)
                limb = _blob_mask(h, w, rng.uniform(0, w), rng.uniform(0, h), r * rng.uniform(0.6, 1.0), r, rng)
                limb = limb.astype(np.uint8)
            footprint = cv2.GaussianBlur(limb.astype(np.float32), (0, 0), 1.0)
            if (taken & (footprint > 0.05)).any() or footprint.max() <= 0:
                continue
            skin = skin_colour(rng) * (_smooth_noise(h, w, rng, 3)[..., :1] / 255.0 * 0.4 + 0.8)
            canvas = canvas * (1 - footprint[..., None]) + skin * footprint[..., None]
            ys, xs = np.nonzero(limb)
            band = float(min(np.ptp(xs), np.ptp(ys)) + 1)
            patch = np.dstack([np.broadcast_to(_random_colour(rng) / 255.0, (h, w, 3)) * footprint[..., None],
                               footprint]).astype(np.float32)
            rgb, alpha = sheer_layer(patch, period=max(2.0, band / (4.0 + 20.0 * rng.random())), u=rng.random(4))
            canvas = canvas * (1 - alpha[..., None]) + rgb * 255.0
            break
        return canvas

    def _occlude(self, canvas: np.ndarray, instances: list[_Instance], rng: np.random.Generator) -> np.ndarray:
        """Skin-coloured blob (a hand, say) over part of a face's lower half."""
        h, w = canvas.shape[:2]
        inst = instances[int(rng.integers(len(instances)))]
        x0, y0, x1, y1 = inst.face_box
        fw, fh = x1 - x0, y1 - y0
        cx = rng.uniform(x0, x1)
        cy = rng.uniform(y0 + 0.4 * fh, y1 + 0.2 * fh)
        blob = _blob_mask(h, w, cx, cy, rng.uniform(0.15, 0.35) * fw, rng.uniform(0.15, 0.35) * fh, rng)
        colour = skin_colour(rng)
        shade = _smooth_noise(h, w, rng, 4)[..., :1] / 255.0 * 0.4 + 0.8
        soft = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), 1.0)[..., None]
        canvas = canvas * (1 - soft) + colour * shade * soft
        for other in instances:
            # Face regions are amodal in their box but the masks show only what is visible.
            other.face &= ~blob
            if other.worn is not None:
                other.worn &= ~blob
        return canvas

    def _distractor(self, canvas: np.ndarray, taken: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Mask-coloured patch away from faces (hard negative for face_mask)."""
        h, w = canvas.shape[:2]
        for _ in range(6):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(8, min(h, w) / 4)
            blob = _blob_mask(h, w, cx, cy, r, r * rng.uniform(0.5, 1.0), rng)
            if (blob & taken).any():
                continue
            colour = np.array(
                [(235, 240, 245), (150, 190, 230), (40, 40, 45), (120, 200, 190)][int(rng.integers(4))], np.float32
            ) + rng.normal(0, 10, 3)
            canvas[blob] = colour
            break
        return canvas

    def _loose_mask(self, canvas: np.ndarray, taken: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A mask that nobody wears (held in a hand, lying on a table) away from the faces: its
        fabric and shape alone must not make a face_mask."""
        h, w = canvas.shape[:2]
        img, lm = self._utk(int(rng.integers(len(self.utk_files))))
        res = self.synth.apply(img, lm, rng=rng)
        box = mask_box(res.mask)
        if box is None:
            return canvas
        x0, y0, x1, y1 = box.astype(int)
        alpha = cv2.GaussianBlur(res.mask.astype(np.float32), (0, 0), 0.8)[y0:y1, x0:x1]
        patch = res.image[y0:y1, x0:x1].astype(np.float32)
        side = rng.uniform(0.1, 0.35) * min(h, w)
        m = cv2.getRotationMatrix2D(((x1 - x0) / 2, (y1 - y0) / 2), float(rng.uniform(-180, 180)), side / max(x1 - x0, 1))
        for _ in range(6):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            mm = m.copy()
            mm[:, 2] += (cx - (x1 - x0) / 2, cy - (y1 - y0) / 2)
            a = cv2.warpAffine(alpha, mm, (w, h))[..., None]
            if (taken & (a[..., 0] > 0.05)).any():
                continue
            rgb = cv2.warpAffine(patch, mm, (w, h))
            canvas = canvas * (1 - a) + rgb * a
            if rng.random() < 0.5:  # the hand holding it
                hand = _blob_mask(h, w, cx + rng.normal(0, side / 3), cy + rng.normal(0, side / 3),
                                  side * 0.3, side * 0.2, rng) & ~taken
                canvas[hand] = skin_colour(rng)
            break
        return canvas

    def _mouth_objects(self, canvas: np.ndarray, instances: list[_Instance], rng: np.random.Generator) -> np.ndarray:
        """Hands, fingers, microphones, phones, cups and scarves in front of or near the mouth of
        unmasked faces: the lower face is then covered, but by something that is not a mask."""
        if self.config.p_mouth_object <= 0:
            return canvas
        h, w = canvas.shape[:2]
        for inst in instances:
            if inst.worn is not None or inst.mouth is None or rng.random() >= self.config.p_mouth_object:
                continue
            fw = float(inst.face_box[2] - inst.face_box[0])
            mx, my = inst.mouth + rng.normal(0, 0.08 * fw, 2)
            cover = np.zeros((h, w), np.uint8)
            kind = int(rng.integers(6))
            colour = skin_colour(rng) if kind < 2 else _random_colour(rng) * rng.uniform(0.2, 1.0)
            if kind == 0:  # a hand over or beside the mouth
                cover |= _blob_mask(h, w, mx, my + 0.1 * fw, 0.3 * fw, 0.22 * fw, rng)
            elif kind == 1:  # fingers across the lips or the chin
                ang = rng.uniform(0, math.pi)
                for k in range(int(rng.integers(1, 4))):
                    off = (k - 1) * 0.1 * fw
                    c = (mx + off * math.sin(ang), my + off * math.cos(ang))
                    cv2.ellipse(cover, (int(c[0]), int(c[1])), (int(0.25 * fw), max(1, int(0.045 * fw))),
                                math.degrees(ang), 0, 360, 1, -1)
            elif kind == 2:  # a hand-held microphone: a grille ball on a handle
                r = rng.uniform(0.1, 0.2) * fw
                bx, by = mx + rng.uniform(-0.3, 0.3) * fw, my + rng.uniform(0.0, 0.3) * fw
                cv2.line(cover, (int(bx), int(by)), (int(bx + rng.uniform(-0.3, 0.3) * fw), int(by + fw)), 1,
                         max(1, int(0.6 * r)))
                cv2.circle(cover, (int(bx), int(by)), max(1, int(r)), 1, -1)
            elif kind == 3:  # a phone held to the cheek or the mouth
                rect = ((float(mx + rng.uniform(-0.4, 0.4) * fw), float(my)), (0.3 * fw, 0.55 * fw), float(rng.uniform(-40, 40)))
                cv2.fillPoly(cover, [np.round(cv2.boxPoints(rect)).astype(np.int32)], 1)
            elif kind == 4:  # a cup at the lips
                top = int(my + rng.uniform(-0.05, 0.1) * fw)
                cv2.rectangle(cover, (int(mx - 0.18 * fw), top), (int(mx + 0.18 * fw), int(top + 0.5 * fw)), 1, -1)
            else:  # a scarf up to the chin
                top = inst.mouth[1] + rng.uniform(0.15, 0.35) * fw
                pts = np.array([[mx - 0.7 * fw, top + rng.normal(0, 0.05 * fw)], [mx + 0.7 * fw, top + rng.normal(0, 0.05 * fw)],
                                [mx + 0.8 * fw, top + 0.6 * fw], [mx - 0.8 * fw, top + 0.6 * fw]])
                cv2.fillPoly(cover, [np.round(pts).astype(np.int32)], 1)
            blob = cover.astype(bool)
            if not blob.any():
                continue
            texture = _smooth_noise(h, w, rng, int(rng.integers(3, 20)))[..., :1] / 255.0 * 0.5 + 0.75
            if kind == 5 and self.texture_paths and rng.random() < 0.5:
                tex = self._texture(rng).astype(np.float32)
                texture = cv2.resize(tex, (w, h)) / max(float(tex.mean()), 1.0)
            soft = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), 0.8)[..., None]
            canvas = canvas * (1 - soft) + np.clip(colour * texture, 0, 255) * soft
            for other in instances:
                other.face &= ~blob
                if other.worn is not None:
                    other.worn &= ~blob
        return canvas

    # -- real scenes

    def _placement(self, sh: int, sw: int, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """Where a photo (sh x sw) goes in an h x w frame: (2x3 map, background canvas or None
        when the photo fills the frame, horizontal flip first)."""
        ang = rng.normal(0, 7)
        if rng.random() < 0.5:
            # The photo fills the frame: random crop with zoom 1..1.4.
            s = max(h / sh, w / sw) * rng.uniform(1.0, 1.4)
            ox, oy = rng.uniform(min(0.0, w - sw * s), 0.0), rng.uniform(min(0.0, h - sh * s), 0.0)
            canvas = None
        else:
            # The photo shrunk onto a synthetic background: smaller faces.
            s = min(h / sh, w / sw) * rng.uniform(0.3, 0.9)
            ox, oy = rng.uniform(0, w - sw * s), rng.uniform(0, h - sh * s)
            canvas = self._background(h, w, rng)
        m = cv2.getRotationMatrix2D((sw / 2, sh / 2), float(ang), float(s))
        c = m @ np.array([sw / 2, sh / 2, 1.0])
        m[:, 2] += np.array([ox + sw * s / 2, oy + sh * s / 2]) - c
        return m, canvas, bool(rng.random() < 0.5)

    @staticmethod
    def _compose(img: np.ndarray, m: np.ndarray, canvas: np.ndarray | None, h: int, w: int) -> np.ndarray:
        rgb = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if canvas is not None:
            cover = cv2.warpAffine(np.ones(img.shape[:2], np.float32), m, (w, h)) > 0.5
            canvas[cover] = rgb[cover]
            rgb = canvas
        return rgb

    def _negative(self, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, list[_Instance]]:
        """A real photo of people without masks; every face dlib found in it is labelled as a face."""
        cache = self.negatives
        i = int(rng.integers(len(cache.files)))
        img = cv2.cvtColor(cv2.imread(str(self.data_root / cache.files[i]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        sh, sw = img.shape[:2]
        m, canvas, flip = self._placement(sh, sw, h, w, rng)
        faces = cache.faces_of(i)
        if len(faces) and rng.random() < 0.4:
            # A close-up, as web photos often are: one face fills the frame, chin or brow cut off,
            # the mouth near the bottom edge where a mask would be.
            box = face_box_from_landmarks(faces[int(rng.integers(len(faces)))], (sh, sw))
            side = max(float(box[2] - box[0]), float(box[3] - box[1]), 1.0)
            s = rng.uniform(0.6, 1.1) * min(h, w) / side
            ang = rng.normal(0, 7)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(ang), float(s))
            m[:, 2] += np.array([w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(-0.1, 0.2) * h]) - (cx, cy)
            canvas = None
        if flip:
            img = img[:, ::-1].copy()
            faces = faces.copy()
            faces[..., 0] = sw - 1 - faces[..., 0]
        rgb = self._compose(img, m, canvas, h, w)
        instances = []
        for lm in faces:
            lm_w = (lm @ m[:, :2].T + m[:, 2]).astype(np.float32)
            full = face_box_from_landmarks(lm_w, (10**6, 10**6))
            box = face_box_from_landmarks(lm_w, (h, w))
            # Faces cut by the frame edge stay labelled: unlabelled, they would teach "no face".
            if _box_inside_fraction(full, w, h) < 0.3 or box[2] - box[0] < 4 or box[3] - box[1] < 4:
                continue
            instances.append(_Instance(box, face_region(lm_w, full, (h, w)), None, lm_w[48:68].mean(axis=0)))
        rgb = self._mouth_objects(rgb.astype(np.float32), instances, rng)
        return np.clip(rgb, 0, 255).astype(np.uint8), instances

    def _real(self, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, list[_Instance]]:
        img_path, gt_path = self.real[int(rng.integers(len(self.real)))]
        img = cv2.cvtColor(cv2.imread(str(img_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(gt_path), cv2.IMREAD_COLOR)
        inst = segmentation_instances(gt)
        sh, sw = img.shape[:2]
        m, canvas, flip = self._placement(sh, sw, h, w, rng)
        if flip:
            img, gt = img[:, ::-1].copy(), gt[:, ::-1].copy()
            inst = [(f[:, ::-1].copy(), g[:, ::-1].copy()) for f, g in inst]
        rgb = self._compose(img, m, canvas, h, w)
        instances = []
        for face, worn in inst:
            fw = cv2.warpAffine(face.astype(np.float32), m, (w, h)) > 0.5
            ww = cv2.warpAffine(worn.astype(np.float32), m, (w, h)) > 0.5
            box = mask_box(fw)
            if box is None:
                continue
            instances.append(_Instance(box, fw, ww if ww.any() else None))
        return rgb, instances

    def _pseudo(self, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, list[_Instance]]:
        """A real masked photo with the shipped models' confident labels (face box, worn mask)."""
        labels = self.pseudo
        i = int(rng.integers(len(labels.files)))
        img = cv2.cvtColor(cv2.imread(str(self.data_root / labels.files[i]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        boxes, worn = labels.faces_of(i)
        sh, sw = img.shape[:2]
        m, canvas, flip = self._placement(sh, sw, h, w, rng)
        if flip:
            img = img[:, ::-1].copy()
            boxes = np.stack([sw - boxes[:, 2], boxes[:, 1], sw - boxes[:, 0], boxes[:, 3]], axis=1)
            worn = [wm[:, ::-1].copy() for wm in worn]
        rgb = self._compose(img, m, canvas, h, w)
        instances = []
        for box, wm in zip(boxes, worn):
            face = np.zeros((sh, sw), np.uint8)
            centre = (float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2)
            cv2.ellipse(face, (centre, (float(box[2] - box[0]), float(box[3] - box[1])), 0.0), 1, -1)
            fw = cv2.warpAffine(face.astype(np.float32), m, (w, h)) > 0.5
            ww = (cv2.warpAffine(wm.astype(np.float32), m, (w, h)) > 0.5) & fw
            fbox = mask_box(fw)
            if fbox is None or not ww.any():
                continue
            instances.append(_Instance(fbox, fw, ww))
        return rgb, instances

    # -- assembly

    def scene(self, index: int) -> tuple[np.ndarray, list[_Instance], tuple[int, int]]:
        """Raw scene ``index``: (letterboxed HxWx3 uint8 RGB, instances, content (h, w))."""
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        H, W = self.config.input_size
        aspect = float(rng.choice([4 / 3, 16 / 9, 1.0, 3 / 4, 9 / 16], p=[0.35, 0.25, 0.2, 0.1, 0.1]))
        scale = min(H / 1.0, W / aspect)
        h, w = max(32, round(scale)), max(32, round(scale * aspect))
        h, w = min(h, H), min(w, W)
        # No draw without real sources, so validation scenes stay what they were.
        u = rng.random() if (self.real or self.negatives is not None) else 1.0
        negative = self.config.negative_fraction if self.negatives is not None else 0.0
        pseudo = self.config.pseudo_fraction if self.pseudo is not None else 0.0
        if u < negative:
            content, instances = self._negative(h, w, rng)
        elif self.real and u < negative + self.config.real_fraction:
            content, instances = self._real(h, w, rng)
        elif u < negative + self.config.real_fraction + pseudo:
            content, instances = self._pseudo(h, w, rng)
        else:
            content, instances = self._synthetic(h, w, rng)
        content = photometric(content, rng)
        image = np.zeros((H, W, 3), np.uint8)
        image[:h, :w] = content
        full = []
        for inst in instances:
            face = np.zeros((H, W), bool)
            face[:h, :w] = inst.face
            worn = None
            if inst.worn is not None:
                worn = np.zeros((H, W), bool)
                worn[:h, :w] = inst.worn
            full.append(_Instance(inst.face_box, face, worn))
        return image, full, (h, w)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, instances, _ = self.scene(index)
        boxes, labels, masks = [], [], []
        for inst in instances:
            x0, y0, x1, y1 = inst.face_box
            if x1 - x0 < 4 or y1 - y0 < 4 or inst.face.sum() < 16:
                continue
            boxes.append(inst.face_box)
            labels.append(FACE)
            masks.append(inst.face)
            if inst.worn is not None and inst.worn.sum() >= 12:
                wb = mask_box(inst.worn)
                if wb[2] - wb[0] >= 3 and wb[3] - wb[1] >= 3:
                    boxes.append(wb)
                    labels.append(FACE_MASK)
                    masks.append(inst.worn)
        H, W = self.config.input_size
        target = {
            "boxes": torch.from_numpy(np.array(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.array(masks, np.uint8).reshape(-1, H, W)),
        }
        return torch.from_numpy(image).permute(2, 0, 1).float().div(255.0), target


def collate(batch):
    """Batch of (image, target) pairs to (list of images, list of targets) for Mask R-CNN."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _warp_box(box: np.ndarray, m: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64) @ m.T
    # A rotated box's axis-aligned hull overstates a face; shrink it back part of the way.
    hull = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2, 1.0]) @ m.T
    bw, bh = hull[2] - hull[0], hull[3] - hull[1]
    s = math.hypot(m[0, 0], m[0, 1])
    fw, fh = (x1 - x0) * s, (y1 - y0) * s
    ww, hh = (bw + fw) / 2, (bh + fh) / 2
    return np.array([c[0] - ww / 2, c[1] - hh / 2, c[0] + ww / 2, c[1] + hh / 2], np.float32)


def _box_inside_fraction(box: np.ndarray, w: int, h: int) -> float:
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-6)
    iw = max(0.0, min(box[2], w) - max(box[0], 0))
    ih = max(0.0, min(box[3], h) - max(box[1], 0))
    return float(iw * ih / area)


def _paste_alpha(shape: tuple[int, int], box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Alpha (h, w) float32 for pasting a face crop: a feathered head ellipse, or the whole crop."""
    h, w = shape
    if rng.random() < 0.25:
        a = np.zeros((h, w), np.float32)
        a[2:-2, 2:-2] = 1.0
        return cv2.GaussianBlur(a, (0, 0), 1.0)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bw, bh = box[2] - box[0], box[3] - box[1]
    a = np.zeros((h, w), np.float32)
    axes = (int(bw * rng.uniform(0.65, 0.9)), int(bh * rng.uniform(0.7, 0.95)))
    cv2.ellipse(a, (int(cx), int(cy - 0.05 * bh)), axes, 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(a, (0, 0), max(1.0, 0.06 * bw))
