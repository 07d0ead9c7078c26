"""References: what a face looks like without its mask, so the fill carries real detail.

A reference is an unmasked face cut out as the same square crop window the generator uses
(``CropWindow.for_face`` of its whole-face box), at ``REFERENCE_SIDE`` pixels. Because every crop
is normalised by its face box the same way, a reference lines up with a masked face's crop up to
the differences of pose and expression.

Where a reference comes from, best first:

* the person, seen without a mask earlier in the same video (``IdentityMemory``: each track keeps
  its sharpest, largest unmasked view);
* ``--reference PATH`` (a photo or a folder of photos; with several people, each track takes the
  one whose upper face matches its own best);
* an exemplar: a face from the bank that ships with the weights (training faces only), picked once
  per track by the visible upper face and skin tone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from engines.runtime import Engine
from stream.geometry import CropWindow
from stream.source import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

REFERENCE_SIDE = 192
# A person's own reference is also kept at its crop window's side, up to this many pixels, for the
# detail it lends at frame resolution: a 192 px crop lends an upscaled band to a larger face.
DETAIL_SIDE_MAX = 384
EXEMPLARS = Path(__file__).resolve().parent.parent / "engines" / "weights" / "exemplars_192.npz"
# Exemplars short-listed by the upper face before the drawn lower face picks one (References).
EXEMPLAR_SHORTLIST = 1
# Upper face (brows to nose bridge) of a crop window at crop_scale 1.2, as shares of its side:
# the part of a masked face that is still visible, so the part references are matched on.
_UPPER = (0.18, 0.50, 0.15, 0.85)  # y0, y1, x0, x1
# Skin between the eyes and above the mask (forehead to nose bridge, centre), free of hair and
# background, for the skin tone.
_SKIN = (0.22, 0.48, 0.38, 0.62)


class ReferenceError(ValueError):
    """A reference image cannot be read or holds no face."""


@dataclass(frozen=True)
class ReferenceFace:
    """crop: (REFERENCE_SIDE, REFERENCE_SIDE, 3) uint8 RGB, the face's square crop window;
    source: where it came from, for the log and the report; exemplar: another person's face
    (its detail is lent more softly than the person's own); detail: the same window at a larger
    side (R, R, 3) uint8 RGB, R > REFERENCE_SIDE, where the face was seen that large (None: crop
    is all there is); only the detail band lent at frame resolution is taken from it.
    lend_weight: (R', R') float32 in [0, 1] at the side of the image the paste lends from (detail,
    else crop): where that image's band replaces the generated one; elsewhere the generated face
    keeps its own (None: it lends everywhere)."""

    crop: np.ndarray
    source: str
    exemplar: bool = False
    detail: np.ndarray | None = field(default=None, repr=False, compare=False)
    lend_weight: np.ndarray | None = field(default=None, repr=False, compare=False)
    signature: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.crop.shape != (REFERENCE_SIDE, REFERENCE_SIDE, 3) or self.crop.dtype != np.uint8:
            raise ValueError(f"reference crop must be ({REFERENCE_SIDE}, {REFERENCE_SIDE}, 3) uint8, got "
                             f"{self.crop.shape} {self.crop.dtype}")
        if self.detail is not None and (self.detail.ndim != 3 or self.detail.shape[0] != self.detail.shape[1]
                                        or self.detail.shape[0] <= REFERENCE_SIDE or self.detail.shape[2] != 3
                                        or self.detail.dtype != np.uint8):
            raise ValueError(f"reference detail must be (R, R, 3) uint8 with R > {REFERENCE_SIDE}, got "
                             f"{self.detail.shape} {self.detail.dtype}")
        lent_side = (self.crop if self.detail is None else self.detail).shape[0]
        if self.lend_weight is not None and (self.lend_weight.shape != (lent_side, lent_side)
                                             or self.lend_weight.dtype != np.float32):
            raise ValueError(f"reference lend_weight must be ({lent_side}, {lent_side}) float32, got "
                             f"{self.lend_weight.shape} {self.lend_weight.dtype}")
        object.__setattr__(self, "signature", upper_face_signature(self.crop))


def cut_face(image: np.ndarray, box: np.ndarray, *, crop_scale: float, side: int = REFERENCE_SIDE) -> np.ndarray:
    """The square crop window of the face ``box`` ((4,) xyxy) in ``image`` (H, W, 3) uint8 RGB, at
    ``side`` pixels, edges replicated where it leaves the frame."""
    return CropWindow.for_face(box, crop_scale).cut(image, side)


def person_reference(image: np.ndarray, box: np.ndarray, *, crop_scale: float, source: str) -> ReferenceFace:
    """A person's face ``box`` ((4,) xyxy) in ``image`` (H, W, 3) uint8 RGB as a reference: the
    crop window at ``REFERENCE_SIDE``, and at its own side (up to ``DETAIL_SIDE_MAX``) for the
    detail it lends where it is larger."""
    window = CropWindow.for_face(box, crop_scale)
    side = min(int(round(window.side)), DETAIL_SIDE_MAX)
    detail = window.cut(image, side, interpolation=cv2.INTER_CUBIC) if side > REFERENCE_SIDE else None
    return ReferenceFace(window.cut(image, REFERENCE_SIDE), source, detail=detail)


def upper_face_signature(crop: np.ndarray) -> np.ndarray:
    """(D,) float32 unit vector: the upper face's grey levels (zero mean, unit norm, so lighting
    drops out) followed by its mean colour in Lab, which carries skin tone."""
    side = crop.shape[0]
    y0, y1, x0, x1 = (int(round(v * side)) for v in _UPPER)
    upper = crop[y0:y1, x0:x1]
    grey = cv2.resize(cv2.cvtColor(upper, cv2.COLOR_RGB2GRAY), (24, 12), interpolation=cv2.INTER_AREA).astype(np.float32)
    grey -= grey.mean()
    grey /= max(float(np.linalg.norm(grey)), 1e-6)
    sy0, sy1, sx0, sx1 = (int(round(v * side)) for v in _SKIN)
    lab = np.median(cv2.cvtColor(crop[sy0:sy1, sx0:sx1], cv2.COLOR_RGB2LAB).reshape(-1, 3), axis=0)
    lab = lab.astype(np.float32) / 255.0
    return np.concatenate([grey.ravel(), lab])


def match_score(a: np.ndarray, b: np.ndarray) -> float:
    """Higher is more alike: correlation of the upper faces, less the skin-tone distance."""
    return float(a[:-3] @ b[:-3]) - 2.0 * float(np.linalg.norm(a[-3:] - b[-3:]))


def ranked_matches(signature: np.ndarray, candidates: list[ReferenceFace], *,
                   by_tone: int | None = None) -> list[ReferenceFace]:
    """The candidates, most like ``signature`` first; with ``by_tone``, only that many closest in
    skin tone (a stranger's detail must at least come from the same complexion)."""
    if by_tone is not None and len(candidates) > by_tone:
        tone = np.array([np.abs(r.signature[-3:] - signature[-3:]) @ (0.5, 1.0, 1.0) for r in candidates])
        candidates = [candidates[i] for i in np.argsort(tone)[:by_tone]]
    return sorted(candidates, key=lambda r: -match_score(signature, r.signature))


def best_match(signature: np.ndarray, candidates: list[ReferenceFace], *, by_tone: int | None = None) -> ReferenceFace | None:
    """The candidate most like ``signature`` (``ranked_matches``' first), None without any."""
    ranked = ranked_matches(signature, candidates, by_tone=by_tone)
    return ranked[0] if ranked else None


def band_agreement(a: np.ndarray, b: np.ndarray, weight: np.ndarray, *, fine: float = 1.0,
                   coarse: float = 4.0) -> float:
    """Correlation, weighted by ``weight`` ((S, S) float >= 0), of the middle bands (finer than
    ``coarse`` and coarser than ``fine`` pixels) of two crops ((S, S, 3) uint8 RGB): where lip
    lines, nostrils and an open mouth show, above the grain and below the shading. 1 is alike."""
    bands = []
    for crop in (a, b):
        grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
        bands.append(cv2.GaussianBlur(grey, (0, 0), fine) - cv2.GaussianBlur(grey, (0, 0), coarse))
    w = weight.astype(np.float32) / max(float(weight.sum()), 1e-6)
    x, y = (band - float((band * w).sum()) for band in bands)
    return float((w * x * y).sum() / np.sqrt(float((w * x * x).sum()) * float((w * y * y).sum()) + 1e-12))


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop: higher is sharper."""
    return float(cv2.Laplacian(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())


@dataclass(frozen=True)
class MemorySettings:
    """min_score: face confidence an unmasked view needs to be remembered; min_side: smallest face
    box side (frame pixels) worth remembering; refresh: frames between two looks at the same track;
    min_streak: frames in a row a face must show no mask before it is trusted to be unmasked (a
    masked face waits for its mask to be confirmed, or loses it for a few frames, and must not
    become its own reference)."""

    min_score: float = 0.9
    min_side: float = 48.0
    refresh: int = 5
    min_streak: int = 10


class IdentityMemory:
    """Per track, the best view of the face without a mask: the largest, then sharpest."""

    def __init__(self, settings: MemorySettings = MemorySettings(), *, crop_scale: float) -> None:
        self.settings = settings
        self.crop_scale = crop_scale
        self._best: dict[int, tuple[float, ReferenceFace]] = {}
        self._last_look: dict[int, int] = {}
        self._streak: dict[int, tuple[int, int]] = {}  # track -> (first, last) frame of its unmasked run

    def observe(self, image: np.ndarray, track_id: int, box: np.ndarray, score: float, index: int) -> None:
        """Frame ``index`` (consecutive calls count up by one) in which the track's face shows no mask."""
        first, last_seen = self._streak.get(track_id, (index, index - 1))
        if last_seen != index - 1:
            first = index
        self._streak[track_id] = (first, index)
        side = float(min(box[2] - box[0], box[3] - box[1]))
        if index - first < self.settings.min_streak or score < self.settings.min_score or side < self.settings.min_side:
            return
        last = self._last_look.get(track_id)
        if last is not None and index - last < self.settings.refresh:
            return
        self._last_look[track_id] = index
        crop = cut_face(image, box, crop_scale=self.crop_scale)
        quality = min(side, REFERENCE_SIDE) * 1000.0 + min(sharpness(crop), 999.0)
        if track_id not in self._best or quality > self._best[track_id][0]:
            reference = person_reference(image, box, crop_scale=self.crop_scale, source=f"track {track_id} frame {index}")
            self._best[track_id] = (quality, reference)

    def get(self, track_id: int) -> ReferenceFace | None:
        best = self._best.get(track_id)
        return best[1] if best else None

    def forget(self, live: set[int]) -> None:
        for table in (self._best, self._last_look, self._streak):
            for k in [k for k in table if k not in live]:
                del table[k]

    def reset(self) -> None:
        self._best.clear()
        self._last_look.clear()
        self._streak.clear()


def load_exemplars(path: Path) -> list[ReferenceFace]:
    """The exemplar bank: an .npz with ``crops`` (N, S, S, 3) uint8 RGB JPEG-decoded crops stored
    as ``jpeg`` (N,) object-free byte strings concatenated with ``offsets`` (N + 1,)."""
    with np.load(path, allow_pickle=False) as data:
        blob, offsets = data["jpeg"], data["offsets"]
        names = [str(n) for n in data["names"]]
    out = []
    for i, name in enumerate(names):
        bgr = cv2.imdecode(blob[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if rgb.shape[:2] != (REFERENCE_SIDE, REFERENCE_SIDE):
            rgb = cv2.resize(rgb, (REFERENCE_SIDE, REFERENCE_SIDE), interpolation=cv2.INTER_AREA)
        out.append(ReferenceFace(rgb, f"exemplar {name}", exemplar=True))
    return out


def save_exemplars(path: Path, crops: list[np.ndarray], names: list[str], *, quality: int = 92) -> None:
    chunks = []
    for crop in crops:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        chunks.append(buf.ravel())
    offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
    np.savez(path, jpeg=np.concatenate(chunks), offsets=offsets, names=np.array(names, dtype=str))


def reference_images(path: Path) -> list[Path]:
    """The image files ``--reference`` names: the file itself or the images in a folder."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ReferenceError(f"no images in reference folder {path}")
        return files
    if not path.is_file():
        raise ReferenceError(f"reference not found: {path}")
    return [path]


def load_references(path: Path, detector, *, crop_scale: float) -> list[ReferenceFace]:
    """One reference per image of ``path`` (see ``reference_images``): the largest face the
    ``detector`` (``stream.detect.FaceDetector``) finds in it."""
    out = []
    for file in reference_images(path):
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ReferenceError(f"cannot read reference image {file}")
        out.append(reference_from_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), detector, crop_scale=crop_scale,
                                        name=file.name))
    return out


def reference_from_image(rgb: np.ndarray, detector, *, crop_scale: float, name: str) -> ReferenceFace:
    """The largest face the ``detector`` finds in ``rgb`` ((H, W, 3) uint8), as a reference."""
    found = detector(rgb)
    if len(found) == 0:
        raise ReferenceError(f"no face found in reference image {name}")
    areas = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
    largest = int(np.argmax(areas))
    if detector.worn(found)[largest]:
        # The user says this is the face unmasked; the detector is the one more likely wrong.
        logger.warning("reference %s: a mask was detected on the face; using it as given", name)
    logger.info("reference %s: face %s", name, np.round(found.boxes[largest]).astype(int).tolist())
    return person_reference(rgb, found.boxes[largest], crop_scale=crop_scale, source=name)


def align_to(crop: np.ndarray, visible: np.ndarray, reference: ReferenceFace, *,
             initial: np.ndarray | None = None) -> np.ndarray | None:
    """2x3 map from pixels of ``crop`` ((S, S, 3) uint8 RGB, a face's crop window) to pixels of
    ``reference.crop``: a shift fitted (ECC, which ignores brightness and contrast) on the
    ``visible`` (S, S) bool part of the face, so the reference's eyes and nose land on the face's
    own. Scale and rotation are left to the face boxes: on the thin band of the upper face a full
    affine fit is ill-conditioned (it stretched faces vertically). None when the fit fails or
    moves too far; the box alignment of the two windows holds then."""
    size = crop.shape[0]
    scale = REFERENCE_SIDE / size
    small = cv2.resize(reference.crop, (size, size), interpolation=cv2.INTER_AREA)
    template = cv2.GaussianBlur(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (0, 0), 1.0).astype(np.float32)
    moving = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (0, 0), 1.0).astype(np.float32)
    warp = np.eye(2, 3, dtype=np.float32) if initial is None else _at_crop_side(initial, scale)
    try:
        _, warp = cv2.findTransformECC(template, moving, warp, cv2.MOTION_TRANSLATION,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4),
                                       visible.astype(np.uint8), 5)
    except cv2.error:
        return None
    if not np.isfinite(warp).all() or np.abs(warp[:, 2]).max() > 0.12 * size:
        return None
    return _at_reference_side(warp, scale)


def _at_reference_side(matrix: np.ndarray, scale: float) -> np.ndarray:
    """A 2x3 map into pixels of a reference resized to the crop's size, made one into the
    reference's own pixels, ``scale`` times smaller: pixel centres, as every crop here is cut
    (without the half-pixel term the lent detail sat a quarter of a reference pixel off at 192/128)."""
    out = matrix * scale
    out[:, 2] += 0.5 * scale - 0.5
    return out.astype(np.float32)


def _at_crop_side(matrix: np.ndarray, scale: float) -> np.ndarray:
    """The inverse of ``_at_reference_side``: a map into the reference's own pixels made one into
    the pixels of the reference resized to the crop's size."""
    out = matrix.astype(np.float64).copy()
    out[:, 2] -= 0.5 * scale - 0.5
    return (out / scale).astype(np.float32)


# How far inside its own outline an exemplar lends detail (share of the crop side) and how soft that
# edge is (pixels at the generator's size): the outline's shading is the strongest edge of a lower
# face, and lent up to the outline it showed as a line across the cheek or a second jaw wherever
# the exemplar's face is narrower than the one it fills (the office clip, the multi test clip).
LEND_INSET = 0.05
LEND_EDGE = 2.0
# Parsing classes (engines.models.parsing.PARSING_CLASSES) whose centres pin a face's parts.
_EYE_LEFT, _EYE_RIGHT, _NOSE, _MOUTH = 4, 5, 6, (7, 8, 9)


def part_points(labels: np.ndarray) -> np.ndarray | None:
    """(6, 2) float32 x, y of a face's parts in the pixels of ``labels`` ((S, S) int, the parsing
    net's classes): the eye centres (image-left, image-right), the nose's centre, the mouth's
    left and right ends and its centre. None when a part is missing."""
    points = _centres(labels, (_EYE_LEFT, _EYE_RIGHT, _NOSE))
    if points is None:
        return None
    ys, xs = np.nonzero(np.isin(labels, _MOUTH))
    if len(xs) < 8:
        return None
    # The mouth's ends from its outer tenths: a single extreme pixel jitters with the labels.
    left, right = np.percentile(xs, (10, 90))
    points += [(xs[xs <= left].mean(), ys[xs <= left].mean()), (xs[xs >= right].mean(), ys[xs >= right].mean()),
               (xs.mean(), ys.mean())]
    return np.asarray(points, np.float32)


def _centres(labels: np.ndarray, parts: tuple[int, ...]) -> list[tuple[float, float]] | None:
    """x, y of the centre of each of ``parts`` in ``labels``; None when one has under 4 pixels."""
    points = []
    for part in parts:
        ys, xs = np.nonzero(labels == part)
        if len(xs) < 4:
            return None
        points.append((xs.mean(), ys.mean()))
    return points


def eye_points(labels: np.ndarray) -> np.ndarray | None:
    """(2, 2) float32 x, y of the eye centres (image-left first) in the pixels of ``labels``
    ((S, S) int, the parsing net's classes); None when an eye is missing."""
    points = _centres(labels, (_EYE_LEFT, _EYE_RIGHT))
    return None if points is None else np.asarray(sorted(points), np.float32)


def side_by_side(a: np.ndarray, b: np.ndarray, side: int) -> bool:
    """Whether two areas' centres (x, y) in a crop of ``side`` pixels lie as a pair of eyes do:
    at one height, apart."""
    return abs(a[1] - b[1]) < 0.08 * side and abs(a[0] - b[0]) > 0.15 * side


def eye_pair(eyes: np.ndarray, *, min_area: int = 10) -> np.ndarray | None:
    """(2, 2) float32 x, y of the centres of a pair of eyes (image-left first) in an (S, S) bool
    eye map (``EyeGuard.eyes``: both eyes, one class): the largest two areas of at least
    ``min_area`` pixels that lie side by side at one height. None when there is no such pair."""
    count, _, stats, centres = cv2.connectedComponentsWithStats(eyes.astype(np.uint8), connectivity=8)
    side = eyes.shape[0]
    areas = [(stats[i, cv2.CC_STAT_AREA], i) for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    pairs = [(ka + kb, a, b) for n, (ka, a) in enumerate(areas) for kb, b in areas[n + 1:]
             if side_by_side(centres[a], centres[b], side)]
    if not pairs:
        return None
    _, a, b = max(pairs)
    return np.asarray(sorted([tuple(centres[a]), tuple(centres[b])]), np.float32)


def eyes_map(face: np.ndarray, reference: np.ndarray, *, scale: float) -> np.ndarray | None:
    """2x3 similarity from crop pixels to reference pixels that lays the ``reference`` eye centres
    ((2, 2), in pixels ``scale`` times smaller than the reference's) on the ``face``'s (crop
    pixels). The eyes are what a masked face shows best: the shift of the upper face alone left
    the scale to the face boxes, and a masked face's box is larger than the same face's unmasked
    one, so the reference's eyes were lent into the hole below the face's own. None when the
    fit would scale or turn the face beyond what a pose change explains."""
    p, q = face[:, 0] + 1j * face[:, 1], reference[:, 0] + 1j * reference[:, 1]
    if abs(p[1] - p[0]) < 1.0:
        return None
    a = (q[1] - q[0]) / (p[1] - p[0])
    b = q[0] - a * p[0]
    if not 0.75 <= abs(a) <= 1.33 or abs(np.angle(a)) > np.radians(20):
        return None
    at_size = np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], np.float32)
    return _at_reference_side(at_size, scale)


class PartsLocator:
    """Where the eyes, nose and mouth of face crops are, by the project's face-parsing net
    (``engines.models.parsing``, model ``parsing``: input ``image`` (N, 3, S, S) RGB [0, 1],
    output ``logits`` (N, C, S, S))."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def labels(self, crops: np.ndarray) -> np.ndarray:
        """crops: (N, S, S, 3) uint8 RGB -> (N, S, S) uint8 parsing classes."""
        size = crops.shape[1]
        (spec,) = self.engine.inputs
        side = spec.shape[-1]
        if side != size:
            crops = np.stack([cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA) for c in crops])
        image = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
        logits = self.engine.run({"image": image.to(self.engine.device)})["logits"]
        labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
        if side != size:
            labels = np.stack([cv2.resize(one, (size, size), interpolation=cv2.INTER_NEAREST) for one in labels])
        return labels

    def eyes(self, crops: np.ndarray) -> np.ndarray:
        """crops: (N, S, S, 3) uint8 RGB -> (N, S, S) bool, the pixels of either eye."""
        return np.isin(self.labels(crops), (_EYE_LEFT, _EYE_RIGHT))

    def eyes_of(self, reference: ReferenceFace, size: int, *,
                grow: float = 0.03) -> tuple[np.ndarray | None, ReferenceFace]:
        """A person's reference seen at ``size`` pixels: its ``eye_points``, and the reference with
        its eyes and lids (the eyes grown by ``grow`` of the side) blurred past the band the paste
        lends, crop and ``detail`` alike: where the hole reaches up to the eyes, open eyes in a
        reference would lend their lower lids under eyes that are closed or narrowed now."""
        small = cv2.resize(reference.crop, (size, size), interpolation=cv2.INTER_AREA)
        labels = self.labels(small[None])[0]
        eyes = np.isin(labels, (_EYE_LEFT, _EYE_RIGHT)).astype(np.uint8)
        reach = max(int(round(grow * size)), 1)
        eyes = cv2.dilate(eyes, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1)))
        keep = 1.0 - eyes.astype(np.float32)
        kept = [_detail_kept(image, keep, image.shape[0] / size)
                for image in (reference.crop, reference.detail) if image is not None]
        return eye_points(labels), ReferenceFace(kept[0][0], reference.source, exemplar=reference.exemplar,
                                                 detail=kept[1][0] if len(kept) > 1 else None,
                                                 lend_weight=kept[-1][1])

    def __call__(self, crops: np.ndarray) -> list[np.ndarray | None]:
        """crops: (N, S, S, 3) uint8 RGB. Per crop, ``part_points`` in its pixels."""
        return [part_points(one) for one in self.labels(crops)]

    def lendable(self, exemplar: ReferenceFace, size: int, *, inset: float = LEND_INSET,
                 edge: float = LEND_EDGE) -> tuple[np.ndarray | None, ReferenceFace]:
        """An exemplar's ``part_points`` at ``size`` pixels, and the exemplar with its fine detail
        kept inside its face only, ``inset`` of the side in from its outline, over a soft edge of
        ``edge`` pixels (a Gaussian's sigma at ``size``): its hairline, jaw and cheek outline and
        background would be lent as lines wherever its face is narrower than the one it fills."""
        small = cv2.resize(exemplar.crop, (size, size), interpolation=cv2.INTER_AREA)
        labels = self.labels(small[None])[0]
        points = part_points(labels)
        px = exemplar.crop.shape[0] / size
        face = (labels > 0).astype(np.uint8)
        reach = int(round(inset * size))
        if reach > 0:
            face = cv2.erode(face, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1)))
        face = face.astype(np.float32)
        if edge > 0:
            face = cv2.GaussianBlur(face, (0, 0), edge)
        if points is not None:
            # Only below the eyes, where a mask lies: the eyes are the face's own, and the band under
            # them holds an exemplar's glasses rims and eye bags.
            eyes, nose = points[:2, 1].mean(), points[2, 1]
            rows = np.arange(size, dtype=np.float32)[:, None]
            face *= np.clip((rows - eyes) / max(nose - eyes, 1.0) - 0.8, 0.0, 0.3) / 0.3
        # A narrow edge, so the kept region does not reach up to the glasses.
        crop, weight = _detail_kept(exemplar.crop, face, px)
        return points, ReferenceFace(crop, exemplar.source, exemplar=True, lend_weight=weight)


def _detail_kept(image: np.ndarray, keep: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` ((R, R, 3) uint8 RGB) with its fine detail kept as the ``keep`` weight ((S, S)
    float in [0, 1], px = R / S) says, given a one-pixel soft edge; elsewhere blurred well past any
    band the paste lends (2-3 generator pixels); and that weight at R, the image's ``lend_weight``."""
    side = image.shape[0]
    keep = cv2.GaussianBlur(cv2.resize(keep, (side, side), interpolation=cv2.INTER_LINEAR), (0, 0), px)
    crop = image.astype(np.float32)
    low = cv2.GaussianBlur(crop, (0, 0), 8.0 * px)
    return (low + keep[..., None] * (crop - low) + 0.5).clip(0, 255).astype(np.uint8), keep.astype(np.float32)


def parts_map(face: np.ndarray, reference: np.ndarray, *, scale: float) -> np.ndarray | None:
    """2x3 affine from crop pixels to reference pixels fitted on matching ``part_points`` (face's
    in crop pixels, reference's in pixels ``scale`` times smaller than the reference's); None
    when the fit would squash, stretch or turn the face beyond what a pose change explains."""
    a = np.hstack([face, np.ones((len(face), 1), np.float32)])
    solution, *_ = np.linalg.lstsq(a, reference, rcond=None)
    at_size = solution.T.astype(np.float32)
    singular = np.linalg.svd(at_size[:, :2], compute_uv=False)
    matrix = _at_reference_side(at_size, scale)
    if singular.min() < 0.75 or singular.max() > 1.33 or np.linalg.det(at_size[:, :2]) <= 0:
        return None
    return matrix


@dataclass(frozen=True)
class Guide:
    """A track's reference and where it lies: ``to_reference`` maps pixels of the track's crop
    window at the generator's size to pixels of ``reference.crop`` (None: the windows' own box
    alignment)."""

    reference: ReferenceFace
    to_reference: np.ndarray | None
    # The face whose detail band is lent, in the reference's pixels (None: the reference itself):
    # a person's reference lends without its eyes, and feeds the generator whole.
    lend: ReferenceFace | None = None

    def in_window(self, size: int) -> np.ndarray:
        """The reference seen through the track's crop window at ``size`` (the generator's size,
        at which ``to_reference`` was fitted): (size, size, 3) uint8 RGB."""
        if self.to_reference is None:
            return cv2.resize(self.reference.crop, (size, size), interpolation=cv2.INTER_AREA)
        return cv2.warpAffine(self.reference.crop, self.to_reference, (size, size),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    def lent(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(the sharpest crop of the reference, (R, R, 3) uint8 RGB; 2x3 from pixels of the
        track's crop window at the generator's size to its pixels, None: the windows' own box
        alignment; its ``lend_weight``): what the paste lends its detail band from, and where."""
        lend = self.reference if self.lend is None else self.lend
        detail = lend.detail
        if detail is None or self.to_reference is None:
            return (lend.crop if detail is None else detail), self.to_reference, lend.lend_weight
        k = detail.shape[0] / REFERENCE_SIDE
        to_detail = self.to_reference * k
        to_detail[:, 2] += 0.5 * k - 0.5  # pixel centres, as every crop here is cut
        return detail, to_detail.astype(np.float32), lend.lend_weight


class References:
    """Picks each track's reference: memory first, then the given references, then an exemplar;
    the given/exemplar choice is made once per track so it cannot flicker. The reference is
    aligned to the face's visible upper part every ``realign`` frames, starting from the last fit,
    and each new fit moves the alignment by ``follow`` of the way, so it follows the head smoothly.
    An exemplar is first short-listed by the upper face (``shortlist`` of them); with a locator
    the track settles, on the first frame whose completed face shows its parts, on the one whose
    fitted lower face agrees best with what the generator drew there (``band_agreement``), so a
    stranger's open smile or shadowed lip is not lent to a closed, plain mouth.

    A person's reference is checked against the face's eyes: where ``eye_locator`` (the eye guard's
    net, which found the face's eyes above the mask) finds the reference's too and the shift fit
    would lay them more than ``eye_tolerance`` of the crop side off, the fit by the eyes is taken
    (a masked face's box is larger than the same face's unmasked one, so its second pair of eyes
    was lent into the hole). One net for both: on one face the masked-face net's eye centres lie
    8 % further apart than the plain net's, and a fit across the two nets scaled the reference wrong."""

    def __init__(self, *, given: list[ReferenceFace], exemplars: list[ReferenceFace],
                 memory: IdentityMemory | None, realign: int = 5, follow: float = 0.3,
                 locator: PartsLocator | None = None, eye_locator: PartsLocator | None = None,
                 eye_tolerance: float = 0.025, shortlist: int = EXEMPLAR_SHORTLIST) -> None:
        self.given = given
        self.exemplars = exemplars
        self.memory = memory
        self.realign = realign
        self.follow = follow
        self.locator = locator
        self.eye_locator = eye_locator
        self.eye_tolerance = eye_tolerance
        if shortlist < 1:
            raise ValueError(f"the exemplar shortlist must hold at least one, got {shortlist}")
        self.shortlist = shortlist
        self._chosen: dict[int, ReferenceFace | None] = {}
        self._unsettled: dict[int, list[ReferenceFace]] = {}
        self._guides: dict[int, tuple[Guide, int]] = {}
        self._fitted: dict[int, tuple[Guide, int]] = {}
        self._exemplar_parts: dict[int, tuple[np.ndarray | None, ReferenceFace]] = {}
        # (id, size) -> (a person's reference, kept so the id stays its own; _person's two)
        self._persons: dict[tuple[int, int], tuple[ReferenceFace, np.ndarray | None, ReferenceFace | None]] = {}

    def guide(self, track_id: int, crop: np.ndarray, visible: np.ndarray,
              eyes: np.ndarray | None = None) -> Guide | None:
        """The track's reference, aligned to ``crop`` ((S, S, 3) uint8 RGB, its crop window at the
        generator's size): a person's reference by a shift on the ``visible`` (S, S) bool face
        pixels, checked against the face's ``eyes`` ((S, S) bool, ``EyeGuard.eyes``; see the class)."""
        reference = self.for_track(track_id, crop)
        if reference is None:
            return None
        if reference.exemplar and self.locator is not None:
            # Fitted by its parts once the generator has drawn the face (fit_parts); the shift
            # fitted here would be thrown away, and it is the costliest step of a frame.
            return Guide(reference, None)
        previous, age = self._guides.get(track_id, (None, 0))
        same = previous is not None and previous.reference is reference
        if same and age < self.realign:
            self._guides[track_id] = (previous, age + 1)
            return previous
        matrix = align_to(crop, visible, reference, initial=previous.to_reference if same else None)
        matrix = self._checked_by_eyes(reference, crop.shape[0], eyes, matrix)
        if same and previous.to_reference is not None:
            # Each fit is noisy by a fraction of a pixel; moved at once, the lent detail shimmers.
            matrix = previous.to_reference if matrix is None else (
                self.follow * matrix + (1 - self.follow) * previous.to_reference).astype(np.float32)
        guide = Guide(reference, matrix, self._person(reference, crop.shape[0])[1])
        self._guides[track_id] = (guide, 1)
        return guide

    def fit_parts(self, track_id: int, guide: Guide, completed: np.ndarray, drawn: np.ndarray | None = None) -> Guide:
        """An exemplar's guide re-fitted so that its eyes, nose and mouth land on those of
        ``completed`` ((S, S, 3) uint8 RGB: the crop with the generator's fill, which covers the
        ``drawn`` (S, S) float weights), so the detail it lends follows the face the generator drew
        instead of ghosting beside it. Refitted every ``realign`` frames and moved ``follow`` of
        the way, as ``guide`` is; ``guide`` itself without a locator, for a person's own reference,
        or when the parts are not found. While the track's exemplar is not settled (see the class)
        and ``drawn`` is given, the short-listed exemplar that agrees best is settled on here."""
        if self.locator is None or not guide.reference.exemplar:
            return guide
        size = completed.shape[0]
        found = None
        if drawn is not None and track_id in self._unsettled:
            found = self.locator(completed[None])[0]
            if found is not None:
                candidates = self._unsettled.pop(track_id)
                agreement = [self._agreement(c, found, completed, drawn) for c in candidates]
                best = candidates[int(np.argmax(agreement))]
                if best is not guide.reference:
                    logger.info("track %d: exemplar %s agrees best with the drawn face", track_id, best.source)
                self._chosen[track_id] = best
                guide = Guide(best, None)
        target, lendable = self._lendable(guide.reference, size)
        previous, age = self._fitted.get(track_id, (None, 0))
        same = previous is not None and previous.reference is lendable
        if same and age < self.realign:
            self._fitted[track_id] = (previous, age + 1)
            return previous
        if found is None:
            found = self.locator(completed[None])[0]
        matrix = None if target is None or found is None else parts_map(found, target, scale=REFERENCE_SIDE / size)
        if matrix is None:
            fitted = previous if same else Guide(lendable, guide.to_reference)
        elif same and previous.to_reference is not None:
            fitted = Guide(lendable, (self.follow * matrix + (1 - self.follow) * previous.to_reference
                                      ).astype(np.float32))
        else:
            fitted = Guide(lendable, matrix)
        self._fitted[track_id] = (fitted, 1)
        return fitted

    def _checked_by_eyes(self, reference: ReferenceFace, size: int, eyes: np.ndarray | None,
                         matrix: np.ndarray | None) -> np.ndarray | None:
        """``matrix`` (the shift fit, None: the windows' box alignment), or the fit by the eyes where
        that one would put the reference's eyes more than ``eye_tolerance`` crop pixels off the
        face's. The shift fit is the finer where it holds (the texture of brows, lids and skin);
        the eyes catch it where the face boxes' scale is off."""
        if self.eye_locator is None or eyes is None:
            return matrix
        face = eye_pair(eyes)
        target = None if face is None else self._person(reference, size)[0]
        if target is None:
            return matrix
        scale = REFERENCE_SIDE / size
        by_eyes = eyes_map(face, target, scale=scale)
        if by_eyes is None:
            return matrix
        current = np.eye(2, 3, dtype=np.float32) if matrix is None else _at_crop_side(matrix, scale)
        landed = np.hstack([face, np.ones((2, 1), np.float32)]) @ current.T
        off = float(np.linalg.norm(landed - target, axis=1).max())
        return by_eyes if off > self.eye_tolerance * size else matrix

    def _person(self, reference: ReferenceFace, size: int) -> tuple[np.ndarray | None, ReferenceFace | None]:
        """A person's reference seen at ``size`` by ``eye_locator`` (once): its eye centres and the
        face it lends its detail from (``PartsLocator.eyes_of``); Nones without that net."""
        key = (id(reference), size)
        if key not in self._persons:
            found = (None, None) if self.eye_locator is None else self.eye_locator.eyes_of(reference, size)
            self._persons[key] = (reference, *found)
        return self._persons[key][1:]

    def _lendable(self, exemplar: ReferenceFace, size: int) -> tuple[np.ndarray | None, ReferenceFace]:
        key = id(exemplar)
        if key not in self._exemplar_parts:
            self._exemplar_parts[key] = self.locator.lendable(exemplar, size)
        return self._exemplar_parts[key]

    def _agreement(self, exemplar: ReferenceFace, found: np.ndarray, completed: np.ndarray,
                   drawn: np.ndarray) -> float:
        size = completed.shape[0]
        target, lendable = self._lendable(exemplar, size)
        matrix = None if target is None else parts_map(found, target, scale=REFERENCE_SIDE / size)
        if matrix is None:
            return -np.inf
        return band_agreement(Guide(lendable, matrix).in_window(size), completed, drawn)

    def for_track(self, track_id: int, crop: np.ndarray) -> ReferenceFace | None:
        """``crop``: the track's current face crop window (any size, uint8 RGB) to match on."""
        if self.memory is not None:
            remembered = self.memory.get(track_id)
            if remembered is not None:
                return remembered
        if track_id not in self._chosen:
            signature = upper_face_signature(cv2.resize(crop, (REFERENCE_SIDE, REFERENCE_SIDE)))
            chosen = best_match(signature, self.given)
            if chosen is None:
                ranked = ranked_matches(signature, self.exemplars, by_tone=12)[:self.shortlist]
                chosen = ranked[0] if ranked else None
                if len(ranked) > 1 and self.locator is not None:
                    self._unsettled[track_id] = ranked
            self._chosen[track_id] = chosen
            if chosen is not None:
                logger.info("track %d: reference %s", track_id, chosen.source)
        return self._chosen[track_id]

    def prefer(self, reference: ReferenceFace) -> None:
        """From now on ``reference`` is every track's (the user picked it, over memory and exemplars)."""
        self.given = [reference]
        self.reset()

    def forget(self, live: set[int]) -> None:
        self._chosen = {k: v for k, v in self._chosen.items() if k in live}
        self._unsettled = {k: v for k, v in self._unsettled.items() if k in live}
        self._guides = {k: v for k, v in self._guides.items() if k in live}
        self._fitted = {k: v for k, v in self._fitted.items() if k in live}
        # A remembered reference is replaced whenever a better view comes: keep only what was
        # found on those still in use, or a long live run would hold every view it ever had.
        used = {id(guide.reference) for guide, _ in self._guides.values()}
        self._persons = {k: v for k, v in self._persons.items() if k[0] in used}
        if self.memory is not None:
            self.memory.forget(live)

    def reset(self) -> None:
        self._chosen.clear()
        self._unsettled.clear()
        self._guides.clear()
        self._fitted.clear()
        self._persons.clear()
        if self.memory is not None:
            self.memory.reset()
