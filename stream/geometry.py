"""Face crop geometry shared by the stages: the square crop window around a face, cut and pasted
through one affine map each way."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.models.generator import square_crop_box


@dataclass(frozen=True)
class CropWindow:
    """A square face crop in frame pixels, at sub-pixel precision.

    Cutting and pasting go through one affine map each way, so a crop that drifts by a
    fraction of a pixel moves its pixels by that fraction: rounding the window to whole pixels
    would make the upscaled reconstruction jump and shimmer on a still face.
    """

    x1: float
    y1: float
    side: float

    @classmethod
    def for_face(cls, box: np.ndarray, crop_scale: float) -> CropWindow:
        sq = square_crop_box(box, crop_scale=crop_scale)
        return cls(float(sq[0]), float(sq[1]), max(float(sq[2] - sq[0]), 8.0))

    def _crop_to_frame(self, size: int) -> np.ndarray:
        """2x3 map from crop pixel centres (size x size) to frame coordinates."""
        k = self.side / size
        return np.array([[k, 0, self.x1 + 0.5 * k - 0.5], [0, k, self.y1 + 0.5 * k - 0.5]], np.float32)

    def to_crop(self, size: int) -> np.ndarray:
        """2x3 float64 map from frame pixels to pixels of the (size x size) crop (the inverse of
        what ``cut`` samples with), for carrying points such as landmarks into the crop."""
        k = self.side / size
        return np.array([[1 / k, 0, -(self.x1 - 0.5 + 0.5 * k) / k], [0, 1 / k, -(self.y1 - 0.5 + 0.5 * k) / k]])

    def cut(self, image: np.ndarray, size: int, *, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """The window resampled to (size, size, ...); edges replicated where it leaves the frame."""
        if self.side > 2 * size and interpolation == cv2.INTER_LINEAR:
            # Pre-filter so a large face does not alias when it is shrunk to the generator size.
            sigma = 0.5 * self.side / size
            image = cv2.GaussianBlur(image, (0, 0), sigma)
        return cv2.warpAffine(image, self._crop_to_frame(size), (size, size),
                              flags=interpolation | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    def paste(self, frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray, *,
              detail: np.ndarray | None = None, detail_map: np.ndarray | None = None, detail_sigma: float = 0.0,
              detail_gain: float = 1.0) -> None:
        """Blend a (S, S, 3) ``patch`` into ``frame`` in place with its (S, S) ``alpha`` in [0, 1].

        ``detail``: a (R, R, 3) uint8 crop of the same window at any size R (a reference face):
        the patch's band finer than ``detail_sigma`` patch pixels is replaced by that band of
        ``detail``, worked out at frame resolution, so a face larger than the patch gets the
        reference's own lips, nostrils and skin texture instead of an upscaled blur; ``detail_gain``
        scales that band (below 1 for a stranger's face). ``detail_map``: 2x3 from patch pixels to
        ``detail`` pixels where the two are not the same window (None: they are)."""
        h, w = frame.shape[:2]
        fx1, fy1 = max(int(np.floor(self.x1)), 0), max(int(np.floor(self.y1)), 0)
        fx2, fy2 = min(int(np.ceil(self.x1 + self.side)), w), min(int(np.ceil(self.y1 + self.side)), h)
        if fx2 <= fx1 or fy2 <= fy1:
            return
        to_frame = self._crop_to_frame(patch.shape[0])
        to_frame[:, 2] -= (fx1, fy1)
        size = (fx2 - fx1, fy2 - fy1)
        p = cv2.warpAffine(patch.astype(np.float32), to_frame, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        a = cv2.warpAffine(alpha.astype(np.float32), to_frame, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        if detail is not None and detail_sigma > 0:
            if detail_map is None:
                to_frame_detail = self._crop_to_frame(detail.shape[0])
                to_frame_detail[:, 2] -= (fx1, fy1)
            else:
                to_detail = np.vstack([detail_map, (0, 0, 1)]).astype(np.float64)
                to_frame_detail = (np.vstack([to_frame, (0, 0, 1)]) @ np.linalg.inv(to_detail))[:2].astype(np.float32)
            d = cv2.warpAffine(detail.astype(np.float32), to_frame_detail, size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
            sigma = detail_sigma * self.side / patch.shape[0]
            p = lowpass(p, sigma) + detail_gain * (d - lowpass(d, sigma))
        region = frame[fy1:fy2, fx1:fx2].astype(np.float32)
        frame[fy1:fy2, fx1:fx2] = np.clip(a * p + (1 - a) * region + 0.5, 0, 255).astype(np.uint8)


def lowpass(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H, W, C) float32 image; a wide one is worked out at a reduced size
    (the blurred image has nothing the small grid cannot hold), which keeps it a few milliseconds
    on a large face."""
    factor = int(sigma // 2)
    if factor < 2:
        return cv2.GaussianBlur(image, (0, 0), sigma)
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
