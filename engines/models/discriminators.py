"""SN-PatchGAN discriminator (Yu et al. 2019, DeepFill v2) for the face-completion generator.

One spectrally normalised, fully convolutional discriminator whose outputs are a grid of
patch scores. Each score's receptive field (~90 px at 128x128) spans most of the hole, so the
grid judges the local patch inside the hole and, through the overlapping fields, the global
consistency of the face; it replaces DeepFill v1's separate global and local (hole-box)
critics, which need a single rectangular hole (our masks are free-form) and cost two networks.

forward(image (N,3,S,S) float32 RGB [0,1], mask (N,1,S,S) {0,1}) -> (N,1,S/16,S/16) scores;
``features`` also returns the activations of its four strided layers (for feature matching).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class DiscriminatorConfig:
    width: int = 24


class PatchDiscriminator(nn.Module):
    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        w = config.width
        chans = [4, w, 2 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 5, stride=2, padding=2)), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(spectral_norm(nn.Conv2d(chans[-1], 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image * 2.0 - 1.0, mask], dim=1))

    def features(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(scores, the activation after each strided layer, coarsest last)."""
        x = torch.cat([image * 2.0 - 1.0, mask], dim=1)
        acts = []
        for layer in self.net:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                acts.append(x)
        return x, acts


def build_discriminator(*, config: DiscriminatorConfig | None = None) -> PatchDiscriminator:
    return PatchDiscriminator(config or DiscriminatorConfig())
