"""Image-quality metrics on float images (N,3,H,W) RGB in [0,1]; masks (N,1,H,W) {0,1}.

PSNR and L1 are per image, then averaged; SSIM follows Wang et al. 2004 (11x11 Gaussian window,
sigma 1.5, K1 0.01, K2 0.03, data range 1) on each RGB channel, averaged over channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) PSNR in dB, over the whole image or only where ``mask`` is 1."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.float().expand_as(err)
        mse = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) mean absolute error, over the whole image or only where ``mask`` is 1."""
    err = (pred.float() - target.float()).abs()
    if mask is None:
        return err.flatten(1).mean(1)
    m = mask.float().expand_as(err)
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,1,H',W') SSIM map (valid convolution, channel mean)."""
    c = pred.shape[1]
    win = _gaussian_window().to(pred.device)[None, None].expand(c, 1, -1, -1)
    x, y = pred.float(), target.float()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(1, keepdim=True)


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) SSIM over the whole image, or averaged over window centres inside ``mask``."""
    s = ssim_map(pred, target)
    if mask is None:
        return s.flatten(1).mean(1)
    pad = (mask.shape[-1] - s.shape[-1]) // 2
    m = mask.float()[..., pad:pad + s.shape[-2], pad:pad + s.shape[-1]]
    return (s * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
