"""Detect: faces and the masks worn on them, from the Mask R-CNN engine, in frame pixels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from engines.models.detector import FACE, FACE_MASK, DetectorConfig
from engines.models.verifier import VerifierConfig
from engines.runtime import DeviceStream, Engine
from stream.geometry import CropWindow, Letterbox, box_overlap
from stream.records import Detections

logger = logging.getLogger(__name__)


def detector_input(image: np.ndarray, input_hw: tuple[int, int]) -> tuple[torch.Tensor, Letterbox]:
    """The detector's input for ``image`` ((H, W, 3) uint8 RGB): (1, 3, input H, input W) float32
    in [0, 1], letterboxed, and the letterbox that maps its boxes back (divide by ``scale``).
    Serving, evaluation, exports and calibration all prepare the detector's input here."""
    box = Letterbox.fit(image.shape[:2], input_hw)
    return torch.from_numpy(box.apply(image, input_hw)).permute(2, 0, 1)[None].float().div_(255.0), box


class DetectorSettingsError(ValueError):
    """A detect-stage setting the model cannot honour (a score below what the model reports)."""


@dataclass(frozen=True)
class DetectorSettings:
    """face_score / mask_score: minimum confidence of a face box and of a face_mask instance.
    keep_score: minimum confidence of a face_mask on a face whose mask is already being filled
        (the tracker decides; a new mask needs ``mask_score``): a see-through mask's score dips
        for a frame or two, and a track started on a confident mask may go on on a weaker one.
    masked_face_score: minimum confidence of a face box that carries a worn face_mask (at least
        ``keep_score``): a mask hides half the face, and the detector is then less sure of the
        face itself (on a see-through mask, 0.5-0.7 on one frame in five). 0.5 since 2026-12-06
        (0.65 while photos started a mask at 0.4: see ``still_mask_score``). A face without a mask still needs ``face_score``, and whether a mask is
        filled stays the tracker's decision.
    still_mask_score: the confidence a face_mask needs in a photo (``for_stills``). In a video a
        mask is filled only once two detections in a row have seen it (``TrackerConfig.mask_confirm``),
        which one bad frame cannot pass; a photo gets one look, so that look must be surer. 0.6 was
        chosen on the training splits of the unmasked web photos, LFW and the real masked photos
        (the model card).
    mask_overlap: share of a face_mask box that must lie inside a face box to belong to it.
    nested_face: share of a face box inside a higher-scoring face box above which it is dropped.

    Where a worn mask can be on a face (a face_mask elsewhere is dropped, so a false detection
    on a hand, a chest or a wall paints nothing), as shares of the face box height from its top:
    upper_face: the band that holds the eyes and brows; at most ``upper_covered`` of it may be
        under the mask, since a face with its eyes covered is not one we can complete;
    mask_centre: the mask's centre of mass must lie below this line (masks cover the lower face);
    mask_top: the mask's top edge must reach this line or above (a worn mask covers the nose and
        mouth; a blob confined to the chin, or a mask hanging under it, is not worn: 1.0 turns
        this off);
    mask_inside: share of the mask's pixels that must lie inside the face box.
    print_share: a face whose upper-face band holds at least this share of paper-white pixels
        (every channel >= 230) and as much of ink-black ones (every channel <= 25) is print, a
        letter or a logo, not skin: its mask is dropped (the letter "s" of a banner was filled,
        2026-12-07). A dark scene has no paper and an overexposed face no ink. 1.0 turns this off.
    """

    face_score: float = 0.7
    mask_score: float = 0.4
    keep_score: float = 0.3
    masked_face_score: float = 0.5
    still_mask_score: float = 0.6
    mask_overlap: float = 0.5
    nested_face: float = 0.6
    upper_face: float = 0.3
    upper_covered: float = 0.15
    mask_centre: float = 0.5
    mask_top: float = 0.65
    mask_inside: float = 0.6
    print_share: float = 0.25

    def __post_init__(self) -> None:
        for name in ("face_score", "mask_score", "keep_score", "masked_face_score", "still_mask_score",
                     "mask_overlap", "nested_face", "upper_face", "upper_covered", "mask_centre", "mask_top", "mask_inside",
                     "print_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DetectorSettingsError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.keep_score > self.mask_score:
            raise DetectorSettingsError(f"keep_score {self.keep_score} is above mask_score {self.mask_score}")
        if self.masked_face_score > self.face_score:
            raise DetectorSettingsError(
                f"masked_face_score {self.masked_face_score} is above face_score {self.face_score}")

    def for_stills(self) -> "DetectorSettings":
        """The settings for unrelated photos: a mask starts at ``still_mask_score`` or
        ``mask_score``, whichever is higher."""
        return replace(self, mask_score=max(self.mask_score, self.still_mask_score))


def worn_on_face(mask: np.ndarray, box: np.ndarray, settings: DetectorSettings) -> bool:
    """Whether ``mask`` ((H, W) bool, frame pixels) sits where a mask is worn on the face with
    ``box`` ((4,) xyxy): over the lower face, the eyes free (see ``DetectorSettings``)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return False
    x1, y1, x2, y2 = box
    height = max(float(y2 - y1), 1.0)
    inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    if inside.mean() < settings.mask_inside:
        return False
    if (ys.mean() - y1) / height < settings.mask_centre:
        return False
    if (ys.min() - y1) / height > settings.mask_top:
        return False
    band_bottom = y1 + settings.upper_face * height
    top, bottom, left, right = int(max(y1, 0)), int(np.ceil(band_bottom)), int(max(x1, 0)), int(np.ceil(x2))
    band = mask[top:bottom, left:right]
    return not (band.size and band.mean() > settings.upper_covered)


def looks_printed(image: np.ndarray, box: np.ndarray, settings: DetectorSettings) -> bool:
    """Whether the upper-face band of ``box`` ((4,) xyxy) in ``image`` ((H, W, 3) uint8) is two-tone
    print rather than a face (see ``DetectorSettings.print_share``)."""
    x1, y1, x2, y2 = box
    top, left = int(max(y1, 0)), int(max(x1, 0))
    band = image[top:int(np.ceil(y1 + settings.upper_face * (y2 - y1))), left:int(np.ceil(x2))]
    if band.size == 0:
        return False
    paper = float((band.min(axis=2) >= 230).mean())
    ink = float((band.max(axis=2) <= 25).mean())
    return min(paper, ink) >= settings.print_share


class CropVerifier:
    """Asks a verifier network (engines/models/verifier.py) its yes/no question of each face's crop
    window: the mask verifier whether the face wears a mask, the face verifier whether it is a face.

    __call__(image (H, W, 3) uint8 RGB, boxes (F, 4) float32 xyxy frame pixels) -> (F,) float32
    probabilities of "yes"."""

    def __init__(self, engine: Engine, config: VerifierConfig) -> None:
        self.engine = engine
        self.config = config
        self._device = DeviceStream(engine.device)

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if len(boxes) == 0:
            return np.zeros(0, np.float32)
        s = self.config.size
        crops = np.stack([CropWindow.for_face(b, self.config.crop_scale).cut(image, s) for b in boxes])
        tensor = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        out = self.engine.run({"image": self._device.upload(tensor)}, stream=self._device.stream)
        self._device.wait()
        return torch.sigmoid(out["logit"].float()).cpu().numpy()


class FaceDetector:
    """Runs the detector engine on a frame and pairs each face_mask with the face wearing it.
    With a ``verifier``, each face with a mask also gets the verifier's probability
    (``Detections.mask_probs``); ``worn`` is the decision for one image alone.

    With a ``face_verifier``, a face with a mask that the face verifier does not take for a face
    (under its own threshold) is dropped: the detector also finds "masked faces" on fists with
    rings, arms and shiny clothes (2026-12-07, the real mesh-mask clip, scores up to 0.99), and a
    face would be painted there. Faces without a mask are not asked: nothing is filled on them."""

    def __init__(self, engine: Engine, config: DetectorConfig, *, settings: DetectorSettings = DetectorSettings(),
                 verifier: CropVerifier | None = None, face_verifier: CropVerifier | None = None) -> None:
        # The exported model drops everything under its own cut-off: a lower setting would
        # silently do nothing.
        cutoff = config.box_score_thresh
        for name in ("face_score", "mask_score", "keep_score", "masked_face_score"):
            if getattr(settings, name) < cutoff:
                raise DetectorSettingsError(
                    f"{name.replace('_', '-')} {getattr(settings, name)} is below the detector's own cut-off "
                    f"{cutoff}: it reports nothing weaker")
        self.engine = engine
        self.config = config
        self.settings = settings
        self.verifier = verifier
        self.face_verifier = face_verifier
        self._device = DeviceStream(engine.device)

    def __call__(self, image: np.ndarray) -> Detections:
        """image: (H, W, 3) uint8 RGB. Returns detections in the same pixel frame."""
        h, w = image.shape[:2]
        input_hw = tuple(self.config.input_size)
        tensor, box = detector_input(image, input_hw)
        out = self.engine.run({"image": self._device.upload(tensor)}, stream=self._device.stream)
        self._device.wait()
        boxes = box.boxes_to_frame(out["boxes"].cpu().numpy())
        labels = out["labels"].cpu().numpy()
        scores = out["scores"].cpu().numpy().astype(np.float32)
        faces = np.flatnonzero((labels == FACE) & (scores >= self.settings.masked_face_score))
        worn = np.flatnonzero((labels == FACE_MASK) & (scores >= self.settings.keep_score))
        if len(faces) == 0:
            return Detections.empty(h, w)
        # A face box lying mostly inside a higher-scoring one is a part of that face (often the
        # mask itself), not another person: it would start a second track on the same face.
        inside = box_overlap(boxes[faces], boxes[faces])
        keep = [i for i in range(len(faces)) if not any(inside[i, j] > self.settings.nested_face for j in range(i))]
        faces = faces[keep]
        face_boxes = np.clip(boxes[faces], 0, [w, h, w, h]).astype(np.float32)
        masks = np.zeros((len(faces), h, w), bool)
        mask_scores = np.zeros(len(faces), np.float32)
        if len(worn):
            overlap = box_overlap(boxes[worn], face_boxes)
            probs = out["masks"][torch.from_numpy(worn), 0].cpu().numpy()
            printed = [looks_printed(image, b, self.settings) for b in face_boxes]
            for k in np.argsort(-scores[worn], kind="stable"):
                i = worn[k]
                # The most confident face that holds enough of the mask owns it; a weaker box
                # around the lower face often holds all of it, but is not the person.
                holders = np.flatnonzero(overlap[k] >= self.settings.mask_overlap)
                if len(holders) == 0:
                    continue
                owner = int(holders[0])
                if mask_scores[owner] >= self.settings.mask_score > scores[i]:
                    continue  # a weak one only stands in for a mask that is not confidently seen
                full = box.map_to_frame(probs[k], (h, w)) > 0.5
                if printed[owner]:
                    logger.debug("face_mask %d dropped: its face is print, not skin", k)
                elif worn_on_face(full, face_boxes[owner], self.settings):
                    masks[owner] |= full
                    mask_scores[owner] = max(mask_scores[owner], scores[i])
                else:
                    logger.debug("face_mask %d dropped: not on the lower part of its face", k)
        # A face under face_score stays only with a worn mask on it.
        sure = (scores[faces] >= self.settings.face_score) | (mask_scores > 0)
        if self.face_verifier is not None and (mask_scores > 0).any():
            masked = np.flatnonzero(mask_scores > 0)
            not_face = self.face_verifier(image, face_boxes[masked]) < self.face_verifier.config.threshold
            if not_face.any():
                logger.debug("%d masked face(s) dropped: not a face to the face verifier", int(not_face.sum()))
            sure[masked[not_face]] = False
        faces, face_boxes, masks, mask_scores = faces[sure], face_boxes[sure], masks[sure], mask_scores[sure]
        if len(faces) == 0:
            return Detections.empty(h, w)
        mask_probs = None
        if self.verifier is not None:
            mask_probs = np.zeros(len(faces), np.float32)
            masked = np.flatnonzero(mask_scores > 0)
            mask_probs[masked] = self.verifier(image, face_boxes[masked])
        return Detections(boxes=face_boxes, scores=scores[faces], masks=masks, mask_probs=mask_probs,
                          mask_scores=mask_scores, mask_score=self.settings.mask_score)

    def worn(self, detections: Detections) -> np.ndarray:
        """(N,) bool: the faces that wear a mask judged on this image alone (a still photo): the
        detector sees one and, with a verifier, the verifier agrees at its own threshold."""
        seen = detections.confident_masks()
        if detections.mask_probs is None or self.verifier is None:
            return seen
        return seen & (detections.mask_probs >= self.verifier.config.threshold)
