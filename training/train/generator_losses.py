"""Losses for the face-completion generator.

Images (N,3,H,W) float32 RGB [0,1]; masks (N,1,H,W) {0,1}, 1 = hole; discriminator scores any shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, hole_weight: float) -> torch.Tensor:
    """Mean L1 with pixels inside the hole weighted ``hole_weight`` and known pixels 1."""
    weight = 1.0 + (hole_weight - 1.0) * mask
    return ((pred.float() - target.float()).abs() * weight).mean()


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_scores.float()).mean() + F.relu(1.0 + fake_scores.float()).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.float().mean()


def feature_matching_loss(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the discriminator's layers of the L1 distance between its activations on the
    completed face and on the real one (pix2pixHD): the generator is pulled towards the texture
    statistics the critic sees in real faces, with a gradient that does not vanish once the
    critic is sure, unlike the adversarial term alone."""
    return torch.stack([(f.float() - r.detach().float()).abs().mean() for f, r in zip(fake, real)]).mean()


def composite(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prediction inside the hole, ``image`` outside."""
    return pred * mask + image * (1.0 - mask)


class ParsingLoss(nn.Module):
    """Cross-entropy between the frozen parsing net's prediction on the completed face and its
    own labelling (argmax) of the real face (Generative Face Completion's semantic loss).

    The net is put in eval mode and its parameters frozen; gradients only reach the input.
    """

    def __init__(self, parsing_net: nn.Module) -> None:
        super().__init__()
        self.net = parsing_net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ParsingLoss":
        # Stay in eval mode: BatchNorm statistics belong to the frozen net.
        super().train(False)
        return self

    def forward(self, completed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            labels = self.net(real).argmax(1)
        return F.cross_entropy(self.net(completed).float(), labels)
