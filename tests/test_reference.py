"""References: loading, identity memory, exemplar choice and the detail band they lend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stream.geometry import CropWindow
from stream.records import Detections
from stream.reference import (
    EXEMPLARS,
    REFERENCE_SIDE,
    IdentityMemory,
    MemorySettings,
    ReferenceError,
    ReferenceFace,
    References,
    Guide,
    load_exemplars,
    load_references,
    person_reference,
    save_exemplars,
)


def _face(seed: int, tone=(200, 160, 140)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    crop = np.full((REFERENCE_SIDE, REFERENCE_SIDE, 3), tone, np.uint8)
    noise = cv2.GaussianBlur(rng.uniform(-60, 60, (REFERENCE_SIDE, REFERENCE_SIDE)).astype(np.float32), (0, 0), 3)
    return np.clip(crop + noise[..., None], 0, 255).astype(np.uint8)


class _OneFace:
    """A detector that finds one face at a fixed box, with or without a mask."""

    def __init__(self, box=(20, 20, 80, 90), masked=False, found=True):
        self.box, self.masked, self.found = np.array([box], np.float32), masked, found

    def __call__(self, image):
        h, w = image.shape[:2]
        if not self.found:
            return Detections.empty(h, w)
        masks = np.zeros((1, h, w), bool)
        masks[0, 60:85, 25:75] = self.masked
        return Detections(boxes=self.box, scores=np.ones(1, np.float32), masks=masks)

    def worn(self, detections):
        return detections.masks.any(axis=(1, 2))


def test_reference_loading_errors_are_specific(tmp_path):
    photo = tmp_path / "me.png"
    cv2.imwrite(str(photo), np.full((120, 100, 3), 128, np.uint8))
    refs = load_references(photo, _OneFace(), crop_scale=1.2)
    assert len(refs) == 1 and refs[0].crop.shape == (REFERENCE_SIDE, REFERENCE_SIDE, 3) and not refs[0].exemplar
    with pytest.raises(ReferenceError, match="not found"):
        load_references(tmp_path / "missing.png", _OneFace(), crop_scale=1.2)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ReferenceError, match="cannot read"):
        load_references(text, _OneFace(), crop_scale=1.2)
    with pytest.raises(ReferenceError, match="no face"):
        load_references(photo, _OneFace(found=False), crop_scale=1.2)
    assert len(load_references(photo, _OneFace(masked=True), crop_scale=1.2)) == 1  # the user knows best
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReferenceError, match="no images"):
        load_references(empty, _OneFace(), crop_scale=1.2)


def test_identity_memory_waits_for_a_steady_unmasked_run_and_keeps_the_largest_view():
    memory = IdentityMemory(MemorySettings(min_streak=3, refresh=1, min_side=10), crop_scale=1.2)
    image = _face(0)
    small, large = np.array([50, 50, 90, 100], np.float32), np.array([40, 40, 120, 140], np.float32)
    memory.observe(image, 1, large, 0.95, 1)
    memory.observe(image, 1, large, 0.95, 3)  # a gap (masked frame) restarts the run
    memory.observe(image, 1, large, 0.95, 4)
    assert memory.get(1) is None
    for i in range(5, 9):
        memory.observe(image, 1, small if i < 8 else large, 0.95, i)
    remembered = memory.get(1)
    assert remembered is not None and "frame 8" in remembered.source
    memory.observe(image, 1, small, 0.95, 9)
    assert memory.get(1) is remembered  # a smaller view does not replace a larger one
    memory.forget(set())
    assert memory.get(1) is None


def test_references_prefer_memory_then_given_then_an_exemplar_of_the_same_tone():
    dark, light = _face(1, (70, 45, 35)), _face(2, (230, 200, 185))
    exemplars = [ReferenceFace(dark, "exemplar dark", exemplar=True), ReferenceFace(light, "exemplar light", exemplar=True)]
    refs = References(given=[], exemplars=exemplars, memory=None)
    assert refs.for_track(1, _face(3, (225, 195, 180))).source == "exemplar light"
    assert refs.for_track(2, _face(4, (80, 50, 40))).source == "exemplar dark"
    # Chosen once per track: a changed crop does not switch it.
    assert refs.for_track(1, dark).source == "exemplar light"
    given = ReferenceFace(_face(5), "me.png")
    memory = IdentityMemory(MemorySettings(min_streak=0, refresh=1, min_side=1), crop_scale=1.2)
    refs = References(given=[given], exemplars=exemplars, memory=memory)
    assert refs.for_track(3, light).source == "me.png"
    memory.observe(_face(6), 3, np.array([40, 40, 120, 140], np.float32), 0.99, 1)
    assert refs.for_track(3, light).source.startswith("track 3")


def test_exemplar_bank_round_trips_and_ships(tmp_path):
    crops = [_face(i) for i in range(3)]
    save_exemplars(tmp_path / "bank.npz", crops, ["a.jpg", "b.jpg", "c.jpg"])
    loaded = load_exemplars(tmp_path / "bank.npz")
    assert [r.source for r in loaded] == ["exemplar a.jpg", "exemplar b.jpg", "exemplar c.jpg"]
    assert all(r.exemplar for r in loaded)
    assert np.abs(loaded[0].crop.astype(int) - crops[0]).mean() < 3  # JPEG at quality 92
    assert len(load_exemplars(EXEMPLARS)) >= 100


def test_paste_takes_the_fine_band_from_the_detail_crop():
    frame = np.full((200, 200, 3), 120, np.uint8)
    window = CropWindow(20.0, 20.0, 160.0)
    patch = np.full((32, 32, 3), 150.0, np.float32)  # a flat, blurry generator output
    alpha = np.zeros((32, 32), np.float32)
    alpha[8:24, 8:24] = 1.0
    stripes = np.zeros((REFERENCE_SIDE, REFERENCE_SIDE, 3), np.uint8)
    stripes[:, ::8] = 255  # fine vertical lines
    flat, detailed = frame.copy(), frame.copy()
    window.paste(flat, patch, alpha)
    window.paste(detailed, patch, alpha, detail=stripes, detail_sigma=2.0)
    inside = (slice(80, 120), slice(80, 120))
    assert flat[inside].std() < 1 and abs(float(flat[inside].mean()) - 150) < 1
    assert detailed[inside].std() > 20  # the lines came through at frame resolution
    assert abs(float(detailed[inside].mean()) - 150) < 12  # the colour stays the generator's
    assert (detailed[:20] == 120).all()  # outside the window nothing changes


def test_a_large_face_lends_its_detail_at_its_own_resolution():
    rng = np.random.default_rng(0)
    frame = np.full((480, 480, 3), 128, np.uint8)
    frame[..., 0] = np.clip(128 + rng.normal(0, 40, (480, 480)), 0, 255)  # detail finer than a 192 px crop holds
    box = np.array([90, 90, 390, 390], np.float32)
    reference = person_reference(frame, box, crop_scale=1.2, source="me.png")
    assert reference.crop.shape == (REFERENCE_SIDE, REFERENCE_SIDE, 3) and reference.detail.shape == (360, 360, 3)
    window = CropWindow.for_face(box, 1.2)
    generated = cv2.GaussianBlur(window.cut(frame, 128).astype(np.float32), (0, 0), 2.0)  # the low band only
    alpha = np.zeros((128, 128), np.float32)
    alpha[32:96, 32:96] = 1.0
    # The reference's own window, by the boxes and as a fitted map onto its 192 px crop.
    by_box = Guide(reference, None).lent()
    fitted = Guide(reference, np.array([[1.5, 0, 0.25], [0, 1.5, 0.25]], np.float32)).lent()
    assert by_box[0] is reference.detail and by_box[1] is None
    k = 360 / 128  # generator pixel centres onto the detail crop's
    np.testing.assert_allclose(fitted[1], [[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5]], rtol=1e-6)
    inside = (slice(180, 300), slice(180, 300))
    errors = {}
    for name, (detail, detail_map, _) in {"crop": (reference.crop, None, None), "by box": by_box,
                                           "fitted": fitted}.items():
        out = frame.copy()
        window.paste(out, generated, alpha, detail=detail, detail_map=detail_map, detail_sigma=2.0)
        errors[name] = float(np.abs(out[inside].astype(int) - frame[inside]).mean())
    assert errors["by box"] < 0.5 * errors["crop"]  # the finest band came from the large crop
    assert abs(errors["fitted"] - errors["by box"]) < 0.5
    small = person_reference(frame, box / 3, crop_scale=1.2, source="small.png")
    assert small.detail is None and Guide(small, None).lent()[0] is small.crop


def test_bad_reference_is_a_one_line_error(tmp_path, tiny_weights, capsys):
    from tests.media import make_video
    from tests.test_pipeline import _bad

    clip = make_video(tmp_path / "clip.mp4", frames=3)
    out = tmp_path / "out.mp4"
    message = _bad(tmp_path, tiny_weights, capsys, "--input", str(clip), "--output", str(out),
                   "--reference", str(tmp_path / "missing.png"))
    assert "reference not found" in message and not out.exists() and not list(tmp_path.glob("*.partial*"))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((64, 64, 3), np.uint8))
    assert "no face found" in _bad(tmp_path, tiny_weights, capsys, "--input", str(clip), "--output", str(out),
                                   "--reference", str(blank))


def test_alignment_finds_the_shift_between_a_face_and_its_reference():
    from stream.reference import align_to

    rng = np.random.default_rng(7)
    blobs = cv2.GaussianBlur(rng.uniform(0, 255, (REFERENCE_SIDE, REFERENCE_SIDE)).astype(np.float32), (0, 0), 8)
    blobs = (blobs - blobs.min()) / (blobs.max() - blobs.min()) * 255
    face = np.repeat(blobs[..., None], 3, axis=2).astype(np.uint8)
    shifted = np.roll(face, (6, -4), axis=(0, 1))  # the reference's features lie 6 px lower, 4 px left
    crop = cv2.resize(face, (64, 64), interpolation=cv2.INTER_AREA)
    visible = np.zeros((64, 64), bool)
    visible[8:40, 8:56] = True
    reference = ReferenceFace(shifted, "shifted")
    matrix = align_to(crop, visible, reference)
    assert matrix is not None
    # Crop pixel centre x maps to reference pixel 3 x + 1 (centres, 3 reference pixels a crop pixel), moved by the shift.
    np.testing.assert_allclose(matrix[:, 2], [-4 + 1, 6 + 1], atol=0.15)
    # Seen through the fit, the reference lies on the crop: no sub-pixel offset is left between them.
    seen = cv2.cvtColor(Guide(reference, matrix).in_window(64), cv2.COLOR_RGB2GRAY).astype(np.float32)
    (dx, dy), _ = cv2.phaseCorrelate(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32), seen)
    assert abs(dx) < 0.1 and abs(dy) < 0.1
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert align_to(flat, visible, ReferenceFace(shifted, "shifted")) is None  # nothing to fit on


class _RecordingEngine:
    """A reference-conditioned generator stand-in: returns the reference where one is valid."""

    backend = "test"

    def __init__(self, size: int) -> None:
        import torch

        from engines.runtime import TensorSpec

        self.device = torch.device("cpu")
        self.inputs = tuple(TensorSpec(n, ("N", c, size, size), "float32")
                            for n, c in (("image", 3), ("mask", 1), ("reference", 3), ("reference_mask", 1)))
        self.feeds = []

    def run(self, feeds, stream=None):
        self.feeds.append({k: v.clone() for k, v in feeds.items()})
        valid = feeds["reference_mask"]
        return {"output": feeds["reference"] * valid + feeds["image"] * (1 - valid)}


def test_reference_generator_gets_each_faces_reference_in_its_window():
    from engines.models.generator import GeneratorConfig
    from stream.inpaint import FaceInpainter
    from stream.records import Track
    from stream.smoothing import TemporalConfig

    size = 32
    config = GeneratorConfig(size=size, width=4, mask_dilation=1, reference=True)
    given = ReferenceFace(_face(3), "me.png")
    engine = _RecordingEngine(size)
    refs = References(given=[given], exemplars=[], memory=None)
    inpainter = FaceInpainter(engine, config, temporal=TemporalConfig(enabled=False), references=refs)
    image = np.full((120, 160, 3), 90, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    track = Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)
    inpainter(image, [track])
    feeds = engine.feeds[-1]
    assert feeds["reference_mask"].min() == 1
    seen = (feeds["reference"][0].permute(1, 2, 0).numpy() * 255).astype(np.float32)
    # Flat face, so the alignment keeps the windows' own framing: the reference, resized.
    expected = cv2.resize(given.crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(seen - expected).mean() < 4.0

    no_refs = FaceInpainter(engine, config, temporal=TemporalConfig(enabled=False),
                            references=References(given=[], exemplars=[], memory=None))
    out = no_refs(image, [track])
    feeds = engine.feeds[-1]
    assert feeds["reference_mask"].max() == 0 and feeds["reference"].abs().max() == 0
    assert (out == 90).all()  # "no reference" is zeros, and the stand-in then gives the face back


def _masked_face_scene():
    """(config, image, mask, track): a 32 px reference-conditioned generator's config and one
    tracked face with its mask, in a flat grey 160x120 frame."""
    from engines.models.generator import GeneratorConfig
    from stream.records import Track

    config = GeneratorConfig(size=32, width=4, mask_dilation=1, reference=True)
    image = np.full((120, 160, 3), 90, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    return config, image, mask, Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)


class _PlainEngine:
    """The generator's form without reference inputs: gives the image back, counting its calls."""

    backend = "test"

    def __init__(self, size: int) -> None:
        import torch

        from engines.runtime import TensorSpec

        self.device = torch.device("cpu")
        self.inputs = tuple(TensorSpec(n, ("N", c, size, size), "float32") for n, c in (("image", 3), ("mask", 1)))
        self.calls = 0

    def run(self, feeds, stream=None):
        assert sorted(feeds) == ["image", "mask"]
        self.calls += 1
        return {"output": feeds["image"]}


