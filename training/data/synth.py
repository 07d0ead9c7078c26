"""Synthetic face masks drawn onto unmasked faces (the MaskTheFace method).

A mask template is an RGBA image with six anchor points (MaskTheFace's masks.cfg):
a upper-left, b nose-bridge top, c upper-right, d lower-left, e chin bottom, f lower-right.
The anchors are mapped onto points derived from the face's 68 dlib landmarks, the template is
warped with a piecewise-affine map (a fan of six triangles around the anchors' centroid, each
triangle's affine map extended to its whole angular sector so that parts of the template outside
the anchor hexagon, such as the ear loops, are carried along), recoloured or textured, and
alpha-composited onto the image.

Images are HxWx3 uint8 RGB; landmarks are (68, 2) float32 xy pixels; boxes are xyxy pixels.
"""

from __future__ import annotations

import argparse
import configparser
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

ANCHOR_KEYS = ("mask_a", "mask_b", "mask_c", "mask_d", "mask_e", "mask_f")
SIDE_SUFFIXES = ("_left", "_right")
TEXTURE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Anchor indices in the order they go round the mask outline (a b c f e d).
_RING = (0, 1, 2, 5, 4, 3)
_RESIZE_CACHE_SIZE = 64

# Landmark indices (iBUG 68-point layout).
_JAW = slice(0, 17)
_CHIN = 8
_BRIDGE_TOP = 27
_NOSE_BRIDGE_END = 30
_NOSE_TIP = 33
_UPPER_LIP_TOP = 51
_BROWS = slice(17, 27)


class TemplateConfigError(ValueError):
    """masks.cfg is missing, malformed, or names a template file that does not exist."""


@dataclass(frozen=True)
class MaskTemplate:
    """A mask template: rgba HxWx4 uint8 (RGB order, straight alpha), anchors (6, 2) float32 xy
    template pixels in the order a, b, c, d, e, f."""

    name: str
    rgba: np.ndarray
    anchors: np.ndarray


@dataclass(frozen=True)
class SynthResult:
    """image: HxWx3 uint8 RGB masked image; mask: HxW bool, the pixels covered by the mask;
    face_box: (4,) float32 xyxy pixels, the whole face (forehead to chin) united with the mask;
    template: name of the template drawn (a side view where one replaced the frontal one)."""

    image: np.ndarray
    mask: np.ndarray
    face_box: np.ndarray
    template: str = ""


def is_side_view(name: str) -> bool:
    return name.endswith(SIDE_SUFFIXES)


def load_templates(root: Path, *, include_side_views: bool = False) -> list[MaskTemplate]:
    """Read root/masks.cfg and its templates (paths in the file, masks/templates/X.png, are
    resolved as root/templates/X.png). Sections without a template (empty, inpaint) are skipped,
    so are side-view variants (``*_left``/``*_right``) unless ``include_side_views``."""
    root = Path(root)
    cfg_path = root / "masks.cfg"
    if not cfg_path.is_file():
        raise TemplateConfigError(f"missing {cfg_path}")
    parser = configparser.ConfigParser(strict=False)
    try:
        parser.read(cfg_path)
    except configparser.Error as exc:
        raise TemplateConfigError(f"cannot parse {cfg_path}: {exc}") from exc
    templates = []
    for name in parser.sections():
        section = parser[name]
        if "template" not in section or (is_side_view(name) and not include_side_views):
            continue
        path = root / "templates" / Path(section["template"]).name
        bgra = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4:
            raise TemplateConfigError(f"template {name}: {path} is not a readable RGBA image")
        try:
            anchors = np.array(
                [[float(v) for v in section[key].split(",")] for key in ANCHOR_KEYS], dtype=np.float32
            )
        except (KeyError, ValueError) as exc:
            raise TemplateConfigError(f"template {name}: bad anchors ({exc})") from exc
        if anchors.shape != (6, 2):
            raise TemplateConfigError(f"template {name}: anchors must be six x, y pairs")
        rgba = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)
        templates.append(MaskTemplate(name=name, rgba=rgba, anchors=anchors))
    if not templates:
        raise TemplateConfigError(f"no templates in {cfg_path}")
    return templates


