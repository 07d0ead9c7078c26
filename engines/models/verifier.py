"""Mask verifier: does this face wear a mask? A small CNN on the face's crop window.

The detector's face_mask instances are precise where a mask is worn, but on unmasked faces it
also finds low-confidence "masks" on chins, lips and hands at the mouth. A face-level yes/no
trained on real unmasked photos (and hands, microphones, masks held or pulled under the chin)
against real and synthetic masked faces vetoes those without moving the detector's masks.

forward(image (N,3,S,S) float32 RGB [0,1]: the face's crop window as the generator frames it,
``stream.geometry.CropWindow.for_face(box, crop_scale)``) -> logit (N,) float32, > 0: masked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engines.models.checkpoint import load_weights, save_checkpoint
from engines.runtime import WeightsError

INPUT_NAMES = ("image",)
OUTPUT_NAMES = ("logit",)


class VerifierWeightsError(WeightsError):
    """A verifier checkpoint is missing, unreadable or does not match its config."""


@dataclass(frozen=True)
class VerifierConfig:
    """size: side of the square input crop; width: channels of the first layer (doubling per
    stage to 4x); crop_scale: the crop window around the face box, as the generator's;
    threshold: probability above which a face counts as masked (chosen on the training
    run's validation scenes and stored with the weights)."""

    size: int = 64
    width: int = 16
    crop_scale: float = 1.2
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.size % 16 or self.size < 32:
            raise ValueError(f"size must be a multiple of 16 and >= 32, got {self.size}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MaskVerifier(nn.Module):
    def __init__(self, config: VerifierConfig) -> None:
        super().__init__()
        self.config = config
        a = config.width
        self.features = nn.Sequential(_stage(3, a), _stage(a, 2 * a), _stage(2 * a, 4 * a), _stage(4 * a, 4 * a))
        self.head = nn.Linear(4 * a, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feat = self.features(image * 2.0 - 1.0).mean(dim=(2, 3))
        return self.head(feat)[:, 0]


def build_verifier(*, config: VerifierConfig | None = None) -> MaskVerifier:
    return MaskVerifier(config or VerifierConfig())


def save_verifier(model: nn.Module, config: VerifierConfig, path: str | Path, *, meta: dict | None = None) -> None:
    save_checkpoint(model, dataclasses.asdict(config), path, meta=meta)


def load_verifier(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[MaskVerifier, VerifierConfig]:
    return load_weights(path, kind="verifier", config_type=VerifierConfig,
                        build=lambda config: build_verifier(config=config), error=VerifierWeightsError, device=device)
