"""Face-completion generator after DeepFill v1 (Yu et al. 2018) and Generative Face Completion
(Li et al. 2017), sized for real-time CPU inference on 128x128 face crops.

Two stages:

* a coarse encoder-decoder (gated convolutions in the encoder, dilated convolutions in the
  bottleneck) that fills the hole with a blurry estimate, and
* a refine network whose bottleneck has two branches side by side: dilated convolutions, and
  contextual attention that copies features from known-region patches into the hole.

Images are float32 RGB in [0, 1], NCHW; masks are float32 {0, 1}, N1HW, 1 = hole. The generator
never looks at pixels inside the hole (they are zeroed on entry), so callers may pass the raw
frame crop with the face mask still visible.
"""

from __future__ import annotations

import dataclasses
import math
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.models.checkpoint import load_weights, save_checkpoint
from engines.runtime import WeightsError

logger = logging.getLogger(__name__)

INPUT_NAMES = ("image", "mask")
REFERENCE_INPUT_NAMES = ("image", "mask", "reference", "reference_mask")
OUTPUT_NAMES = ("output",)


class GeneratorWeightsError(WeightsError):
    """A generator checkpoint is missing, unreadable or does not match its config."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of the generator and of the crops it expects.

    size: side of the square input crop in pixels (must be a multiple of 8).
    width: channel count of the first layer; deeper layers use 2x and 4x of it.
    crop_scale: side of the square crop divided by the longer side of the whole-face box
        (face box = chin to brows as given by the detector/synthesizer; > 1 so the chin and
        forehead are inside the crop).
    mask_dilation: pixels (at crop size) by which the binary face-mask is grown before it is
        used as the hole, so the mask's edge and shadow are regenerated too.
    attention_scale: softmax temperature of contextual attention (DeepFill uses 10).
    output_blur: sigma in pixels of a fixed Gaussian applied to the output at inference (0:
        none). A small model's pixel-shuffle output keeps a faint 2x2 checkerboard that the
        upscale into a large face makes visible; the blur removes it (and raises held-out
        PSNR: the pattern is error, not detail). Training uses ``forward_stages``, unblurred.
    reference: the generator also takes a reference face aligned to the crop (``reference``
        (N,3,S,S) RGB [0,1] and ``reference_mask`` (N,1,S,S) {0,1}, 1 where the reference is
        valid; all zeros means "no reference"). It enters both networks as extra channels, and
        contextual attention may borrow patches from it as well as from the visible face.
    """

    size: int = 128
    width: int = 16
    crop_scale: float = 1.2
    mask_dilation: int = 5
    attention_scale: float = 10.0
    output_blur: float = 0.0
    reference: bool = False

    @property
    def input_names(self) -> tuple[str, ...]:
        return REFERENCE_INPUT_NAMES if self.reference else INPUT_NAMES

    def __post_init__(self) -> None:
        if self.size % 8 or self.size < 32:
            raise ValueError(f"size must be a multiple of 8 and >= 32, got {self.size}")
        if self.width < 4:
            raise ValueError(f"width must be >= 4, got {self.width}")
        if self.crop_scale < 1.0:
            raise ValueError(f"crop_scale must be >= 1, got {self.crop_scale}")
        if self.mask_dilation < 0:
            raise ValueError(f"mask_dilation must be >= 0, got {self.mask_dilation}")
        if self.output_blur < 0:
            raise ValueError(f"output_blur must be >= 0, got {self.output_blur}")


def square_crop_box(face_box_xyxy: np.ndarray, *, crop_scale: float) -> np.ndarray:
    """The square crop the generator expects for a face.

    face_box_xyxy: (4,) xyxy pixels of the whole face. Returns (4,) float32 xyxy pixels of a
    square with the same centre and side ``crop_scale * max(face width, face height)``. The box
    may extend past the image; callers pad (e.g. by edge replication) when they cut it out.
    """
    box = np.asarray(face_box_xyxy, dtype=np.float64).reshape(-1)
    if box.shape != (4,):
        raise ValueError(f"face box must have 4 values (xyxy), got shape {np.shape(face_box_xyxy)}")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"degenerate face box {box.tolist()}")
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    half = crop_scale * max(box[2] - box[0], box[3] - box[1]) / 2.0
    return np.array([cx - half, cy - half, cx + half, cy + half], dtype=np.float32)


