from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data.synth import (
    MaskSynthesizer,
    TemplateConfigError,
    face_box_from_landmarks,
    face_turn,
    load_templates,
    target_anchors,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEMPLATES = DATA / "mask_templates"
UTKFACE = DATA / "faces" / "utkface"
needs_templates = pytest.mark.skipif(not (TEMPLATES / "masks.cfg").is_file(), reason="no shared mask templates")
needs_utkface = pytest.mark.skipif(not UTKFACE.is_dir(), reason="no shared UTKFace data")

SIZE = 256
EYES = list(range(36, 48))
BROWS = list(range(17, 27))
MOUTH = list(range(48, 68))


def canonical_landmarks(size: int = SIZE) -> np.ndarray:
    """A frontal 68-point face in the iBUG layout, (68, 2) float32 xy pixels of a size x size image."""
    pts = np.zeros((68, 2))
    t = np.linspace(0, np.pi, 17)
    pts[0:17] = np.stack([0.5 - 0.38 * np.cos(t), 0.38 + 0.45 * np.sin(t)], 1)
    brow_x = np.linspace(0.18, 0.43, 5)
    pts[17:22] = np.stack([brow_x, 0.29 - 0.03 * np.sin(np.linspace(0, np.pi, 5))], 1)
    pts[22:27] = np.stack([1.0 - brow_x[::-1], pts[17:22, 1][::-1]], 1)
    pts[27:31] = np.stack([np.full(4, 0.5), np.linspace(0.37, 0.56, 4)], 1)
    pts[31:36] = np.stack([np.linspace(0.43, 0.57, 5), [0.61, 0.62, 0.63, 0.62, 0.61]], 1)
    a = np.linspace(np.pi, -np.pi, 6, endpoint=False)
    for start, cx in ((36, 0.33), (42, 0.67)):
        pts[start:start + 6] = np.stack([cx + 0.06 * np.cos(a), 0.39 - 0.02 * np.sin(a)], 1)
    a = np.linspace(np.pi, -np.pi, 12, endpoint=False)
    pts[48:60] = np.stack([0.5 + 0.1 * np.cos(a), 0.72 - 0.04 * np.sin(a)], 1)
    a = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    pts[60:68] = np.stack([0.5 + 0.07 * np.cos(a), 0.72 - 0.015 * np.sin(a)], 1)
    return (pts * size).astype(np.float32)


def draw_face(landmarks: np.ndarray, size: int = SIZE) -> np.ndarray:
    """A cartoon face (HxWx3 uint8 RGB) drawn at the given landmarks."""
    img = np.full((size, size, 3), (90, 120, 160), np.uint8)
    outline = np.concatenate([landmarks[0:17], landmarks[26:16:-1] - [0, 0.15 * size]])
    cv2.fillPoly(img, [np.round(outline).astype(np.int32)], (225, 180, 150))
    for part, colour in (((36, 42), (40, 30, 30)), ((42, 48), (40, 30, 30)), ((48, 60), (170, 60, 60))):
        cv2.fillPoly(img, [np.round(landmarks[part[0]:part[1]]).astype(np.int32)], colour)
    cv2.polylines(img, [np.round(landmarks[27:36]).astype(np.int32)], False, (160, 110, 90), 2)
    return img


def rotate(landmarks: np.ndarray, degrees: float, size: int = SIZE) -> np.ndarray:
    m = cv2.getRotationMatrix2D((size / 2, size / 2), degrees, 1.0)
    return (landmarks @ m[:, :2].T + m[:, 2]).astype(np.float32)


@pytest.fixture(scope="module")
def fake_templates(tmp_path_factory) -> Path:
    """A template folder laid out like MaskTheFace's: masks.cfg + templates/*.png."""
    root = tmp_path_factory.mktemp("masks")
    (root / "templates").mkdir()
    # The side view looks like MaskTheFace's *_left templates: nose bridge and chin near the left.
    anchor_sets = {
        "plain": np.array([[10, 20], [100, 5], [190, 20], [15, 80], [100, 115], [185, 80]]),
        "plain_left": np.array([[10, 20], [40, 5], [190, 20], [15, 80], [45, 115], [185, 80]]),
    }
    lines = []
    for name, anchors in anchor_sets.items():
        rgba = np.zeros((120, 200, 4), np.uint8)
        ring = anchors[[0, 1, 2, 5, 4, 3]].astype(np.int32)
        cv2.fillPoly(rgba, [ring], (200, 220, 235, 255))
        cv2.polylines(rgba, [ring], True, (120, 140, 160, 255), 3)
        cv2.imwrite(str(root / "templates" / f"{name}.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        lines += [f"[{name}]", f"template: masks/templates/{name}.png"]
        lines += [f"mask_{k}: {x}, {y}" for k, (x, y) in zip("abcdef", anchors)]
        lines.append("")
    lines += ["[empty]", ""]
    (root / "masks.cfg").write_text("\n".join(lines))
    (root / "textures").mkdir()
    tex = np.zeros((16, 16, 3), np.uint8)
    tex[::4] = 255
    cv2.imwrite(str(root / "textures" / "stripes.png"), tex)
    return root


def covered(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    xy = np.round(points).astype(int)
    return mask[xy[:, 1], xy[:, 0]]


def check_placement(result, landmarks, *, pulled_down=False):
    assert result.image.shape == (SIZE, SIZE, 3) and result.image.dtype == np.uint8
    assert result.mask.shape == (SIZE, SIZE) and result.mask.dtype == bool
    # Pulled down, a respirator's steep top edge may bare the lip corners; the mouth's centre
    # line stays covered.
    assert covered(result.mask, landmarks[[51, 57, 62, 66] if pulled_down else MOUTH]).all()
    # The chin itself: a point just inside the jaw above the chin landmark.
    chin_inside = landmarks[8] + 0.04 * (landmarks[27] - landmarks[8])
    assert covered(result.mask, chin_inside[None])[0]
    assert not covered(result.mask, landmarks[EYES + BROWS]).any()
    nose_tip_covered = covered(result.mask, landmarks[33:34])[0]
    assert nose_tip_covered != pulled_down
    box = result.face_box
    assert box.shape == (4,) and box.dtype == np.float32
    ys, xs = np.nonzero(result.mask)
    assert box[0] <= xs.min() and box[1] <= ys.min() and box[2] >= xs.max() and box[3] >= ys.max()


def test_load_templates_fake(fake_templates):
    templates = load_templates(fake_templates)
    assert [t.name for t in templates] == ["plain"]
    t = templates[0]
    assert t.rgba.shape == (120, 200, 4) and t.rgba.dtype == np.uint8
    assert t.anchors.shape == (6, 2) and t.anchors.dtype == np.float32
    assert t.anchors[4].tolist() == [100, 115]
    both = load_templates(fake_templates, include_side_views=True)
    assert sorted(t.name for t in both) == ["plain", "plain_left"]


def test_load_templates_missing_cfg(tmp_path):
    with pytest.raises(TemplateConfigError):
        load_templates(tmp_path)


@needs_templates
def test_load_shipped_templates():
    templates = load_templates(TEMPLATES)
    names = {t.name for t in templates}
    assert {"surgical", "N95", "KN95", "cloth"} <= names
    assert not any(n.endswith(("_left", "_right")) for n in names)
    for t in templates:
        assert t.rgba.ndim == 3 and t.rgba.shape[2] == 4 and t.anchors.shape == (6, 2)
        assert (t.rgba[..., 3] > 127).mean() > 0.2
    side = {t.name for t in load_templates(TEMPLATES, include_side_views=True)}
    assert {"surgical_left", "surgical_right"} <= side


def test_face_box_covers_face():
    lm = canonical_landmarks()
    box = face_box_from_landmarks(lm, (SIZE, SIZE, 3))
    assert box.dtype == np.float32
    assert box[0] <= lm[:, 0].min() and box[2] >= lm[:, 0].max() and box[3] >= lm[:, 1].max()
    brow_top, chin = lm[17:27, 1].min(), lm[8, 1]
    assert box[1] == pytest.approx(brow_top - 0.35 * (chin - brow_top), abs=1e-3)
    clipped = face_box_from_landmarks(lm - [100, 100], (SIZE, SIZE, 3))
    assert clipped[0] == 0 and clipped[1] == 0


@pytest.mark.parametrize("pulled_down", [False, True])
@pytest.mark.parametrize("degrees", [0.0, 25.0, -25.0])
def test_mask_placement_fake_template(fake_templates, pulled_down, degrees):
    lm = rotate(canonical_landmarks(), degrees)
    synth = MaskSynthesizer(templates_root=fake_templates)
    result = synth.apply(draw_face(lm), lm, rng=np.random.default_rng(0), pulled_down=pulled_down)
    check_placement(result, lm, pulled_down=pulled_down)
    assert result.template == "plain"


def test_label_is_the_composited_area(fake_templates):
    lm = canonical_landmarks()
    face = draw_face(lm)
    synth = MaskSynthesizer(templates_root=fake_templates, p_recolor=1.0)
    result = synth.apply(face, lm, rng=np.random.default_rng(3))
    changed = np.abs(result.image.astype(int) - face.astype(int)).max(-1) > 0
    grown = cv2.dilate(result.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert not (changed & ~grown).any()
    assert changed[result.mask].mean() > 0.9


def test_sheer_mask_shows_the_face_through_and_keeps_the_label(fake_templates):
    lm = canonical_landmarks()
    face = draw_face(lm)
    opaque = MaskSynthesizer(templates_root=fake_templates, p_recolor=1.0)
    sheer = MaskSynthesizer(templates_root=fake_templates, p_recolor=1.0, p_sheer=1.0)
    seed = 3
    a = opaque.apply(face, lm, rng=np.random.default_rng(seed))
    b = sheer.apply(face, lm, rng=np.random.default_rng(seed))
    # Sheer fabric still covers the face: same footprint, same label.
    assert np.array_equal(a.mask, b.mask)
    inside = b.mask
    # Where the mask lies over the mouth, the mouth's red shows through the mesh.
    mouth = np.zeros(face.shape[:2], np.uint8)
    cv2.fillPoly(mouth, [np.round(lm[48:60]).astype(np.int32)], 1)
    mouth = mouth.astype(bool) & inside
    assert mouth.sum() > 50
    skin = np.zeros(face.shape[:2], bool)
    skin[inside & ~mouth] = True

    def red_excess(img, where):
        px = img[where].astype(float)
        return float((px[:, 0] - px[:, 1]).mean())

    # Opaque fabric hides the mouth (its red is gone); see-through fabric lets it show.
    assert abs(red_excess(a.image, mouth) - red_excess(a.image, skin)) < 10
    assert red_excess(b.image, mouth) - red_excess(b.image, skin) > 10
    # And the mesh is visible: pixels differ from the bare face inside the mask.
    assert (np.abs(b.image.astype(int) - face.astype(int)).max(-1) > 0)[inside].mean() > 0.5



def test_deterministic_for_seed(fake_templates):
    lm = canonical_landmarks()
    face = draw_face(lm)
    synth = MaskSynthesizer(templates_root=fake_templates, textures_root=fake_templates / "textures",
                            p_recolor=0.5, p_texture=0.5)
    runs = [synth.apply(face, lm, rng=np.random.default_rng(s)) for s in (7, 7, 8, 9, 10)]
    assert np.array_equal(runs[0].image, runs[1].image)
    assert np.array_equal(runs[0].mask, runs[1].mask)
    assert np.array_equal(runs[0].face_box, runs[1].face_box)
    assert any(not np.array_equal(runs[0].image, r.image) for r in runs[2:])
    # Geometry depends on the landmarks; the style (and blur) only moves the edge a little.
    for r in runs[2:]:
        iou = (runs[0].mask & r.mask).sum() / (runs[0].mask | r.mask).sum()
        assert iou > 0.95


def test_side_view_on_turned_face(fake_templates):
    lm = canonical_landmarks()
    turned = lm.copy()
    # Head turned towards the image's left: the nearer the camera a point, the more it moves.
    turned[27:36, 0] -= 0.15 * SIZE
    turned[[8, *MOUTH], 0] -= 0.1 * SIZE
    turned[EYES, 0] -= 0.05 * SIZE
    assert face_turn(lm) == pytest.approx(0.5)
    assert face_turn(turned) < 0.3
    frontal_only = MaskSynthesizer(templates_root=fake_templates)
    with_sides = MaskSynthesizer(templates_root=fake_templates, include_side_views=True)
    assert with_sides.template_names == ("plain",)
    assert with_sides.apply(draw_face(lm), lm, rng=np.random.default_rng(0)).template == "plain"
    assert frontal_only.apply(draw_face(turned), turned, rng=np.random.default_rng(0)).template == "plain"
    result = with_sides.apply(draw_face(turned), turned, rng=np.random.default_rng(0))
    assert result.template == "plain_left"
    assert covered(result.mask, turned[MOUTH]).all()
    assert not covered(result.mask, turned[EYES]).any()


@pytest.mark.parametrize("shift", [(150, 0), (-200, -100), (0, 400)])
def test_face_partly_or_wholly_outside_image(fake_templates, shift):
    lm = canonical_landmarks() + np.float32(shift)
    face = draw_face(canonical_landmarks())
    result = MaskSynthesizer(templates_root=fake_templates).apply(face, lm, rng=np.random.default_rng(0))
    assert result.mask.shape == (SIZE, SIZE)
    assert (result.face_box >= 0).all() and (result.face_box <= SIZE).all()
    inside = (np.round(lm[MOUTH]) >= 0).all(1) & (np.round(lm[MOUTH]) < SIZE).all(1)
    assert covered(result.mask, lm[MOUTH][inside]).all()
    if shift == (0, 400):  # the whole mask falls below the image
        assert not result.mask.any() and np.array_equal(result.image, face)


def test_rejects_bad_inputs(fake_templates):
    synth = MaskSynthesizer(templates_root=fake_templates)
    lm = canonical_landmarks()
    with pytest.raises(ValueError):
        synth.apply(draw_face(lm).astype(np.float32), lm, rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        synth.apply(draw_face(lm), lm[:5], rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        MaskSynthesizer(templates_root=fake_templates, textures_root=fake_templates / "textures",
                        p_recolor=0.7, p_texture=0.5)
    with pytest.raises(KeyError):
        synth.apply(draw_face(lm), lm, rng=np.random.default_rng(0), template="nope")


def test_target_anchors_follow_template_proportions(fake_templates):
    lm = canonical_landmarks()
    template = load_templates(fake_templates)[0]
    dst = target_anchors(lm, template)
    # b on the nose bridge, e below the chin, a/c left/right of the face centre, d/f below a/c.
    assert lm[27, 1] < dst[1, 1] < lm[30, 1]
    assert dst[4, 1] > lm[8, 1]
    assert dst[0, 0] < lm[27, 0] < dst[2, 0]
    assert dst[3, 1] > dst[0, 1] and dst[5, 1] > dst[2, 1]


@needs_templates
@pytest.mark.parametrize("pulled_down", [False, True])
def test_every_shipped_template_placement(pulled_down):
    lm = canonical_landmarks()
    face = draw_face(lm)
    synth = MaskSynthesizer(templates_root=TEMPLATES, textures_root=TEMPLATES / "textures")
    for i, name in enumerate(synth.template_names):
        result = synth.apply(face, lm, rng=np.random.default_rng(i), template=name, pulled_down=pulled_down)
        check_placement(result, lm, pulled_down=pulled_down)


@needs_utkface
def test_landmark_detector_on_utkface(tmp_path):
    from training.data.landmarks import LandmarkDetector, load_landmark_cache, main

    files = sorted(UTKFACE.iterdir())[:5]
    detector = LandmarkDetector()
    found = 0
    for path in files:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces = detector.detect(rgb)
        found += bool(faces)
        for lm in faces:
            assert lm.shape == (68, 2) and lm.dtype == np.float32
            # Eyes above the mouth, everything roughly inside the crop.
            assert lm[36:48, 1].mean() < lm[48:68, 1].mean()
            assert (lm > -20).all() and (lm < max(rgb.shape) + 20).all()
        box_lm = detector.detect_in_box(rgb, [12, 12, 167, 167])
        assert box_lm.shape == (68, 2) and box_lm[36:48, 1].mean() < box_lm[48:68, 1].mean()
    assert found >= 4

    out = tmp_path / "lm.npz"
    assert main(["--images", str(UTKFACE), "--out", str(out), "--limit", "3"]) == 0
    cache = load_landmark_cache(out)
    assert len(cache) == 3 and cache.landmarks.shape == (3, 68, 2) and cache.detected.dtype == bool
    assert cache.files[0] == files[0].name


def test_shrink_template_keeps_anchors_on_the_same_features():
    from training.data.synth import MaskTemplate, shrink_template

    rgba = np.zeros((400, 600, 4), np.uint8)
    rgba[100:300, 150:450] = (200, 50, 50, 255)
    anchors = np.array([[150, 100], [300, 100], [449, 100], [150, 299], [300, 299], [449, 299]], np.float32)
    small = shrink_template(MaskTemplate("t", rgba, anchors), 150)
    assert small.rgba.shape == (100, 150, 4)
    np.testing.assert_allclose(small.anchors, anchors * 0.25)
    x, y = (small.anchors[1] + small.anchors[4]) / 2  # centre of the opaque block
    assert small.rgba[int(y), int(x), 3] == 255 and tuple(small.rgba[int(y), int(x), :3]) == (200, 50, 50)
    tiny = MaskTemplate("s", rgba[:50, :50], anchors)
    assert shrink_template(tiny, 150) is tiny
