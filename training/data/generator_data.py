"""Training data for the face-completion generator and the face-parsing net.

UTKFace faces get a synthetic mask from ``training.data.synth.MaskSynthesizer``; the square crop
around the face comes from ``engines.models.generator.square_crop_box`` so training sees the
same framing as the streaming pipeline. The held-out split is fixed (every k-th file of the
sorted file list) and never trained on.

Tensors: images (3, S, S) float32 RGB in [0, 1]; masks (1, S, S) float32 {0, 1}, 1 = hole;
parsing labels (S, S) int64 class ids (see PARSING_CLASSES).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from engines.models.generator import GeneratorConfig, square_crop_box
from engines.models.parsing import PARSING_CLASSES
from stream.geometry import CropWindow
from training.data.landmarks import load_landmark_cache
from training.data.negatives import load_face_cache
from training.data.synth import MaskSynthesizer, face_box_from_landmarks

logger = logging.getLogger(__name__)

DEFAULT_VAL_COUNT = 500


class FaceDataError(RuntimeError):
    """Face images or their landmark cache are missing or inconsistent."""


@dataclass(frozen=True)
class FaceRecord:
    """One face image: path, and (68, 2) float32 xy pixel landmarks in that image."""

    path: Path
    landmarks: np.ndarray


def load_face_records(faces_root: str | Path, landmark_cache: str | Path, *, only_detected: bool = True) -> list[FaceRecord]:
    """Records for every cached face, sorted by file name. ``only_detected`` drops faces whose
    landmarks came from the fallback box (often wrong, which would mislabel masks and parts)."""
    faces_root, landmark_cache = Path(faces_root), Path(landmark_cache)
    if not faces_root.is_dir():
        raise FaceDataError(f"no face folder {faces_root}")
    if not landmark_cache.is_file():
        raise FaceDataError(f"no landmark cache {landmark_cache} (build it with python -m training.data.landmarks)")
    cache = load_landmark_cache(landmark_cache)
    records = [
        FaceRecord(path=faces_root / name, landmarks=cache.landmarks[i])
        for i, name in enumerate(cache.files)
        if cache.detected[i] or not only_detected
    ]
    records.sort(key=lambda r: r.path.name)
    if not records:
        raise FaceDataError(f"landmark cache {landmark_cache} has no usable faces")
    return records


def split_records(records: list[FaceRecord], *, val_count: int = DEFAULT_VAL_COUNT) -> tuple[list[FaceRecord], list[FaceRecord]]:
    """(train, val): val is every k-th record of the name-sorted list (k = len // val_count),
    spread over the whole list because UTKFace names start with the age."""
    if len(records) < 2 * val_count:
        raise FaceDataError(f"need at least {2 * val_count} faces for a {val_count}-image split, have {len(records)}")
    stride = len(records) // val_count
    val_idx = set(range(0, stride * val_count, stride))
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def load_pair_records(data_root: str | Path, face_cache: str | Path) -> list[tuple[FaceRecord, ...]]:
    """Same-person photo groups from the LFW training people of ``face_cache`` (the negatives'
    cache, ``python -m training.data.negatives``: training split only, so no held-out person).
    Each photo gives the face nearest its centre (LFW centres the named person); people with a
    single usable photo are left out."""
    data_root = Path(data_root)
    cache = load_face_cache(face_cache)
    people: dict[str, list[FaceRecord]] = {}
    for i, name in enumerate(cache.files):
        parts = Path(name).parts
        if parts[:2] != ("faces", "lfw"):
            continue
        faces = cache.faces_of(i)
        if not len(faces):
            continue
        best = faces[int(np.argmin(np.linalg.norm(faces.mean(axis=1) - _LFW_CENTRE, axis=1)))]
        people.setdefault(parts[2], []).append(FaceRecord(path=data_root / name, landmarks=best))
    return [tuple(group) for _, group in sorted(people.items()) if len(group) >= 2]


# LFW images are 250 x 250 with the named person's face centred.
_LFW_CENTRE = np.array([125.0, 125.0])


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FaceDataError(f"unreadable image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def warp_crop(image: np.ndarray, affine: np.ndarray, size: int, *, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Cut the crop out, replicating the border where the crop leaves the image."""
    return cv2.warpAffine(image, affine, (size, size), flags=interpolation, borderMode=cv2.BORDER_REPLICATE)


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a HxW bool mask by ``pixels`` with a disc; returns HxW bool."""
    if pixels <= 0:
        return mask.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def build_synthesizer(templates_root: str | Path, *, max_template_side: int = 256) -> MaskSynthesizer:
    """The generator's synthesizer: textures when present, templates pre-shrunk for speed
    (21 ms per sample at full template size, 4-5x less shrunk; the warp still downsamples)."""
    root = Path(templates_root)
    textures = root / "textures"
    return MaskSynthesizer(templates_root=root, textures_root=textures if textures.is_dir() else None,
                           max_template_side=max_template_side)


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


@dataclass(frozen=True)
class ReferenceSampling:
    """Which reference a training sample gets, as probabilities (the rest: no reference).

    own: the same face, re-cut with the crop window shifted by up to ``shift`` of its side,
        scaled by up to ``scale``, turned by up to ``turn`` degrees, and with its colours and
        sharpness changed, so the generator learns to copy a person's own mouth and tolerate
        what the pipeline's alignment leaves (a remembered or given photo is never pixel-exact).
    other: another training face, framed by its own landmarks (an exemplar: lips and skin
        texture to borrow, but a different person, so it must not be pasted as it is).
    pair: the same person in another photo (another day, light, expression; from the dataset's
        ``pairs``): the masked face is then that person's photo, and the reference is real, not
        re-cut, so the generator learns how far a given or remembered photo can be trusted.
    """

    own: float = 0.5
    other: float = 0.25
    pair: float = 0.0
    shift: float = 0.04
    scale: float = 0.05
    turn: float = 5.0

    def __post_init__(self) -> None:
        if min(self.own, self.other, self.pair) < 0 or self.own + self.other + self.pair > 1:
            raise ValueError("reference probabilities must be >= 0 and sum to <= 1, got "
                             f"{self.own}, {self.other}, {self.pair}")

    def draw(self, rng: np.random.Generator) -> str:
        """One training sample's mode: "pair", "own", "other" or "none"."""
        pick = rng.random()
        for mode, share in (("pair", self.pair), ("own", self.own), ("other", self.other)):
            if pick < share:
                return mode
            pick -= share
        return "none"


def _jittered_affine(affine: np.ndarray, size: int, rng: np.random.Generator, sampling: ReferenceSampling) -> np.ndarray:
    """``affine`` (image -> crop) followed by a random similarity about the crop's centre."""
    turn = rng.uniform(-sampling.turn, sampling.turn)
    scale = 1.0 + rng.uniform(-sampling.scale, sampling.scale)
    jitter = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), turn, scale)
    jitter[:, 2] += rng.uniform(-sampling.shift, sampling.shift, 2) * size
    return np.hstack([jitter[:, :2] @ affine[:, :2], (jitter[:, :2] @ affine[:, 2] + jitter[:, 2])[:, None]])