class GatedConv2d(nn.Module):
    """Gated convolution (Yu et al. 2019): features * sigmoid(gate), so each pixel learns how
    much to trust its (partly hole-covered) receptive field."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.cout = cout
        self.conv = nn.Conv2d(cin, 2 * cout, kernel, stride=stride, padding=dilation * (kernel - 1) // 2,
                              dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat, gate = torch.split(self.conv(x), self.cout, dim=1)
        return F.leaky_relu(feat, 0.2) * torch.sigmoid(gate)


class ConvAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel - 1) // 2, dilation=dilation),
            nn.LeakyReLU(0.2, inplace=True),
        )


class UpConv(nn.Sequential):
    """2x nearest upsampling then a 3x3 conv (avoids the checkerboard of transposed convs)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvAct(cin, cout))


def _shifted_patches(x: torch.Tensor) -> torch.Tensor:
    """3x3 neighbourhoods stacked on channels: (N, C, H, W) -> (N, 9C, H, W).

    Equivalent to ``F.unfold(x, 3, padding=1)`` reshaped to a map, written with pad + slice +
    concat so the exported graph only uses ops every ONNX consumer (TensorRT included) has.
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    return torch.cat([padded[:, :, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], dim=1)


class ContextualAttention(nn.Module):
    """Contextual attention (DeepFill v1) from hole positions onto known-region patches.

    Matching compares 3x3 patches of a half-resolution, channel-projected copy of the
    features (cosine similarity, softmax over fully known patches only); the matched content
    is pasted back as non-overlapping 2x2 patches of the full-resolution features (unfold with
    stride = kernel, i.e. pixel unshuffle; fold without overlap, i.e. pixel shuffle). Known
    positions keep their own features. Matching and softmax always run in float32, also under
    autocast, because the scaled scores overflow float16.

    forward(x (N, C, H, W), keys (N, K, H/2, W/2), mask (N, 1, H, W) {0, 1}, 1 = hole)
    -> (N, C, H, W) float32. H and W must be even. ``source`` adds a second set of candidate
    patches (a reference face's features, keys and invalid-pixel mask, shaped like x, keys and
    mask); hole positions then match over the known face and the valid reference together.
    """

    def __init__(self, *, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                source: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, keys, mask = x.float(), keys.float(), mask.float()
            n, c, h, w = x.shape
            patches, key_hole, values = self._candidates(x, keys, mask)
            queries = patches
            if source is not None:
                more = self._candidates(*(t.float() for t in source))
                patches, key_hole, values = (torch.cat([a, b], dim=2) for a, b in zip((patches, key_hole, values), more))
            scores = torch.bmm(queries.transpose(1, 2), patches) * self.scale  # (N, L query, L key)
            attn = torch.softmax(scores - key_hole * 1e4, dim=-1)
            pasted = torch.bmm(values, attn.transpose(1, 2))  # (N, 4C, L query)
            pasted = F.pixel_shuffle(pasted.reshape(n, 4 * c, h // 2, w // 2), 2)
            return pasted * mask + x * (1.0 - mask)

    @staticmethod
    def _candidates(x: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised 3x3 key patches (N, 9K, L), their invalidity (N, 1, L) and the 2x2 value
        patches (N, 4C, L) of one feature map."""
        hole = F.max_pool2d(mask, 2)  # a low-res position is a hole if any of its pixels is
        patches = _shifted_patches(keys).flatten(2)
        patches = patches / patches.norm(dim=1, keepdim=True).clamp_min(1e-4)
        # A patch is a valid source only if its whole 3x3 support is known.
        key_hole = F.max_pool2d(hole, 3, stride=1, padding=1).flatten(2)
        return patches, key_hole, F.pixel_unshuffle(x, 2).flatten(2)