def test_faces_without_a_reference_run_the_generator_form_that_takes_none():
    from stream.inpaint import FaceInpainter
    from stream.smoothing import TemporalConfig

    config, image, mask, track = _masked_face_scene()
    size = config.size
    for given, plain_calls, full_calls in (([], 1, 0), ([ReferenceFace(_face(3), "me.png")], 0, 1)):
        full, plain = _RecordingEngine(size), _PlainEngine(size)
        inpainter = FaceInpainter(full, config, temporal=TemporalConfig(enabled=False), no_reference_engine=plain,
                                  references=References(given=given, exemplars=[], memory=None))
        inpainter(image, [track])
        assert (plain.calls, len(full.feeds)) == (plain_calls, full_calls)


def _parts_labels(size: int, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """A parsing map with skin, two eyes, a nose and a mouth drawn as boxes, moved by (dx, dy)."""
    labels = np.zeros((size, size), np.uint8)
    s = size / 128

    def box(cls, x1, y1, x2, y2):
        labels[int((y1 + dy) * s):int((y2 + dy) * s), int((x1 + dx) * s):int((x2 + dx) * s)] = cls

    box(1, 24, 20, 104, 118)
    box(4, 36, 44, 52, 50)
    box(5, 76, 44, 92, 50)
    box(6, 56, 50, 72, 72)
    box(7, 44, 84, 84, 90)
    box(9, 44, 90, 84, 96)
    return labels


class _ParsingEngine:
    """Stands in for the parsing net: bright crops (the exemplar) get the parts where drawn,
    darker ones (the completed face) the same parts moved by ``shift``."""

    backend = "test"

    def __init__(self, size: int = 128, shift=(4.0, 6.0)) -> None:
        import torch

        from engines.runtime import TensorSpec

        self.device = torch.device("cpu")
        self.inputs = (TensorSpec("image", ("N", 3, size, size), "float32"),)
        self.size, self.shift = size, shift

    def run(self, feeds, stream=None):
        import torch

        out = []
        for image in feeds["image"]:
            moved = (0.0, 0.0) if float(image.mean()) > 0.6 else self.shift
            labels = torch.from_numpy(_parts_labels(self.size, *moved)).long()
            out.append(torch.nn.functional.one_hot(labels, 10).permute(2, 0, 1).float())
        return {"logits": torch.stack(out)}


def test_part_points_are_the_centres_of_the_parts_and_none_without_one():
    from stream.reference import part_points

    labels = _parts_labels(128)
    points = part_points(labels)
    np.testing.assert_allclose(points[:3], [[43.5, 46.5], [83.5, 46.5], [63.5, 60.5]], atol=0.01)
    assert points[3, 0] < 48 and points[4, 0] > 80 and abs(points[5, 1] - 89.5) < 0.5
    labels[labels == 6] = 1
    assert part_points(labels) is None


def test_parts_map_recovers_a_pose_and_refuses_a_squashed_face():
    from stream.reference import parts_map, part_points

    face = part_points(_parts_labels(128))
    angle, scale = np.deg2rad(8), 1.1
    turn = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    reference = face @ turn.T + (5.0, -3.0)
    # Reference points at the crop's scale; the map goes to reference pixels 1.5 times larger
    # (pixel centres: a point x there is 1.5 x + 0.25 here).
    matrix = parts_map(face, reference, scale=1.5)
    np.testing.assert_allclose(matrix[:, :2], 1.5 * turn, atol=1e-4)
    np.testing.assert_allclose(matrix[:, 2], (7.5 + 0.25, -4.5 + 0.25), atol=1e-3)
    squashed = face * (1.0, 0.5)
    assert parts_map(face, squashed, scale=1.0) is None


def test_an_exemplar_is_fitted_to_the_completed_face_and_lends_only_its_lower_face():
    from stream.reference import Guide, PartsLocator

    rng = np.random.default_rng(0)
    texture = rng.uniform(-40, 40, (REFERENCE_SIDE, REFERENCE_SIDE, 1)).astype(np.float32)
    exemplar = ReferenceFace(np.clip(200 + texture, 0, 255).astype(np.uint8).repeat(3, 2), "exemplar x", exemplar=True)
    refs = References(given=[], exemplars=[exemplar], memory=None, locator=PartsLocator(_ParsingEngine()))
    completed = np.full((128, 128, 3), 90, np.uint8)
    fitted = refs.fit_parts(7, Guide(exemplar, None), completed)
    # The face's parts sit 4 px right and 6 px down of the exemplar's: a shift, in reference pixels
    # (pixel centres: crop pixel x is reference pixel k x + (k - 1) / 2).
    k = REFERENCE_SIDE / 128
    c = (k - 1) / 2
    np.testing.assert_allclose(fitted.to_reference, [[k, 0, -4 * k + c], [0, k, -6 * k + c]], atol=0.05)
    lent = fitted.reference.crop.astype(np.float32) - cv2.GaussianBlur(fitted.reference.crop.astype(np.float32),
                                                                      (0, 0), 2 * k)
    mouth = np.abs(lent[int(88 * k):int(110 * k), int(40 * k):int(88 * k)]).mean()
    eyes = np.abs(lent[int(36 * k):int(52 * k), int(30 * k):int(98 * k)]).mean()
    outside = np.abs(lent[:, :int(16 * k)]).mean()
    assert mouth > 8 * max(eyes, outside)
    # Until the next refit the track keeps that fit; a person's own reference is never refitted.
    assert refs.fit_parts(7, Guide(exemplar, None), completed) is fitted
    own = Guide(ReferenceFace(_face(2), "me.png"), None)
    assert refs.fit_parts(8, own, completed) is own


def test_an_exemplar_lends_nothing_along_its_own_outline():
    # Its outline's shading, lent where the face it fills is wider, showed as a line on the cheek.
    from stream.reference import PartsLocator

    rng = np.random.default_rng(2)
    texture = rng.uniform(-40, 40, (REFERENCE_SIDE, REFERENCE_SIDE, 1)).astype(np.float32)
    exemplar = ReferenceFace(np.clip(200 + texture, 0, 255).astype(np.uint8).repeat(3, 2), "exemplar z", exemplar=True)
    locator = PartsLocator(_ParsingEngine())
    k = REFERENCE_SIDE / 128

    def lent(inset: float) -> tuple[float, float]:
        crop = locator.lendable(exemplar, 128, inset=inset)[1].crop.astype(np.float32)
        band = np.abs(crop - cv2.GaussianBlur(crop, (0, 0), 2 * k))
        rows = slice(int(92 * k), int(110 * k))
        # The drawn skin's outline is at x = 24 and 104 (see _parts_labels).
        return band[rows, int(24 * k):int(29 * k)].mean(), band[rows, int(44 * k):int(84 * k)].mean()

    edge_bare, middle_bare = lent(0.0)
    edge_inset, middle_inset = lent(0.05)
    assert edge_bare > 5 and edge_inset < 0.3 * edge_bare
    assert middle_inset > 0.9 * middle_bare


def test_a_track_settles_on_the_short_listed_exemplar_whose_mouth_agrees_with_the_drawn_one():
    from stream.reference import PartsLocator

    k = REFERENCE_SIDE / 128
    rows = np.arange(128, dtype=np.float32)[:, None].repeat(128, 1)
    lip_lines = 30 * np.sin(rows / 2.0)  # what the generator drew: horizontal lines across the mouth
    teeth = lip_lines.T  # another mouth: vertical lines
    mouth = np.zeros((128, 128), bool)
    mouth[84:96, 44:84] = True
    completed = np.full((128, 128), 90.0, np.float32)
    completed[mouth] += lip_lines[mouth]
    completed = completed.astype(np.uint8)[..., None].repeat(3, 2)
    drawn = mouth.astype(np.float32)

    def exemplar(lines: np.ndarray, name: str) -> ReferenceFace:
        # Its parts sit 4 px left and 6 px up of the drawn face's (see _ParsingEngine).
        face = np.full((128, 128), 200.0, np.float32)
        face[78:90, 40:80] += lines[84:96, 44:84]
        return ReferenceFace(cv2.resize(face, (REFERENCE_SIDE, REFERENCE_SIDE)).astype(np.uint8)[..., None].repeat(3, 2),
                             name, exemplar=True)

    closed, smiling = exemplar(lip_lines, "exemplar closed"), exemplar(teeth, "exemplar smiling")
    crop = smiling.crop.copy()  # the upper faces rank the smiling one first
    for shortlist, settled in ((1, "exemplar smiling"), (2, "exemplar closed")):
        refs = References(given=[], exemplars=[smiling, closed], memory=None,
                          locator=PartsLocator(_ParsingEngine()), shortlist=shortlist)
        first = refs.for_track(7, crop)
        assert first.source == "exemplar smiling"
        fitted = refs.fit_parts(7, Guide(first, None), completed, drawn)
        assert refs.for_track(7, crop).source == settled
        c = (k - 1) / 2
        np.testing.assert_allclose(fitted.to_reference, [[k, 0, -4 * k + c], [0, k, -6 * k + c]], atol=0.05)
        # Settled once: later frames keep it whatever they show.
        refs.fit_parts(7, Guide(refs.for_track(7, crop), None), 255 - completed, drawn)
        assert refs.for_track(7, crop).source == settled


def test_an_exemplar_lends_its_detail_without_being_the_generators_reference():
    from stream.inpaint import FaceInpainter
    from stream.reference import PartsLocator
    from stream.smoothing import TemporalConfig

    config, image, mask, track = _masked_face_scene()
    size = config.size
    exemplar = ReferenceFace(_face(5), "exemplar y", exemplar=True)
    full, plain = _RecordingEngine(size), _PlainEngine(size)
    refs = References(given=[], exemplars=[exemplar], memory=None, locator=PartsLocator(_ParsingEngine()))
    inpainter = FaceInpainter(full, config, temporal=TemporalConfig(enabled=False), no_reference_engine=plain,
                              references=refs)
    out = inpainter(image, [track])
    assert (plain.calls, len(full.feeds)) == (1, 0)
    assert np.abs(out.astype(int) - 90)[mask].mean() > 1.0  # the exemplar's detail is in the hole
    assert (out[:45] == 90).all() and (out[110:] == 90).all()  # far from the hole, nothing moves


def test_a_lend_weight_must_cover_the_image_it_lends_from():
    crop = np.zeros((REFERENCE_SIDE, REFERENCE_SIDE, 3), np.uint8)
    ReferenceFace(crop, "a.png", lend_weight=np.ones((REFERENCE_SIDE, REFERENCE_SIDE), np.float32))
    ReferenceFace(crop, "b.png", detail=np.zeros((300, 300, 3), np.uint8), lend_weight=np.ones((300, 300), np.float32))
    with pytest.raises(ValueError, match="lend_weight"):  # the crop's side, where the detail is what is lent
        ReferenceFace(crop, "c.png", detail=np.zeros((300, 300, 3), np.uint8),
                      lend_weight=np.ones((REFERENCE_SIDE, REFERENCE_SIDE), np.float32))


def test_where_the_reference_lends_nothing_the_generated_face_keeps_its_own_detail():
    # An exemplar lends its band inside its lower face only: outside it the paste used to lend the
    # blurred rest of the exemplar, a band of nothing, so the generator's own detail was wiped there.
    rng = np.random.default_rng(4)
    frame = np.full((300, 300, 3), 100, np.uint8)
    window = CropWindow(22.0, 22.0, 256.0)
    generated = np.clip(128 + rng.normal(0, 30, (128, 128, 3)), 0, 255).astype(np.float32)
    detail = np.clip(128 + rng.normal(0, 30, (256, 256, 3)), 0, 255).astype(np.uint8)
    weight = np.zeros((256, 256), np.float32)
    weight[:, 128:] = 1.0  # lends on the image's right half only
    alpha = np.ones((128, 128), np.float32)
    outs = {}
    for name, kwargs in {"own": {}, "lent": {"detail": detail, "detail_sigma": 2.0},
                         "weighted": {"detail": detail, "detail_sigma": 2.0, "detail_weight": weight}}.items():
        outs[name] = frame.copy()
        window.paste(outs[name], generated, alpha, **kwargs)
    left, right = (slice(40, 260), slice(40, 130)), (slice(40, 260), slice(170, 260))
    assert np.array_equal(outs["weighted"][left], outs["own"][left])
    assert np.abs(outs["weighted"][right].astype(int) - outs["lent"][right]).max() <= 1


def test_the_lent_band_survives_a_sub_pixel_warp():
    # A person's reference at its own resolution is warped onto the face at some sub-pixel shift;
    # a bilinear resample there keeps about 0.7 of the very band it is lent for.
    rng = np.random.default_rng(1)
    frame = np.full((400, 400, 3), 128, np.uint8)
    window = CropWindow(40.0, 40.0, 320.0)
    noise = cv2.GaussianBlur(rng.normal(0, 40, (320, 320, 3)).astype(np.float32), (0, 0), 0.7)
    detail = np.clip(128 + noise, 0, 255).astype(np.uint8)
    generated = np.full((128, 128, 3), 128.0, np.float32)
    alpha = np.zeros((128, 128), np.float32)
    alpha[32:96, 32:96] = 1.0
    k = 320 / 128
    quarter_pixel = np.array([[k, 0, 0.5 * k - 0.5 + 0.25], [0, k, 0.5 * k - 0.5 + 0.25]], np.float32)
    out = frame.copy()
    window.paste(out, generated, alpha, detail=detail, detail_map=quarter_pixel, detail_sigma=2.0)
    lent = out[160:280, 160:280].astype(np.float32)
    own = detail.astype(np.float32)
    own = (own - cv2.GaussianBlur(own, (0, 0), 2.0 * k))[120:240, 120:240]  # the band lent, unshifted
    assert np.abs(np.diff(lent, axis=1)).mean() > 0.85 * np.abs(np.diff(own, axis=1)).mean()


def test_eye_pair_takes_the_two_eyes_side_by_side_and_nothing_else():
    from stream.reference import eye_pair

    eyes = np.zeros((128, 128), bool)
    eyes[44:50, 36:52] = True  # left eye, centre (43.5, 46.5)
    eyes[45:51, 76:92] = True  # right eye, centre (83.5, 47.5)
    eyes[90:92, 60:62] = True  # a speck on the mask: too small to be an eye
    np.testing.assert_allclose(eye_pair(eyes), [[43.5, 46.5], [83.5, 47.5]], atol=0.01)
    eyes[45:51, 76:92] = False
    assert eye_pair(eyes) is None  # one eye
    eyes[70:76, 76:92] = True
    assert eye_pair(eyes) is None  # a second area, but far below the first: not a pair


def test_eyes_map_lays_the_reference_eyes_on_the_faces_and_refuses_a_stretch():
    from stream.reference import eyes_map

    face = np.array([[40.0, 50.0], [88.0, 50.0]], np.float32)
    # The reference's eyes closer together (its face smaller in its window) and higher.
    reference = np.array([[46.0, 44.0], [82.0, 44.0]], np.float32)
    matrix = eyes_map(face, reference, scale=1.5)
    mapped = np.hstack([face, np.ones((2, 1), np.float32)]) @ matrix.T
    # In reference pixels 1.5 times larger, pixel centres: a point x at the crop's scale is 1.5 x + 0.25.
    np.testing.assert_allclose(mapped, 1.5 * reference + 0.25, atol=1e-3)
    np.testing.assert_allclose(matrix[:, :2], 1.5 * 0.75 * np.eye(2), atol=1e-4)
    assert eyes_map(face, reference * (0.6, 1.0), scale=1.0) is None  # eyes far closer: not a pose


def test_a_persons_reference_is_laid_on_the_face_by_its_eyes_where_the_shift_fit_is_off():
    from stream.reference import PartsLocator

    own = ReferenceFace(np.full((REFERENCE_SIDE, REFERENCE_SIDE, 3), 200, np.uint8), "me.png")
    # The reference's eyes are found by the net that found the face's (the eye guard's).
    refs = References(given=[own], exemplars=[], memory=None, eye_locator=PartsLocator(_ParsingEngine()))
    crop = np.full((128, 128, 3), 90, np.uint8)
    visible = np.zeros((128, 128), bool)
    visible[20:60] = True
    # The face's eyes (the eye guard's map) 8 px lower and further apart than the reference's
    # (parsed at (43.5, 46.5) and (83.5, 46.5)): the face is larger in its window.
    eyes = np.zeros((128, 128), bool)
    eyes[52:58, 30:46] = True
    eyes[52:58, 82:98] = True
    guide = refs.guide(1, crop, visible, eyes)
    mapped = np.array([[37.5, 54.5, 1.0], [89.5, 54.5, 1.0]], np.float32) @ guide.to_reference.T
    k = REFERENCE_SIDE / 128
    np.testing.assert_allclose(mapped, k * np.array([[43.5, 46.5], [83.5, 46.5]]) + (k - 1) / 2, atol=0.01)
    # Without the face's eyes the reference keeps the shift on the upper face (here: nothing to fit
    # on a flat crop, so the windows' own box alignment).
    assert refs.guide(2, crop, visible).to_reference is None
    # Where the shift fit (here the windows' box alignment) already lays the eyes within a few
    # pixels, it stays: it is the finer fit.
    near = np.zeros((128, 128), bool)
    near[44:50, 36:52] = True
    near[45:50, 76:92] = True
    assert refs.guide(3, crop, visible, near).to_reference is None
    # Nor without that net: the face's eyes alone say nothing about where the reference's are.
    clean_only = References(given=[own], exemplars=[], memory=None, locator=PartsLocator(_ParsingEngine()))
    assert clean_only.guide(1, crop, visible, eyes).to_reference is None



def test_a_persons_reference_lends_its_detail_without_its_eyes_and_feeds_the_generator_whole():
    from stream.reference import PartsLocator

    rng = np.random.default_rng(3)
    texture = rng.uniform(-40, 40, (REFERENCE_SIDE, REFERENCE_SIDE, 1)).astype(np.float32)
    own = ReferenceFace(np.clip(200 + texture, 0, 255).astype(np.uint8).repeat(3, 2), "me.png")
    refs = References(given=[own], exemplars=[], memory=None, eye_locator=PartsLocator(_ParsingEngine()))
    visible = np.zeros((128, 128), bool)
    visible[20:60] = True
    guide = refs.guide(1, np.full((128, 128, 3), 90, np.uint8), visible)
    assert guide.reference is own  # what the generator sees
    lent, _, weight = guide.lent()
    k = REFERENCE_SIDE / 128
    assert weight[int(47 * k), int(44 * k)] < 0.05 and weight[int(100 * k), int(64 * k)] > 0.95
    band = np.abs(lent.astype(np.float32) - cv2.GaussianBlur(lent.astype(np.float32), (0, 0), 2 * k))
    # The eyes are drawn at rows 44-50 (crop pixels) of columns 36-52 and 76-92.
    eyes = band[int(45 * k):int(49 * k), int(38 * k):int(50 * k)].mean()
    mouth = band[int(88 * k):int(110 * k), int(40 * k):int(88 * k)].mean()
    assert mouth > 8 * eyes  # no lower lids of open eyes under eyes that are closed now
    own_band = np.abs(own.crop.astype(np.float32) - cv2.GaussianBlur(own.crop.astype(np.float32), (0, 0), 2 * k))
    assert mouth > 0.9 * own_band[int(88 * k):int(110 * k), int(40 * k):int(88 * k)].mean()  # the rest as it was
