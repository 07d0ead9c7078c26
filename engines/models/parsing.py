"""A small face-parsing net (semantic part segmentation), after Generative Face Completion
(Li et al. 2017): trained on landmark-derived part labels, then frozen, its loss between
completed and real faces keeps the generator's mouths, noses and jaws in place.

forward(image (N,3,S,S) float32 RGB [0,1]) -> logits (N, C, S, S) float32, C = len(PARSING_CLASSES).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engines.models.checkpoint import load_weights, save_checkpoint
from engines.runtime import WeightsError

logger = logging.getLogger(__name__)

# "left"/"right" are image sides. Hair and neck are absent: dlib's 68 landmarks give no outline
# for them, so they fall into background.
PARSING_CLASSES = (
    "background",
    "skin",
    "brow_left",
    "brow_right",
    "eye_left",
    "eye_right",
    "nose",
    "upper_lip",
    "inner_mouth",
    "lower_lip",
)


class ParsingWeightsError(WeightsError):
    """A parsing checkpoint is missing, unreadable or does not match its config."""


@dataclass(frozen=True)
class ParsingConfig:
    width: int = 16
    num_classes: int = len(PARSING_CLASSES)
    # Side of the square crops it is exported for: the generator's crops, on which the pipeline
    # locates a face's parts. The network itself takes any size divisible by 8.
    input_size: int = 128


def _block(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class FaceParsingNet(nn.Module):
    """U-Net-like: three stride-2 stages to 1/8, dilated context, decoder with skips to 1/2,
    logits upsampled bilinearly to the input size."""

    def __init__(self, config: ParsingConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.enc1 = _block(3, w, stride=2)  # 1/2
        self.enc2 = nn.Sequential(_block(w, 2 * w, stride=2), _block(2 * w, 2 * w))  # 1/4
        self.enc3 = nn.Sequential(_block(2 * w, 4 * w, stride=2), _block(4 * w, 4 * w, dilation=2),
                                  _block(4 * w, 4 * w, dilation=4))  # 1/8
        self.dec2 = _block(4 * w + 2 * w, 2 * w)
        self.dec1 = _block(2 * w + w, w)
        self.head = nn.Conv2d(w, config.num_classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image * 2.0 - 1.0
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="bilinear", align_corners=False), e1], 1))
        return F.interpolate(self.head(d1), size=image.shape[-2:], mode="bilinear", align_corners=False).float()


def build_parsing_net(*, config: ParsingConfig | None = None) -> FaceParsingNet:
    return FaceParsingNet(config or ParsingConfig())


def save_parsing_net(model: nn.Module, config: ParsingConfig, path: str | Path, *, meta: dict | None = None) -> None:
    """Save config + fp16 state dict (+ JSON-able ``meta``)."""
    save_checkpoint(model, dataclasses.asdict(config), path, meta=meta)


def load_parsing_net(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[FaceParsingNet, ParsingConfig]:
    """Load a checkpoint written by ``save_parsing_net``; returns the float32 model in eval mode."""
    return load_weights(path, kind="parsing", config_type=ParsingConfig,
                        build=lambda config: build_parsing_net(config=config), error=ParsingWeightsError, device=device)
