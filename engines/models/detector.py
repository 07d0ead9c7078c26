"""Mask R-CNN face / face-mask segmenter, trained from scratch.

Classes: 0 background, 1 ``face`` (whole-face box; its mask is the face region),
2 ``face_mask`` (instance mask of the worn mask).

The network is torchvision's :class:`~torchvision.models.detection.MaskRCNN` with a
light FPN (stride 8/16/32/64) and slim heads, sized for a fixed, small input
(``DetectorConfig.input_size``) so that CPU inference stays real-time. Nothing is
pretrained: normalisation layers are trainable BatchNorm (default) or GroupNorm, never
FrozenBatchNorm, whose frozen identity statistics would make a from-scratch network
untrainable.

Images entering the model are float32 RGB in [0, 1], already letterboxed to
``input_size`` (resize keeping aspect, pad right/bottom with 0). The internal
``GeneralizedRCNNTransform`` is configured so that such an image is not resized again;
it only normalises with ``image_mean``/``image_std`` (ImageNet statistics, a neutral
choice for natural photos).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from engines.models.checkpoint import load_checkpoint, save_checkpoint
from engines.runtime import WeightsError

FACE = 1
FACE_MASK = 2
CLASS_NAMES = ("__background__", "face", "face_mask")

BACKBONES = ("mobilenet_v3", "resnet18", "resnet50")
NORMS = ("batchnorm", "groupnorm")
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")
INPUT_NAME = "image"


class DetectorConfigError(WeightsError, ValueError):
    """Raised for an invalid :class:`DetectorConfig`."""


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Architecture and inference settings of the detector.

    ``input_size`` is (H, W) in pixels; the model only ever sees images of that size.
    Anchor sizes are in input pixels, one tuple per pyramid level (stride 8, 16, 32, 64),
    each tuple of the same length; ``anchor_ratios`` are height / width.
    """

    backbone: str = "mobilenet_v3"
    input_size: tuple[int, int] = (320, 320)
    norm: str = "batchnorm"
    fpn_channels: int = 128
    box_head_dim: int = 512
    mask_head_channels: int = 128
    mask_head_layers: int = 2
    anchor_sizes: tuple[tuple[int, ...], ...] = ((16, 24), (32, 48), (64, 96), (128, 224))
    anchor_ratios: tuple[float, ...] = (0.8, 1.0, 1.3)
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 300
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 50
    rpn_batch_size_per_image: int = 128
    box_batch_size_per_image: int = 64
    box_score_thresh: float = 0.3
    box_nms_thresh: float = 0.4
    box_detections_per_img: int = 12
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise DetectorConfigError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.norm not in NORMS:
            raise DetectorConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if len(self.input_size) != 2 or min(self.input_size) < 64 or any(s % 32 for s in self.input_size):
            raise DetectorConfigError(f"input_size must be (H, W), multiples of 32 and >= 64, got {self.input_size}")
        if len(self.anchor_sizes) != 4 or len({len(s) for s in self.anchor_sizes}) != 1:
            raise DetectorConfigError("anchor_sizes needs 4 levels with the same number of sizes each")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, lists become tuples."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise DetectorConfigError(f"unknown config keys: {sorted(unknown)}")

        def tup(v):
            return tuple(tup(x) for x in v) if isinstance(v, (list, tuple)) else v

        return cls(**{k: tup(v) for k, v in d.items()})


def _group_norm(num_channels: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if num_channels % g == 0 and num_channels // g >= 4 or g == 1)
    return nn.GroupNorm(groups, num_channels)


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "groupnorm":
        return _group_norm
    return nn.BatchNorm2d


def _backbone(config: DetectorConfig) -> BackboneWithFPN:
    """Randomly initialised backbone + FPN returning maps '0' (stride 8), '1' (16), '2' (32), 'pool' (64)."""
    norm = _norm_layer(config.norm)
    if config.backbone == "mobilenet_v3":
        # The MobileNet default BN momentum (0.01) lets running statistics lag far behind
        # weights that change quickly in from-scratch training; eval mode then breaks.
        bn = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.1) if config.norm == "batchnorm" else norm
        body = mobilenet_v3_large(weights=None, norm_layer=bn).features
        # Last block at stride 8 (40 ch), at stride 16 (112 ch), and the final 1x1 conv (960 ch).
        return_layers = {"6": "0", "12": "1", "16": "2"}
        in_channels = [body[i].out_channels for i in (6, 12, 16)]
    else:
        make = resnet50 if config.backbone == "resnet50" else resnet18
        body = make(weights=None, norm_layer=norm)
        return_layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
        width = 512 if config.backbone == "resnet50" else 128
        in_channels = [width, width * 2, width * 4]
    return BackboneWithFPN(
        body,
        return_layers,
        in_channels,
        config.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=norm,
    )