def face_box_from_landmarks(landmarks: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """Whole-face box (4,) float32 xyxy: jaw line at the sides and bottom, forehead on top
    (brows raised by 0.35 of the brow-to-chin height, since dlib has no forehead points),
    clipped to the image."""
    lm = np.asarray(landmarks, dtype=np.float32)
    h, w = image_shape[:2]
    x0 = min(lm[_JAW, 0].min(), lm[_BROWS, 0].min())
    x1 = max(lm[_JAW, 0].max(), lm[_BROWS, 0].max())
    brow_y = lm[_BROWS, 1].min()
    y1 = lm[_JAW, 1].max()
    y0 = brow_y - 0.35 * (y1 - brow_y)
    return np.array(
        [np.clip(x0, 0, w), np.clip(y0, 0, h), np.clip(x1, 0, w), np.clip(y1, 0, h)], dtype=np.float32
    )


def face_turn(landmarks: np.ndarray) -> float:
    """Where the nose lies across the face, 0..1 (0.5 frontal, small when the face is turned so
    the nose points to the image's left, as in the ``*_left`` templates), measured between jaw
    points 2 and 14 so that head roll does not matter."""
    lm = np.asarray(landmarks, dtype=np.float64)
    across = lm[14] - lm[2]
    return float((lm[30] - lm[2]) @ across / max(across @ across, 1e-6))


def _point_on_jaw_at_level(jaw_half: np.ndarray, levels: np.ndarray, level: float) -> np.ndarray:
    """Point on a jaw half (ear to chin polyline) whose level along the face's vertical axis is
    ``level``; clamped to the polyline's ends."""
    # np.interp needs increasing sample positions; dlib's jaw is monotone except for jitter.
    mono = np.maximum.accumulate(levels) + np.arange(len(levels)) * 1e-4
    return np.array([np.interp(level, mono, jaw_half[:, 0]), np.interp(level, mono, jaw_half[:, 1])])


def target_anchors(landmarks: np.ndarray, template: MaskTemplate, *, pulled_down: bool = False) -> np.ndarray:
    """Image points (6, 2) float32 that the template's anchors a..f are mapped to.

    b sits on the nose bridge (or between the nose tip and the upper lip when ``pulled_down``),
    e just under the chin, and a/c, d/f on the jaw outline at the same relative heights between
    b and e as in the template, so the template keeps its proportions.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    up_to_chin = lm[_CHIN] - lm[_BRIDGE_TOP]
    face_len = float(np.hypot(*up_to_chin))
    if face_len < 1e-3:
        raise ValueError("degenerate landmarks: nose bridge and chin coincide")
    axis = up_to_chin / face_len

    def level(p):
        return (p - lm[_BRIDGE_TOP]) @ axis

    worn_top = lm[_BRIDGE_TOP] + 0.4 * (lm[_NOSE_BRIDGE_END] - lm[_BRIDGE_TOP])
    worn_bottom = lm[_CHIN] + 0.04 * face_len * axis
    left, right = lm[0:9], lm[16:7:-1]
    if pulled_down:
        # The same mask slid down below the nose: about as tall as when worn, so its lower part
        # hangs below the chin, while the ear loops keep its sides on the jaw above the chin.
        top = lm[_NOSE_TIP] + 0.4 * (lm[_UPPER_LIP_TOP] - lm[_NOSE_TIP])
        height = 0.85 * (level(worn_bottom) - level(worn_top))
        bottom = lm[_CHIN] + (level(top) + height - level(lm[_CHIN])) * axis
        left, right = left[:6], right[:6]
    else:
        top, bottom = worn_top, worn_bottom

    # Each anchor's height in the template, relative to b (0) and e (1).
    ty = template.anchors[:, 1].astype(np.float64)
    rel = (ty - ty[1]) / (ty[4] - ty[1])
    top_level, bottom_level = level(top), level(bottom)
    out = np.empty((6, 2))
    out[1], out[4] = top, bottom
    for jaw, corners in ((left, (0, 3)), (right, (2, 5))):
        levels = level(jaw)
        for i in corners:
            out[i] = _point_on_jaw_at_level(jaw, levels, top_level + rel[i] * (bottom_level - top_level))
    return out.astype(np.float32)


def _sector_affines(src: np.ndarray, dst: np.ndarray):
    """For the fan of six triangles (centroid, ring[k], ring[k+1]) return, per sector, the
    2x3 affine map dst->src and the two dst edge vectors bounding the sector."""
    src_c, dst_c = src.mean(0), dst.mean(0)
    sectors = []
    for k in range(6):
        i, j = _RING[k], _RING[(k + 1) % 6]
        m = cv2.getAffineTransform(
            np.float32([dst_c, dst[i], dst[j]]), np.float32([src_c, src[i], src[j]])
        )
        sectors.append((m, dst[i] - dst_c, dst[j] - dst_c))
    return dst_c, sectors


def _forward_points(src: np.ndarray, dst: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map template points (N, 2) to the image with the piecewise-affine fan map."""
    src_c, dst_c = src.mean(0), dst.mean(0)
    out = np.zeros_like(pts, dtype=np.float64)
    rel = pts - src_c
    for k in range(6):
        i, j = _RING[k], _RING[(k + 1) % 6]
        m = cv2.getAffineTransform(np.float32([src_c, src[i], src[j]]), np.float32([dst_c, dst[i], dst[j]]))
        inside = _in_sector(rel, src[i] - src_c, src[j] - src_c)
        out[inside] = pts[inside] @ m[:, :2].T + m[:, 2]
    return out


def _in_sector(rel: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which vectors (N, 2) lie in the angular sector from u to v (less than 180 degrees)."""
    s = np.sign(u[0] * v[1] - u[1] * v[0]) or 1.0
    cu = u[0] * rel[:, 1] - u[1] * rel[:, 0]
    cv = rel[:, 0] * v[1] - rel[:, 1] * v[0]
    return (s * cu >= 0) & (s * cv >= 0)


def warp_template(
    rgba_premul: np.ndarray, src: np.ndarray, dst: np.ndarray, out_shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Warp a premultiplied float32 RGBA template (HxWx4, values 0..1) so that anchors ``src``
    land on image points ``dst``. Returns the warped patch and its (x0, y0) offset in an image of
    shape ``out_shape`` (H, W); the patch covers only the template's footprint."""
    th, tw = rgba_premul.shape[:2]
    n = 64
    border = np.concatenate([
        np.stack([np.linspace(0, tw - 1, n), np.zeros(n)], 1),
        np.stack([np.linspace(0, tw - 1, n), np.full(n, th - 1)], 1),
        np.stack([np.zeros(n), np.linspace(0, th - 1, n)], 1),
        np.stack([np.full(n, tw - 1), np.linspace(0, th - 1, n)], 1),
        src.astype(np.float64),
    ])
    fwd = _forward_points(src.astype(np.float64), dst.astype(np.float64), border)
    h, w = out_shape
    x0, y0 = (int(max(np.floor(fwd[:, k].min()) - 1, 0)) for k in (0, 1))
    x1 = int(min(np.ceil(fwd[:, 0].max()) + 2, w))
    y1 = int(min(np.ceil(fwd[:, 1].max()) + 2, h))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0, 4), np.float32), (0, 0)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    dst_c, sectors = _sector_affines(src, dst)
    rel = pts - dst_c
    map_x = np.full(len(pts), -1.0, np.float32)
    map_y = np.full(len(pts), -1.0, np.float32)
    for m, u, v in sectors:
        inside = _in_sector(rel, u, v)
        p = pts[inside]
        map_x[inside] = p[:, 0] * m[0, 0] + p[:, 1] * m[0, 1] + m[0, 2]
        map_y[inside] = p[:, 0] * m[1, 0] + p[:, 1] * m[1, 1] + m[1, 2]
    shape = (y1 - y0, x1 - x0)
    patch = cv2.remap(
        rgba_premul, map_x.reshape(shape), map_y.reshape(shape), cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0),
    )
    return patch, (x0, y0)


