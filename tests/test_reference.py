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
    load_exemplars,
    load_references,
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
    matrix = align_to(crop, visible, ReferenceFace(shifted, "shifted"))
    assert matrix is not None
    np.testing.assert_allclose(matrix[:, 2], [-4, 6], atol=1.0)  # in reference pixels
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
    from engines.models.generator import GeneratorConfig
    from stream.inpaint import FaceInpainter
    from stream.records import Track
    from stream.smoothing import TemporalConfig

    size = 32
    config = GeneratorConfig(size=size, width=4, mask_dilation=1, reference=True)
    image = np.full((120, 160, 3), 90, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[60:95, 50:90] = True
    track = Track(1, np.array([40, 20, 100, 100], np.float32), 0.9, mask)
    for given, plain_calls, full_calls in (([], 1, 0), ([ReferenceFace(_face(3), "me.png")], 0, 1)):
        full, plain = _RecordingEngine(size), _PlainEngine(size)
        inpainter = FaceInpainter(full, config, temporal=TemporalConfig(enabled=False), no_reference_engine=plain,
                                  references=References(given=given, exemplars=[], memory=None))
        inpainter(image, [track])
        assert (plain.calls, len(full.feeds)) == (plain_calls, full_calls)