def build_detector(config: DetectorConfig) -> MaskRCNN:
    """Build a randomly initialised Mask R-CNN for :data:`CLASS_NAMES` (no weights are loaded)."""
    num_classes = len(CLASS_NAMES)
    backbone = _backbone(config)
    norm = _norm_layer(config.norm)
    c = config.fpn_channels
    anchors = AnchorGenerator(config.anchor_sizes, (config.anchor_ratios,) * len(config.anchor_sizes))
    levels = ["0", "1", "2"]
    box_head = TwoMLPHead(c * 7 * 7, config.box_head_dim)
    mask_head = MaskRCNNHeads(c, [config.mask_head_channels] * config.mask_head_layers, 1, norm_layer=norm)
    h, w = config.input_size
    model = MaskRCNN(
        backbone,
        num_classes=None,
        # min/max equal to the input's short/long side: a letterboxed input is not rescaled.
        min_size=min(h, w),
        max_size=max(h, w),
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(c, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(config.box_head_dim, num_classes),
        box_batch_size_per_image=config.box_batch_size_per_image,
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
        box_detections_per_img=config.box_detections_per_img,
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(config.mask_head_channels, config.mask_head_channels, num_classes),
    )
    _init_weights(model)
    return model


def _init_weights(model: nn.Module) -> None:
    # Zero-init of the last norm's scale in residual branches is not available for all
    # backbones; instead keep the detection-specific output layers small so that the first
    # steps are dominated by the classification losses rather than huge regressions.
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    roi = model.roi_heads
    nn.init.normal_(roi.box_predictor.cls_score.weight, std=0.01)
    nn.init.normal_(roi.box_predictor.bbox_pred.weight, std=0.001)
    for layer in (roi.box_predictor.cls_score, roi.box_predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    rpn = model.rpn.head
    for layer in (rpn.cls_logits, rpn.bbox_pred):
        nn.init.normal_(layer.weight, std=0.01)
        nn.init.zeros_(layer.bias)
    # Prior: few anchors contain a face, so start the objectness near p=0.01 (focal-loss style).
    nn.init.constant_(rpn.cls_logits.bias, -math.log(99.0))


class DetectorExport(nn.Module):
    """Single-image wrapper used for ONNX export and at runtime.

    ``forward(image)``: image (1, 3, H, W) float32 RGB in [0, 1] at ``config.input_size``.
    Returns ``boxes`` (N, 4) float32 xyxy input pixels, ``labels`` (N,) int64 (see
    :data:`CLASS_NAMES`), ``scores`` (N,) float32, ``masks`` (N, 1, H, W) float32
    probabilities in [0, 1], sorted by descending score.
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([image[0]])[0]
        return (
            out["boxes"].float(),
            out["labels"].long(),
            out["scores"].float(),
            out["masks"].float(),
        )


def save_detector(model: nn.Module, config: DetectorConfig, path: str | Path, *, meta: dict) -> None:
    """Store ``{"config", "state_dict" (floating tensors in fp16), "meta"}`` at ``path``.

    ``meta`` should describe training (steps, data, date); it must hold only plain
    Python types so that the file loads with ``weights_only=True``.
    """
    save_checkpoint(model, config.to_dict(), path, meta=meta)


def load_detector(path: str | Path) -> tuple[MaskRCNN, DetectorConfig]:
    """Load a file written by :func:`save_detector`; the model is fp32 and in eval mode."""
    config_dict, state, _ = load_checkpoint(path)
    try:
        config = DetectorConfig.from_dict(config_dict)
    except (DetectorConfigError, TypeError) as exc:
        raise WeightsError(f"{path} does not hold detector weights: {exc}") from exc
    model = build_detector(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit the detector config they carry (another model's file?)") from exc
    return model.eval(), config


def load_detector_meta(path: str | Path) -> dict:
    """The ``meta`` dict stored by :func:`save_detector`."""
    return load_checkpoint(path)[2]