class CoarseNet(nn.Module):
    """Runs on a half-resolution copy of the input (the coarse guess is blurry anyway), so
    its bottleneck sees the whole face at 1/8 of the crop size for a quarter of the cost."""

    def __init__(self, width: int, *, extra_in: int = 0) -> None:
        super().__init__()
        a, b, c = width, 2 * width, 3 * width
        self.net = nn.Sequential(
            GatedConv2d(5 + extra_in, a, 5, stride=2),
            GatedConv2d(a, b, 3),
            GatedConv2d(b, c, 3, stride=2),
            ConvAct(c, c, dilation=2),
            ConvAct(c, c, dilation=4),
            ConvAct(c, c, dilation=8),
            ConvAct(c, c),
            UpConv(c, b),
            nn.Conv2d(b, 12, 3, padding=1),
            nn.PixelShuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RefineNet(nn.Module):
    """Full-resolution refinement: a shared strided stem, then a dilated-conv branch and a
    contextual-attention branch at 1/4 resolution, merged and decoded with a skip from the
    stem and a sub-pixel (pixel shuffle) output layer instead of full-resolution convs."""

    def __init__(self, width: int, *, attention_scale: float, extra_in: int = 0) -> None:
        super().__init__()
        a, b, c = width, 2 * width, 3 * width
        self.stem = GatedConv2d(5 + extra_in, a, 5, stride=2)
        self.down = ConvAct(a, b, stride=2)
        self.conv_branch = nn.Sequential(
            ConvAct(b, c),
            ConvAct(c, c, dilation=2),
            ConvAct(c, c, dilation=4),
            ConvAct(c, c, dilation=8),
        )
        self.attention_in = ConvAct(b, c)
        self.attention_keys = nn.Conv2d(c, a, 1)
        self.attention = ContextualAttention(scale=attention_scale)
        self.attention_out = ConvAct(c, c)
        self.merge = ConvAct(2 * c, c, 1)
        self.up = UpConv(c, b)
        self.out = nn.Sequential(ConvAct(b + a, b), nn.Conv2d(b, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """reference: (the reference's input, laid out like x, and its invalid-pixel mask): its
        features, from the same stem, are extra candidates for contextual attention."""
        n = x.shape[0]
        if reference is not None:
            x = torch.cat([x, reference[0]], dim=0)  # one pass of the shared layers for both
        stem = self.stem(x)
        feat = self.down(stem)
        att_in = self.attention_in(feat)
        keys = self.attention_keys(F.avg_pool2d(att_in, 2))
        source = None
        if reference is not None:
            source = (att_in[n:], keys[n:], F.max_pool2d(reference[1], 4))
            stem, feat, att_in, keys = stem[:n], feat[:n], att_in[:n], keys[:n]
        conv = self.conv_branch(feat)
        att = self.attention(att_in, keys, F.max_pool2d(mask, 4), source).to(att_in.dtype)
        att = self.attention_out(att)
        merged = self.up(self.merge(torch.cat([conv, att], dim=1)))
        return self.out(torch.cat([merged, stem], dim=1))


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.tanh(x) + 1.0)


def _net_input(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Image in [-1, 1] with the hole zeroed, the mask, and a ones channel that lets the first
    # convs find the crop border under zero padding (as in DeepFill).
    return torch.cat([(image * 2.0 - 1.0) * (1.0 - mask), mask, torch.ones_like(mask)], dim=1)


class FaceCompletionGenerator(nn.Module):
    """forward(image (N,3,S,S) float32 RGB [0,1], mask (N,1,S,S) float32 {0,1}, 1 = hole)
    -> (N,3,S,S) float32 RGB [0,1]: the refined prediction for every pixel (not composited).

    ``forward_stages`` also returns the coarse prediction (full size) for training.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        extra = 4 if config.reference else 0
        self.coarse = CoarseNet(config.width, extra_in=extra)
        self.refine = RefineNet(config.width, attention_scale=config.attention_scale, extra_in=extra)
        self.blur = GaussianBlur(config.output_blur) if config.output_blur > 0 else None

    def forward_stages(self, image: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor | None = None,
                       reference_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (mask > 0.5).to(image.dtype)
        known = image * (1.0 - mask)  # never read pixels inside the hole
        half_in = _net_input(F.avg_pool2d(known, 2), F.max_pool2d(mask, 2))
        refine_ref = None
        if self.config.reference:
            if reference is None or reference_mask is None:
                raise ValueError("this generator takes a reference and reference_mask (all zeros for none)")
            valid = (reference_mask > 0.5).to(image.dtype)
            ref_in = torch.cat([(reference * 2.0 - 1.0) * valid, valid], dim=1)
            half_in = torch.cat([half_in, F.avg_pool2d(ref_in, 2)], dim=1)
            # The reference's own pass through the refine stem: laid out like the face's input,
            # its invalid pixels as the hole, no reference channels.
            invalid = 1.0 - valid
            refine_ref = (torch.cat([ref_in[:, :3], invalid, torch.ones_like(invalid), torch.zeros_like(ref_in)], dim=1),
                          invalid)
        coarse = F.interpolate(_to_unit(self.coarse(half_in)), scale_factor=2.0, mode="bilinear",
                               align_corners=False)
        blended = coarse * mask + known
        refine_in = torch.cat([blended * 2.0 - 1.0, mask, torch.ones_like(mask)], dim=1)
        if self.config.reference:
            refine_in = torch.cat([refine_in, ref_in], dim=1)
        refined = _to_unit(self.refine(refine_in, mask, refine_ref))
        return coarse.float(), refined.float()

    def forward(self, image: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None) -> torch.Tensor:
        refined = self.forward_stages(image, mask, reference, reference_mask)[1]
        return refined if self.blur is None else self.blur(refined)


class GaussianBlur(nn.Module):
    """A fixed Gaussian blur of each channel (depthwise conv, edge-replicated border); the
    kernel follows from ``sigma`` and is not stored in checkpoints."""

    def __init__(self, sigma: float, channels: int = 3) -> None:
        super().__init__()
        radius = max(1, math.ceil(2.0 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-0.5 * (x / sigma) ** 2)
        g = g / g.sum()
        kernel = (g[:, None] * g[None, :]).expand(channels, 1, -1, -1).contiguous()
        self.register_buffer("kernel", kernel, persistent=False)
        self.radius = radius
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 also under autocast: the output is final pixels, and bfloat16 rounds at 1/256.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.pad(x.float(), (self.radius,) * 4, mode="replicate")
            return F.conv2d(x, self.kernel, groups=self.channels)


def build_generator(*, config: GeneratorConfig | None = None) -> FaceCompletionGenerator:
    return FaceCompletionGenerator(config or GeneratorConfig())


def widen_inputs(model: FaceCompletionGenerator, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` of a generator without a reference into ``model`` (which takes one): the
    weights of the reference's extra input channels start at zero, so the widened model begins
    as exactly the old one and learns to use the reference from there."""
    own = model.state_dict()
    for name, value in state.items():
        if name in own and own[name].shape != value.shape and own[name].dim() == 4 and value.dim() == 4:
            widened = torch.zeros_like(own[name])
            widened[:, : value.shape[1]] = value
            state[name] = widened
    model.load_state_dict(state)


def without_reference(model: FaceCompletionGenerator) -> FaceCompletionGenerator:
    """The same generator for faces that have no reference, in the form that takes none.

    For a reference-conditioned model it computes what that model computes with an all-zero
    ``reference_mask`` (the zero reference channels meet weights that add nothing, and every
    reference patch is masked out of contextual attention), but skips the reference's pass through
    the refine stem and its attention candidates: about a quarter of the cost. The weights of the
    reference channels are dropped; a model without a reference is returned unchanged.
    """
    if not model.config.reference:
        return model
    plain = build_generator(config=dataclasses.replace(model.config, reference=False))
    own = plain.state_dict()
    plain.load_state_dict({name: value[:, : own[name].shape[1]] if value.shape != own[name].shape else value
                           for name, value in model.state_dict().items()})
    return plain.eval()


def save_generator(model: nn.Module, config: GeneratorConfig, path: str | Path, *, meta: dict | None = None) -> None:
    """Save config + fp16 state dict (+ free-form JSON-able ``meta``)."""
    save_checkpoint(model, dataclasses.asdict(config), path, meta=meta)


def load_generator(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[FaceCompletionGenerator, GeneratorConfig]:
    """Load a checkpoint written by ``save_generator``; returns the float32 model in eval mode."""
    return load_weights(path, kind="generator", config_type=GeneratorConfig,
                        build=lambda config: build_generator(config=config), error=GeneratorWeightsError, device=device)