def _photo_jitter(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another photo's look: per-channel gain, brightness, and sometimes softer focus."""
    out = crop.astype(np.float32) * rng.uniform(0.85, 1.15, 3)[None, None] + rng.uniform(-15, 15)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.2))
    return np.clip(out, 0, 255).astype(np.uint8)


class MaskedFaceDataset(Dataset):
    """Masked-face samples for the generator.

    Item: dict with ``image`` (3,S,S) the masked crop (synthetic mask drawn on), ``mask``
    (1,S,S) the dilated synthetic mask, ``target`` (3,S,S) the same crop without the mask.
    ``train`` draws a fresh mask, template and flip every time; otherwise sample i always gets
    the same mask (seeded by i), so validation numbers are comparable between runs.
    With ``references`` the item also has ``reference`` (3,S,S) and ``reference_mask`` (1,S,S)
    (all ones, or all zeros for none), drawn by ``ReferenceSampling``; held-out sample i gets
    mode i % 3 (own, other, none). ``pairs``: groups of records of one person each (two photos
    or more), drawn from in training with probability ``references.pair`` (held-out samples never use them).
    """

    def __init__(
        self,
        records: list[FaceRecord],
        *,
        synthesizer: MaskSynthesizer,
        config: GeneratorConfig,
        train: bool,
        seed: int = 0,
        p_pulled_down: float = 0.15,
        references: ReferenceSampling | None = None,
        pairs: list[tuple[FaceRecord, ...]] = (),
    ) -> None:
        if any(len(group) < 2 for group in pairs):
            raise ValueError("every pair group needs two photos or more")
        if train and references is not None and references.pair > 0 and not pairs:
            raise ValueError("reference sampling draws pairs, but none were given")
        self.records = records
        self.pairs = list(pairs)
        self.synthesizer = synthesizer
        self.config = config
        self.train = train
        self.seed = seed
        self.p_pulled_down = p_pulled_down
        self.references = references
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Numpy sample: image/target HxWx3 uint8 RGB crops, mask HxW bool, plus the crop box."""
        mode = None
        if self.references is not None:
            mode = self.references.draw(rng) if self.train else ("own", "other", "none")[index % 3]
        record, reference_record = self.records[index], None
        if mode == "pair":
            group = self.pairs[int(rng.integers(len(self.pairs)))]
            a, b = rng.choice(len(group), 2, replace=False)
            record, reference_record = group[a], group[b]
        face = read_rgb(record.path)
        pulled_down = bool(rng.random() < self.p_pulled_down)
        synth = self.synthesizer.apply(face, record.landmarks, rng=rng, pulled_down=pulled_down)
        size = self.config.size
        # The pipeline's own crop (stream.geometry.CropWindow, as FaceInpainter.prepare cuts it),
        # so the generator trains on exactly the framing and resampling it is served.
        window = CropWindow.for_face(synth.face_box, self.config.crop_scale)
        box = square_crop_box(synth.face_box, crop_scale=self.config.crop_scale)
        image = window.cut(synth.image, size)
        target = window.cut(face, size)
        mask = window.cut(synth.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        mask = dilate_mask(mask, self.config.mask_dilation)
        sample = {"image": image, "target": target, "mask": mask, "box": box}
        if mode is not None:
            sample["reference"] = self._reference(mode, index, face, window, rng, reference_record)
        if self.train and rng.random() < 0.5:
            sample = {k: v[:, ::-1] if k != "box" and v is not None else v for k, v in sample.items()}
        return sample

    def _reference(self, mode: str, index: int, face: np.ndarray, window: CropWindow, rng: np.random.Generator,
                   pair: FaceRecord | None) -> np.ndarray | None:
        """HxWx3 uint8 RGB reference crop, or None (no reference)."""
        sampling, size = self.references, self.config.size
        if mode == "pair":
            return self._framed(pair, size)
        if mode == "own":
            return _photo_jitter(warp_crop(face, _jittered_affine(window.to_crop(size), size, rng, sampling), size), rng)
        if mode == "other":
            other = self.records[(index + 1 + int(rng.integers(len(self.records) - 1))) % len(self.records)]
            return _photo_jitter(self._framed(other, size), rng)
        return None

    def _framed(self, record: FaceRecord, size: int) -> np.ndarray:
        """The record's face cut by its own landmarks' crop window, as the pipeline frames a reference."""
        image = read_rgb(record.path)
        window = CropWindow.for_face(face_box_from_landmarks(record.landmarks, image.shape), self.config.crop_scale)
        return window.cut(image, size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng if self.train else np.random.default_rng((self.seed, index))
        s = self.sample(index, rng)
        item = {
            "image": _to_chw(s["image"]),
            "target": _to_chw(s["target"]),
            "mask": torch.from_numpy(np.ascontiguousarray(s["mask"]))[None].float(),
        }
        if self.references is not None:
            size = self.config.size
            reference = s["reference"]
            item["reference"] = torch.zeros(3, size, size) if reference is None else _to_chw(reference)
            item["reference_mask"] = torch.full((1, size, size), float(reference is not None))
        return item


# Parsing labels from dlib's 68 landmarks (iBUG layout). "Left"/"right" are image sides.
_CLS = {name: i for i, name in enumerate(PARSING_CLASSES)}
_FLIP_CLASSES = np.arange(len(PARSING_CLASSES))
for _a, _b in (("brow_left", "brow_right"), ("eye_left", "eye_right")):
    _FLIP_CLASSES[_CLS[_a]], _FLIP_CLASSES[_CLS[_b]] = _CLS[_b], _CLS[_a]


def _poly(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    # 4 fractional bits keep sub-pixel landmark positions.
    cv2.fillPoly(canvas, [np.round(points * 16).astype(np.int32)], value, lineType=cv2.LINE_8, shift=4)


def parsing_labels(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Rasterise a (size, size) uint8 label map from (68, 2) landmarks in crop pixels.

    Skin is the jaw line closed over a forehead made by raising the brows (dlib has no
    forehead points); brows are bands below their landmark line (which runs along the brow's
    upper edge); nose is the hull of the bridge and nostril points widened to the alae.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    out = np.zeros((size, size), np.uint8)
    brows = lm[17:27]
    face_h = lm[8, 1] - brows[:, 1].min()
    forehead = brows[::-1] - np.array([0.0, 0.3 * face_h])
    _poly(out, np.concatenate([lm[0:17], forehead]), _CLS["skin"])
    eye_to_brow = np.mean(lm[36:48, 1]) - np.mean(brows[:, 1])
    thick = np.array([0.0, max(0.3 * eye_to_brow, 1.0)])
    _poly(out, np.concatenate([lm[17:22], lm[21:16:-1] + thick]), _CLS["brow_left"])
    _poly(out, np.concatenate([lm[22:27], lm[26:21:-1] + thick]), _CLS["brow_right"])
    nose = np.concatenate([lm[27:36], lm[[31, 35]] + (lm[[31, 35]] - lm[33]) * 0.35])
    _poly(out, cv2.convexHull(nose.astype(np.float32)).reshape(-1, 2).astype(np.float64), _CLS["nose"])
    _poly(out, lm[36:42], _CLS["eye_left"])
    _poly(out, lm[42:48], _CLS["eye_right"])
    _poly(out, np.concatenate([lm[48:55], lm[64:59:-1]]), _CLS["upper_lip"])
    _poly(out, np.concatenate([lm[54:60], lm[48:49], lm[60:61], lm[67:63:-1]]), _CLS["lower_lip"])
    _poly(out, lm[60:68], _CLS["inner_mouth"])
    return out


class ParsingDataset(Dataset):
    """Face crops with landmark-derived part labels, framed like the generator's crops.

    Item: (image (3,S,S) float32 RGB [0,1], labels (S,S) int64). ``train`` adds random flips
    (swapping left/right classes), small scale/shift jitter and colour jitter. With a
    ``synthesizer``, a share ``masked`` of the faces wear a drawn mask (drawn the same way for a
    record every epoch when not ``train``); the labels stay the face's own parts, under the mask
    too, so the net learns where the eyes are above a worn mask.
    """

    def __init__(self, records: list[FaceRecord], *, config: GeneratorConfig, train: bool, seed: int = 0,
                 synthesizer: MaskSynthesizer | None = None, masked: float = 0.0) -> None:
        if not 0.0 <= masked <= 1.0 or (masked > 0 and synthesizer is None):
            raise ValueError(f"masked must be in [0, 1] and needs a synthesizer (got {masked})")
        self.records = records
        self.config = config
        self.train = train
        self.synthesizer = synthesizer
        self.masked = masked
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[index]
        face = read_rgb(record.path)
        if self.masked > 0:
            rng = self._rng if self.train else np.random.default_rng([self.seed, index])
            if rng.random() < self.masked:
                face = self.synthesizer.apply(face, record.landmarks, rng=rng, pulled_down=False).image
        size = self.config.size
        box = square_crop_box(face_box_from_landmarks(record.landmarks, face.shape), crop_scale=self.config.crop_scale)
        if self.train:
            side = box[2] - box[0]
            jitter = self._rng.uniform(-0.05, 0.05, 3) * side
            box = box + np.array([jitter[0] - jitter[2], jitter[1] - jitter[2], jitter[0] + jitter[2], jitter[1] + jitter[2]], np.float32)
        window = CropWindow(float(box[0]), float(box[1]), float(box[2] - box[0]))
        image = window.cut(face, size)
        affine = window.to_crop(size)
        lm = record.landmarks.astype(np.float64) @ affine[:, :2].T + affine[:, 2]
        labels = parsing_labels(lm, size)
        if self.train:
            if self._rng.random() < 0.5:
                image, labels = image[:, ::-1], _FLIP_CLASSES[labels[:, ::-1]]
            gain = self._rng.uniform(0.75, 1.25, 3)
            image = np.clip(image.astype(np.float32) * gain[None, None], 0, 255).astype(np.uint8)
        return _to_chw(image), torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))