def shrink_template(template: MaskTemplate, max_side: int) -> MaskTemplate:
    """The template resized so its longer side is at most ``max_side``, anchors scaled with it."""
    rgba = template.rgba.astype(np.float32)
    scale = min(1.0, max_side / max(rgba.shape[:2]))
    if scale == 1.0:
        return template
    size = (max(int(round(rgba.shape[1] * scale)), 2), max(int(round(rgba.shape[0] * scale)), 2))
    # Premultiplied resize so fully transparent pixels do not darken the edges.
    rgb = cv2.resize(rgba[..., :3] * (rgba[..., 3:] / 255.0), size, interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(rgba[..., 3], size, interpolation=cv2.INTER_AREA)
    rgb = rgb / np.maximum(alpha[..., None] / 255.0, 1e-6)
    small = np.clip(np.dstack([rgb, alpha]), 0, 255).astype(np.uint8)
    return MaskTemplate(name=template.name, rgba=small, anchors=template.anchors * np.float32(scale))


def sheer_layer(patch: np.ndarray, *, period: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A see-through version of a warped, premultiplied RGBA mask patch (HxWx4 float32 0..1).

    Mesh and rhinestone masks let the skin show between threads or stones, so a detector
    trained only on opaque masks takes them for bare skin. The fabric becomes a diagonal grid
    of threads (or round stones) ``period`` pixels apart, opaque on the threads and between
    15 % and 60 % opaque in the gaps, in a metallic grey, black or the template's colour, with
    bright glints on the crossings. ``u`` (4,) uniform draws pick the style.
    Returns premultiplied RGB (HxWx3) and alpha (HxW).
    """
    u_gap, u_kind, u_colour, u_angle = (float(v) for v in u)
    footprint = patch[..., 3]
    h, w = footprint.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = (0.15 + 0.7 * u_angle) * np.pi / 2
    a = (xs * np.cos(angle) + ys * np.sin(angle)) * (np.pi / period)
    b = (-xs * np.sin(angle) + ys * np.cos(angle)) * (np.pi / period)
    if u_kind < 0.5:
        # Threads: near 1 on the two families of lines, falling to 0 between them.
        weave = np.maximum(np.abs(np.cos(a)), np.abs(np.cos(b))) ** 6
    else:
        # Stones: round dots at the crossings.
        weave = (np.abs(np.cos(a)) * np.abs(np.cos(b))) ** 3
    gap_opacity = 0.15 + 0.45 * u_gap
    alpha = footprint * (gap_opacity + (1.0 - gap_opacity) * weave)
    if u_colour < 0.4:
        colour = np.full(3, 0.55 + 0.35 * u_colour / 0.4, np.float32)  # silver
    elif u_colour < 0.7:
        colour = np.full(3, 0.05 + 0.1 * (u_colour - 0.4) / 0.3, np.float32)  # black
    else:
        colour = None  # the template's own (possibly recoloured) colour
    if colour is None:
        straight = patch[..., :3] / np.maximum(footprint[..., None], 1e-6)
    else:
        straight = np.broadcast_to(colour, (h, w, 3))
    glint = (np.abs(np.cos(a)) * np.abs(np.cos(b))) ** 12
    straight = np.clip(straight + 0.5 * glint[..., None], 0.0, 1.0)
    return (straight * alpha[..., None]).astype(np.float32), alpha.astype(np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


class MaskSynthesizer:
    """Draws a randomly chosen, randomly coloured mask template onto a face.

    p_recolor: probability of recolouring the template to a random colour (keeping its shading);
    p_texture: probability of printing a texture from ``textures_root`` on it instead (needs
    textures); brightness_range: random brightness factor, applied on top of a factor that
    follows the face's own brightness so masks are not lit differently from the face.
    include_side_views: load the ``*_left``/``*_right`` templates and use them instead of the
    frontal one when the face is turned: when the nose sits closer than ``side_view_threshold``
    (a fraction of the face width, see ``face_turn``) to either side of the face.
    max_template_side: shrink templates once so their longer side is at most this many pixels
        (the shipped ones are 500-1800 px, far more than a ~100 px face needs; each call works
        on the full template, so big templates make synthesis the bottleneck of training).
    p_sheer: probability of making the mask see-through (mesh, lace, rhinestone fabric: see
        ``sheer_layer``). The label stays the mask's whole footprint, since the skin seen
        through it is still covered. At 0 no random number is drawn for it, so the stream of
        masks for a seed is the same as without the option.
    """

    def __init__(
        self,
        *,
        templates_root: str | Path,
        textures_root: str | Path | None = None,
        p_recolor: float = 0.4,
        p_texture: float = 0.2,
        brightness_range: tuple[float, float] = (0.75, 1.1),
        include_side_views: bool = False,
        side_view_threshold: float = 0.3,
        max_template_side: int | None = None,
        p_sheer: float = 0.0,
    ) -> None:
        if not 0.0 <= p_sheer <= 1.0:
            raise ValueError(f"p_sheer must be in [0, 1], got {p_sheer}")
        self.p_sheer = p_sheer
        templates = load_templates(Path(templates_root), include_side_views=include_side_views)
        if max_template_side is not None:
            templates = [shrink_template(t, max_template_side) for t in templates]
        self.templates = {t.name: t for t in templates}
        # Random picks are among frontal templates; side views replace them on turned faces.
        self.template_names = tuple(sorted(n for n in self.templates if not is_side_view(n)))
        self.side_view_threshold = side_view_threshold
        self.texture_paths: tuple[Path, ...] = ()
        if textures_root is not None:
            self.texture_paths = tuple(
                sorted(p for p in Path(textures_root).rglob("*") if p.suffix.lower() in TEXTURE_SUFFIXES)
            )
            if not self.texture_paths:
                logger.warning("no textures under %s; masks will not be textured", textures_root)
        self.p_recolor = p_recolor
        # Without textures p_texture is moot, so p_recolor alone may be 1.
        self.p_texture = p_texture if self.texture_paths else 0.0
        if not (0.0 <= p_recolor <= 1.0 and 0.0 <= self.p_texture <= 1.0 and p_recolor + self.p_texture <= 1.0):
            raise ValueError(f"need 0 <= p_recolor + p_texture <= 1, got {p_recolor} + {self.p_texture}")
        self.brightness_range = brightness_range
        self._texture_cache: dict[Path, np.ndarray] = {}
        self._resize_cache: dict[tuple[str, float], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _texture(self, path: Path) -> np.ndarray:
        if path not in self._texture_cache:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise FileNotFoundError(f"unreadable texture {path}")
            self._texture_cache[path] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        return self._texture_cache[path]

    def _resized(self, template: MaskTemplate, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Template at ``scale``: straight RGB (HxWx3), alpha (HxW) and shading (HxWx1), float32
        0..1. Cached, since video asks for nearly the same scale frame after frame."""
        key = (template.name, scale)
        if key in self._resize_cache:
            return self._resize_cache[key]
        rgba = template.rgba.astype(np.float32) / 255.0
        size = (max(int(round(rgba.shape[1] * scale)), 2), max(int(round(rgba.shape[0] * scale)), 2))
        alpha = cv2.resize(rgba[..., 3], size, interpolation=cv2.INTER_AREA)
        # Resize premultiplied colour so transparent pixels do not bleed into the edges.
        rgb = cv2.resize(rgba[..., :3] * rgba[..., 3:], size, interpolation=cv2.INTER_AREA)
        rgb = rgb / np.maximum(alpha[..., None], 1e-6)
        # Shading: luminance relative to the template's bright parts, so folds and seams survive
        # recolouring.
        lum = _luminance(rgb)
        visible = alpha > 0.5
        ref = np.percentile(lum[visible], 90) if visible.any() else 1.0
        shade = np.clip(lum / max(ref, 1e-3), 0.0, 1.2)[..., None]
        if len(self._resize_cache) >= _RESIZE_CACHE_SIZE:
            self._resize_cache.pop(next(iter(self._resize_cache)))
        self._resize_cache[key] = (rgb, alpha, shade)
        return rgb, alpha, shade

    def _styled_template(self, template: MaskTemplate, scale: float, rng: np.random.Generator) -> np.ndarray:
        """Template resized by ``scale``, restyled, premultiplied: float32 HxWx4 in 0..1."""
        # All random draws happen in a fixed order whatever the image, so one seed gives one style.
        u_style, u_hue, u_sat, u_val, u_tex, u_off, u_tex_scale, u_bright, u_grad = rng.random(9)
        rgb, alpha, shade = self._resized(template, scale)
        size = (alpha.shape[1], alpha.shape[0])
        if u_style < self.p_texture:
            tex = self._texture(self.texture_paths[int(u_tex * len(self.texture_paths))])
            # Texture repeats a few times across the mask, like printed fabric.
            reps = 1.0 + 2.0 * u_tex_scale
            tile_w = max(int(size[0] / reps), 8)
            tile = cv2.resize(tex, (tile_w, max(int(tile_w * tex.shape[0] / tex.shape[1]), 8)), interpolation=cv2.INTER_AREA)
            ny, nx = -(-size[1] // tile.shape[0]) + 1, -(-size[0] // tile.shape[1]) + 1
            tiled = np.tile(tile, (ny, nx, 1))
            oy, ox = int(u_off * tile.shape[0]), int(u_off * tile.shape[1])
            rgb = tiled[oy:oy + size[1], ox:ox + size[0]] * shade
        elif u_style < self.p_texture + self.p_recolor:
            # Random colour with some mass on greys/black/white, which real masks often are.
            sat = 0.0 if u_sat < 0.3 else (u_sat - 0.3) / 0.7
            hsv = np.uint8([[[int(u_hue * 180), int(sat * 255), int((0.15 + 0.85 * u_val) * 255)]]])
            colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0
            rgb = colour * shade
        lo, hi = self.brightness_range
        out = np.empty((*alpha.shape, 4), np.float32)
        # Light falling from one side: a left-to-right brightness ramp of up to +-20%.
        ramp = 1.0 + (u_grad - 0.5) * 0.4 * np.linspace(-1.0, 1.0, alpha.shape[1], dtype=np.float32)
        gain = (lo + (hi - lo) * u_bright) * alpha * ramp[None, :]
        np.multiply(rgb, gain[..., None], out=out[..., :3])
        np.minimum(out[..., :3], alpha[..., None], out=out[..., :3])
        out[..., 3] = alpha
        return out

    def apply(
        self,
        image: np.ndarray,
        landmarks: np.ndarray,
        *,
        rng: np.random.Generator,
        template: str | None = None,
        pulled_down: bool = False,
    ) -> SynthResult:
        """Draw a mask on ``image`` (HxWx3 uint8 RGB) for the face with ``landmarks`` ((68, 2)
        xy pixels). ``template`` picks a template by name (random when None); ``pulled_down``
        wears it under the nose. Deterministic for equal inputs and rng state."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        lm = np.asarray(landmarks, dtype=np.float32)
        if lm.shape != (68, 2):
            raise ValueError(f"expected (68, 2) landmarks, got {lm.shape}")
        u_template, u_blur = rng.random(2)
        if template is None:
            template = self.template_names[int(u_template * len(self.template_names))]
        if template not in self.templates:
            raise KeyError(f"unknown template {template!r}; have {tuple(sorted(self.templates))}")
        if not is_side_view(template):
            turn = face_turn(lm)
            side = "_left" if turn < self.side_view_threshold else "_right" if turn > 1 - self.side_view_threshold else ""
            template = template + side if template + side in self.templates else template
        tmpl = self.templates[template]
        dst = target_anchors(lm, tmpl, pulled_down=pulled_down)

        # Shrink the template close to its final size first: remap alone would alias.
        src_w = np.linalg.norm(tmpl.anchors[2] - tmpl.anchors[0])
        dst_w = np.linalg.norm(dst[2] - dst[0])
        scale = float(np.clip(1.25 * dst_w / max(src_w, 1e-3), 0.02, 1.0))
        # Quantised (steps of about 4%) so the resize cache hits; the anchors use the same value,
        # so this costs no accuracy.
        scale = float(2.0 ** (np.round(np.log2(scale) * 16) / 16))
        styled = self._styled_template(tmpl, scale, rng)
        src = tmpl.anchors * np.float32(scale)
        patch, (x0, y0) = warp_template(styled, src, dst, image.shape[:2])
        # Camera blur, so a crisp pasted edge is no giveaway; capped since real blur does not
        # grow with face size. The label below follows the blurred alpha.
        sigma = u_blur * min(1.2, dst_w / 120.0)
        if patch.size and sigma > 0.3:
            patch = cv2.GaussianBlur(patch, (0, 0), sigma)

        h, w = image.shape[:2]
        out = image.copy()
        mask = np.zeros((h, w), dtype=bool)
        u_sheer = rng.random(6) if self.p_sheer > 0 else np.ones(6)
        sheer = u_sheer[0] < self.p_sheer
        if patch.size:
            ph, pw = patch.shape[:2]
            region = out[y0:y0 + ph, x0:x0 + pw].astype(np.float32) / 255.0
            footprint = patch[..., 3]
            light = self._face_light(image, lm)
            if sheer:
                rgb, alpha = sheer_layer(patch, period=max(2.0, dst_w / (10.0 + 40.0 * u_sheer[1])), u=u_sheer[2:])
            else:
                rgb, alpha = patch[..., :3], footprint
            comp = region * (1.0 - alpha[..., None]) + rgb * light
            out[y0:y0 + ph, x0:x0 + pw] = np.clip(comp * 255.0 + 0.5, 0, 255).astype(np.uint8)
            mask[y0:y0 + ph, x0:x0 + pw] = footprint > 0.5

        box = face_box_from_landmarks(lm, image.shape)
        ys, xs = np.nonzero(mask)
        if len(xs):
            box = np.array(
                [min(box[0], xs.min()), min(box[1], ys.min()), max(box[2], xs.max() + 1), max(box[3], ys.max() + 1)],
                dtype=np.float32,
            )
        return SynthResult(image=out, mask=mask, face_box=box, template=template)

    @staticmethod
    def _face_light(image: np.ndarray, lm: np.ndarray) -> float:
        """Brightness factor for the mask from the face's median luminance, damped because skin
        tone and lighting cannot be told apart."""
        h, w = image.shape[:2]
        x0, y0 = np.clip(np.floor(lm.min(0)).astype(int), 0, [w, h])
        x1, y1 = np.clip(np.ceil(lm.max(0)).astype(int) + 1, 0, [w, h])
        crop = image[y0:y1, x0:x1]
        face = np.zeros(crop.shape[:2], np.uint8)
        cv2.fillConvexPoly(face, cv2.convexHull(np.round(lm[:27] - [x0, y0]).astype(np.int32)), 1)
        pixels = crop[face.astype(bool)]
        if len(pixels) == 0:
            return 1.0
        lum = float(np.median(_luminance(pixels.astype(np.float32)))) / 255.0
        return float(np.clip(0.6 + 0.7 * lum, 0.6, 1.05))


def preview_grid(
    *, synth: MaskSynthesizer, images_root: Path, cache, count: int = 16, columns: int = 8,
    seed: int = 0, p_pulled_down: float = 0.15,
) -> np.ndarray:
    """Grid (HxWx3 uint8 RGB) of ``count`` random cached faces, each shown masked above its
    mask label overlaid in white."""
    rng = np.random.default_rng(seed)
    tiles = []
    for i in rng.choice(len(cache.files), size=count, replace=False):
        bgr = cv2.imread(str(images_root / cache.files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(images_root / cache.files[i])
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        result = synth.apply(rgb, cache.landmarks[i], rng=rng, pulled_down=bool(rng.random() < p_pulled_down))
        label = rgb.copy()
        label[result.mask] = (0.4 * label[result.mask] + 153).astype(np.uint8)
        x0, y0, x1, y1 = np.round(result.face_box).astype(int)
        cv2.rectangle(label, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), 1)
        tiles.append(np.concatenate([result.image, label], 0))
    rows = [np.concatenate(tiles[r:r + columns], 1) for r in range(0, len(tiles), columns)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, 0)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Preview synthesized masks on cached faces.")
    parser.add_argument("--images", type=Path, required=True, help="face image folder")
    parser.add_argument("--landmarks", type=Path, required=True, help="cache from training.data.landmarks")
    parser.add_argument("--templates", type=Path, required=True, help="MaskTheFace folder with masks.cfg")
    parser.add_argument("--textures", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True, help="output PNG")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    from training.data.landmarks import load_landmark_cache

    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        synth = MaskSynthesizer(templates_root=args.templates, textures_root=args.textures)
        cache = load_landmark_cache(args.landmarks)
        grid = preview_grid(synth=synth, images_root=args.images, cache=cache, count=args.count, seed=args.seed)
    except (TemplateConfigError, FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
