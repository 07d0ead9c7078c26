"""Inpaint: reconstruct each tracked face under its mask and blend the result into the frame."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engines.models.generator import GeneratorConfig, square_crop_box
from engines.runtime import Engine
from stream.records import Track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InpaintSettings:
    """feather: width in crop pixels of the soft seam between generated and original pixels."""

    feather: int = 7


@dataclass(frozen=True)
class CropWindow:
    """Integer square crop of a face, possibly reaching past the frame (padded by replication)."""

    x1: int
    y1: int
    side: int

    @classmethod
    def for_face(cls, box: np.ndarray, crop_scale: float) -> CropWindow:
        sq = square_crop_box(box, crop_scale=crop_scale)
        side = max(int(round(sq[2] - sq[0])), 8)
        return cls(int(round(sq[0])), int(round(sq[1])), side)

    def cut(self, image: np.ndarray) -> np.ndarray:
        """The (side, side, ...) window of ``image``, edges replicated where it leaves the frame."""
        h, w = image.shape[:2]
        pad = max(0, -self.x1, -self.y1, self.x1 + self.side - w, self.y1 + self.side - h)
        if pad:
            image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x, y = self.x1 + pad, self.y1 + pad
        return image[y : y + self.side, x : x + self.side]

    def paste(self, frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray) -> None:
        """Blend (side, side, 3) ``patch`` into ``frame`` in place with (side, side) ``alpha``."""
        h, w = frame.shape[:2]
        fx1, fy1 = max(self.x1, 0), max(self.y1, 0)
        fx2, fy2 = min(self.x1 + self.side, w), min(self.y1 + self.side, h)
        if fx2 <= fx1 or fy2 <= fy1:
            return
        px1, py1 = fx1 - self.x1, fy1 - self.y1
        region = frame[fy1:fy2, fx1:fx2].astype(np.float32)
        a = alpha[py1 : py1 + fy2 - fy1, px1 : px1 + fx2 - fx1, None]
        p = patch[py1 : py1 + fy2 - fy1, px1 : px1 + fx2 - fx1].astype(np.float32)
        frame[fy1:fy2, fx1:fx2] = np.clip(a * p + (1 - a) * region + 0.5, 0, 255).astype(np.uint8)


class FaceInpainter:
    """Crops every masked face, runs the generator on the batch, composites and pastes back."""

    def __init__(self, engine: Engine, config: GeneratorConfig, *, settings: InpaintSettings = InpaintSettings()) -> None:
        self.engine = engine
        self.config = config
        self.settings = settings
        size = 2 * config.mask_dilation + 1
        self._dilate = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)) if config.mask_dilation else None

    def prepare(self, image: np.ndarray, track: Track) -> tuple[CropWindow, np.ndarray, np.ndarray]:
        """(window, crop (S, S, 3) uint8 RGB, hole (S, S) float32 {0, 1}) at generator size S."""
        s = self.config.size
        window = CropWindow.for_face(track.box, self.config.crop_scale)
        crop = cv2.resize(window.cut(image), (s, s), interpolation=cv2.INTER_AREA)
        hole = cv2.resize(window.cut(track.mask.astype(np.uint8)), (s, s), interpolation=cv2.INTER_NEAREST)
        if self._dilate is not None:
            hole = cv2.dilate(hole, self._dilate)
        return window, crop, hole.astype(np.float32)

    def __call__(self, image: np.ndarray, tracks: list[Track]) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB. Returns a new frame with every masked face reconstructed."""
        todo = [t for t in tracks if t.mask.any()]
        if not todo:
            return image
        prepared = [self.prepare(image, t) for t in todo]
        crops = torch.from_numpy(np.stack([p[1] for p in prepared])).permute(0, 3, 1, 2).float().div_(255.0)
        holes = torch.from_numpy(np.stack([p[2] for p in prepared]))[:, None]
        predicted = self.engine.run({"image": crops.contiguous(), "mask": holes.contiguous()})["output"]
        predicted = (predicted.clamp(0, 1) * 255.0).permute(0, 2, 3, 1).cpu().numpy()
        out = image.copy()
        k = 2 * self.settings.feather + 1
        for (window, crop, hole), generated in zip(prepared, predicted):
            # Feather outwards only: the whole hole stays generated, the seam fades over the border.
            soft = cv2.GaussianBlur(cv2.dilate(hole, np.ones((k, k), np.uint8)), (k, k), 0)
            soft = np.maximum(soft, hole)
            patch = cv2.resize(generated, (window.side, window.side), interpolation=cv2.INTER_CUBIC)
            alpha = cv2.resize(soft, (window.side, window.side), interpolation=cv2.INTER_LINEAR)
            window.paste(out, patch, alpha)
        return out
