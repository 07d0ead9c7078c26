"""Geometry shared by serving, training and evaluation: the detector's letterbox, box overlaps,
and the square crop window around a face, cut and pasted through one affine map each way.

The crop window's cut and paste exist twice over one set of maps: on numpy images with OpenCV,
and on (C, H, W) float tensors with ``grid_sample`` (``cut_tensor``, ``paste_tensor``), so a frame
that lives on the GPU is cut and pasted there instead of making a round trip to the CPU."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engines.models.generator import square_crop_box


@dataclass(frozen=True)
class Letterbox:
    """Resize keeping aspect ratio, pad right and bottom; ``scale`` maps frame to input pixels
    (a box in input pixels divided by ``scale`` is in frame pixels)."""

    scale: float
    width: int
    height: int

    @classmethod
    def fit(cls, frame_hw: tuple[int, int], input_hw: tuple[int, int]) -> Letterbox:
        scale = min(input_hw[0] / frame_hw[0], input_hw[1] / frame_hw[1])
        return cls(scale, max(1, round(frame_hw[1] * scale)), max(1, round(frame_hw[0] * scale)))

    def apply(self, image: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
        """(H, W[, C]) image -> (input H, input W[, C]) of the same dtype, zero padded."""
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (self.width, self.height), interpolation=interp)
        out = np.zeros((*input_hw, *image.shape[2:]), image.dtype)
        out[: self.height, : self.width] = resized.reshape(self.height, self.width, *image.shape[2:])
        return out

    def boxes_to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy boxes in input pixels -> frame pixels (float32)."""
        return (np.asarray(boxes, np.float32) / self.scale).astype(np.float32)

    def map_to_frame(self, values: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
        """An (input H, input W) float map (a mask probability) -> (frame H, frame W), bilinear,
        the padding dropped."""
        return cv2.resize(values[: self.height, : self.width], (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_LINEAR)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) float64 of xyxy boxes a (N, 4) and b (M, 4); 0 for empty boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    inter = _intersection(a, b)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_overlap(inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """Share of each ``inner`` box (N, 4) covered by each ``outer`` box (M, 4): (N, M) float64."""
    inner, outer = np.asarray(inner, np.float64).reshape(-1, 4), np.asarray(outer, np.float64).reshape(-1, 4)
    area = (inner[:, 2] - inner[:, 0]) * (inner[:, 3] - inner[:, 1])
    return _intersection(inner, outer) / np.maximum(area[:, None], 1e-6)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)


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
        to_frame = self._crop_to_frame(size)
        if self.side > 2 * size and interpolation == cv2.INTER_LINEAR:
            # Pre-filter so a large face does not alias when it is shrunk to the generator size;
            # only the window and the margin the blur and the bilinear sampling reach: the whole
            # frame took 11 ms a cut for a large face at 1080p.
            sigma = 0.5 * self.side / size
            x1, y1, x2, y2 = self._reach(image.shape[:2], int(np.ceil(4 * sigma)) + 2)
            image = cv2.GaussianBlur(image[y1:y2, x1:x2], (0, 0), sigma)
            to_frame[:, 2] -= (x1, y1)
        return cv2.warpAffine(image, to_frame, (size, size),
                              flags=interpolation | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    def _reach(self, frame_hw: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2), end exclusive, of the frame pixels within ``margin`` of the window's
        part in the frame (of its nearest edge pixels where it lies outside: the border is
        replicated from those)."""
        h, w = frame_hw
        x1 = min(max(int(np.floor(self.x1)), 0), w - 1)
        y1 = min(max(int(np.floor(self.y1)), 0), h - 1)
        x2 = max(min(int(np.ceil(self.x1 + self.side)), w), x1 + 1)
        y2 = max(min(int(np.ceil(self.y1 + self.side)), h), y1 + 1)
        return max(x1 - margin, 0), max(y1 - margin, 0), min(x2 + margin, w), min(y2 + margin, h)

    def _paste_maps(self, frame_hw: tuple[int, int], patch_side: int, detail_side: int | None,
                    detail_map: np.ndarray | None, support: tuple[int, int, int, int] | None = None,
                    margin: int = 2) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray | None] | None:
        """The frame region a paste touches (x1, y1, x2, y2) and the 2x3 maps from the patch's and
        the detail's pixels to that region's pixels; None where the window misses the frame.

        ``support``: (x1, y1, x2, y2) patch pixels outside which alpha is 0: the region shrinks to
        it, ``margin`` frame pixels wider (bilinear reach, and the detail band's blur: the hole is
        about half the window, so half the paste work is saved)."""
        h, w = frame_hw
        x1, y1, x2, y2 = self.x1, self.y1, self.x1 + self.side, self.y1 + self.side
        if support is not None:
            k = self.side / patch_side
            x1, y1 = self.x1 + support[0] * k - margin, self.y1 + support[1] * k - margin
            x2, y2 = self.x1 + support[2] * k + margin, self.y1 + support[3] * k + margin
        fx1, fy1 = max(int(np.floor(max(x1, self.x1))), 0), max(int(np.floor(max(y1, self.y1))), 0)
        fx2 = min(int(np.ceil(min(x2, self.x1 + self.side))), w)
        fy2 = min(int(np.ceil(min(y2, self.y1 + self.side))), h)
        if fx2 <= fx1 or fy2 <= fy1:
            return None
        to_frame = self._crop_to_frame(patch_side)
        to_frame[:, 2] -= (fx1, fy1)
        to_frame_detail = None
        if detail_side is not None:
            if detail_map is None:
                to_frame_detail = self._crop_to_frame(detail_side)
                to_frame_detail[:, 2] -= (fx1, fy1)
            else:
                to_detail = np.vstack([detail_map, (0, 0, 1)]).astype(np.float64)
                to_frame_detail = (np.vstack([to_frame, (0, 0, 1)]) @ np.linalg.inv(to_detail))[:2].astype(np.float32)
        return (fx1, fy1, fx2, fy2), to_frame, to_frame_detail

    def paste(self, frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray, *,
              detail: np.ndarray | None = None, detail_map: np.ndarray | None = None, detail_sigma: float = 0.0,
              detail_gain: float = 1.0, detail_weight: np.ndarray | None = None) -> None:
        """Blend a (S, S, 3) ``patch`` into ``frame`` in place with its (S, S) ``alpha`` in [0, 1].

        ``detail``: a (R, R, 3) uint8 crop of the same window at any size R (a reference face):
        the patch's band finer than ``detail_sigma`` patch pixels is replaced by that band of
        ``detail``, worked out at frame resolution, so a face larger than the patch gets the
        reference's own lips, nostrils and skin texture instead of an upscaled blur; ``detail_gain``
        scales that band (below 1 for a stranger's face). ``detail_map``: 2x3 from patch pixels to
        ``detail`` pixels where the two are not the same window (None: they are). ``detail_weight``:
        (R, R) float32 in [0, 1], where ``detail``'s band replaces the patch's; elsewhere the patch
        keeps its own (None: everywhere)."""
        with_detail = detail is not None and detail_sigma > 0
        sigma = detail_sigma * self.side / patch.shape[0]
        support = extent_of(alpha > 0)
        if support is None:
            return
        maps = self._paste_maps(frame.shape[:2], patch.shape[0], detail.shape[0] if with_detail else None, detail_map,
                                support, _paste_margin(sigma if with_detail else 0.0))
        if maps is None:
            return
        (fx1, fy1, fx2, fy2), to_frame, to_frame_detail = maps
        size = (fx2 - fx1, fy2 - fy1)
        p = cv2.warpAffine(patch.astype(np.float32), to_frame, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        a = cv2.warpAffine(alpha.astype(np.float32), to_frame, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        if with_detail:
            # lowpass(p) + (d - lowpass(d)) with one blur, not two: lowpass is linear. With a weight,
            # d is the detail where it lends and p elsewhere, so p - d is 0 outside the weight's
            # extent: the detail is warped and the band worked out only there, as far as the blur reaches.
            bx1, by1, bx2, by2 = 0, 0, size[0], size[1]
            w = None
            if detail_weight is not None:
                w = cv2.warpAffine(detail_weight, to_frame_detail, size, flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                lends = extent_of(w > 0)
                if lends is None:
                    bx2 = by2 = 0
                else:
                    reach = _paste_margin(sigma)
                    bx1, by1 = max(lends[0] - reach, 0), max(lends[1] - reach, 0)
                    bx2, by2 = min(lends[2] + reach, size[0]), min(lends[3] + reach, size[1])
            if bx2 > bx1 and by2 > by1:
                to_box = to_frame_detail.copy()
                to_box[:, 2] -= (bx1, by1)
                # Bicubic: the lent band is the finest octave, which a bilinear resample at a
                # sub-pixel shift attenuates by up to half.
                d = cv2.warpAffine(detail.astype(np.float32), to_box, (bx2 - bx1, by2 - by1), flags=cv2.INTER_CUBIC,
                                   borderMode=cv2.BORDER_REPLICATE)
                if detail_gain != 1.0:
                    d *= detail_gain
                box = p[by1:by2, bx1:bx2]
                if w is not None:
                    w = w[by1:by2, bx1:bx2]
                    d = cv2.blendLinear(d, box, w, 1.0 - w)  # one-channel weights over three channels
                box -= d
                box[:] = lowpass(box, sigma)
                box += d
        region = frame[fy1:fy2, fx1:fx2].astype(np.float32)
        p -= region
        p *= a
        p += region + 0.5
        frame[fy1:fy2, fx1:fx2] = np.clip(p, 0, 255, out=p).astype(np.uint8)

    def cut_tensor(self, frame: torch.Tensor, size: int) -> torch.Tensor:
        """``cut`` (bilinear) of a (C, H, W) float tensor on any device: (C, size, size)."""
        to_frame = self._crop_to_frame(size)
        if self.side > 2 * size:
            # The same pre-filter as ``cut``, on the window and a margin the blur reaches into.
            sigma = 0.5 * self.side / size
            x1, y1, x2, y2 = self._reach(tuple(frame.shape[-2:]), int(np.ceil(4 * sigma)) + 2)
            frame = gaussian_blur_tensor(frame[:, y1:y2, x1:x2], sigma, integer_image=True)
            to_frame[:, 2] -= (x1, y1)
        return warp_tensor(frame, to_frame, (size, size), border="replicate")

    def paste_tensor(self, frame: torch.Tensor, patch: torch.Tensor, alpha: torch.Tensor, *,
                     detail: torch.Tensor | None = None, detail_map: np.ndarray | None = None,
                     detail_sigma: float = 0.0, detail_gain: float = 1.0,
                     detail_weight: torch.Tensor | None = None) -> None:
        """``paste`` on tensors, in place: ``frame`` (3, H, W) float in [0, 255] (left unrounded),
        ``patch`` (3, S, S), ``alpha`` (S, S), ``detail`` (3, R, R), ``detail_weight`` (R, R), all on
        ``frame``'s device."""
        with_detail = detail is not None and detail_sigma > 0
        sigma = detail_sigma * self.side / patch.shape[-1]
        # One small download of the alpha's extent saves half the frame-resolution work.
        support = extent_of((alpha > 0).cpu().numpy())
        if support is None:
            return
        maps = self._paste_maps(tuple(frame.shape[-2:]), patch.shape[-1], detail.shape[-1] if with_detail else None,
                                detail_map, support, _paste_margin(sigma if with_detail else 0.0))
        if maps is None:
            return
        (fx1, fy1, fx2, fy2), to_frame, to_frame_detail = maps
        size = (fy2 - fy1, fx2 - fx1)
        p = warp_tensor(patch, _invert(to_frame), size, border="replicate")
        a = warp_tensor(alpha[None], _invert(to_frame), size, border="zeros")
        if with_detail:
            d = warp_tensor(detail, _invert(to_frame_detail), size, border="replicate", mode="bicubic") * detail_gain
            if detail_weight is None:
                p = lowpass_tensor(p - d, sigma) + d
            else:
                x = warp_tensor(detail_weight[None], _invert(to_frame_detail), size, border="zeros") * (p - d)
                p = p - x + lowpass_tensor(x, sigma)
        region = frame[:, fy1:fy2, fx1:fx2]
        region.copy_((region + a * (p - region)).clamp_(0, 255))


def extent_of(nonzero: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2), end exclusive, of the True pixels of an (H, W) bool map; None if none."""
    cols, rows = np.flatnonzero(nonzero.any(axis=0)), np.flatnonzero(nonzero.any(axis=1))
    if not len(cols):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _paste_margin(sigma: float) -> int:
    """Frame pixels a paste region reaches past the alpha's extent: bilinear sampling, and three
    sigmas of the detail band's blur so the band is the same as over the whole window."""
    return 2 + int(np.ceil(3.0 * sigma))


def _invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix.astype(np.float64))


def warp_tensor(src: torch.Tensor, to_src: np.ndarray, out_hw: tuple[int, int], *, border: str,
                mode: str = "bilinear") -> torch.Tensor:
    """(C, h, w) float ``src`` sampled at the output pixels mapped through ``to_src`` (2x3, output
    pixel -> ``src`` pixel, pixel centres at integers): cv2.warpAffine with WARP_INVERSE_MAP on a
    tensor. ``border``: "replicate" or "zeros" (cv2's BORDER_CONSTANT 0); ``mode``: "bilinear" or
    "bicubic" (cv2's INTER_CUBIC: both use a = -0.75)."""
    h, w = out_hw
    m = torch.as_tensor(np.asarray(to_src, np.float64), dtype=torch.float32, device=src.device)
    ys, xs = torch.meshgrid(torch.arange(h, device=src.device, dtype=torch.float32),
                            torch.arange(w, device=src.device, dtype=torch.float32), indexing="ij")
    sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    sh, sw = src.shape[-2:]
    # align_corners=False puts pixel i's centre at (2i + 1) / n - 1.
    grid = torch.stack([(2 * sx + 1) / sw - 1, (2 * sy + 1) / sh - 1], dim=-1)[None]
    padding = {"replicate": "border", "zeros": "zeros"}[border]
    return F.grid_sample(src[None].float(), grid, mode=mode, padding_mode=padding, align_corners=False)[0]


def gaussian_blur_tensor(image: torch.Tensor, sigma: float, *, integer_image: bool = False) -> torch.Tensor:
    """cv2.GaussianBlur(image, (0, 0), sigma) of a (C, H, W) float tensor: the same kernel size
    (OpenCV's: 3 sigma each side for 8-bit images, ``integer_image``, else 4) and reflected border."""
    radius = int(round(sigma * (3 if integer_image else 4) * 2 + 1)) | 1
    kernel = torch.as_tensor(cv2.getGaussianKernel(radius, sigma), dtype=torch.float32, device=image.device).reshape(-1)
    c, h, w = image.shape
    pad = radius // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    x = F.pad(image[None].float(), (pad, pad, pad, pad), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


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


def lowpass_tensor(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``lowpass`` of a (C, H, W) float tensor."""
    factor = int(sigma // 2)
    if factor < 2:
        return gaussian_blur_tensor(image, sigma)
    h, w = image.shape[-2:]
    small = F.interpolate(image[None], size=(max(1, h // factor), max(1, w // factor)), mode="area")[0]
    small = gaussian_blur_tensor(small, sigma / factor)
    return F.interpolate(small[None], size=(h, w), mode="bilinear", align_corners=False)[0]
