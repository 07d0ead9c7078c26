"""Face-completion generator, its discriminator, parsing net, data labels and metrics.

Fast and self-contained: small untrained models, no ../shared data.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from engines.models.discriminators import build_discriminator
from engines.models.generator import (
    ContextualAttention,
    GeneratorConfig,
    GeneratorWeightsError,
    build_generator,
    load_generator,
    save_generator,
    square_crop_box,
    widen_inputs,
    without_reference,
)
from engines.models.parsing import PARSING_CLASSES, build_parsing_net
from engines.export import TENSORRT_ONNX_OPS
from training.data.generator_data import parsing_labels
from training.metrics.image_metrics import psnr, ssim


SIZE = 64


@pytest.fixture(scope="module")
def small_generator():
    torch.manual_seed(0)
    # Blurred output as in the shipped config, so export and parity cover the blur too.
    return build_generator(config=GeneratorConfig(size=SIZE, width=8, output_blur=1.0)).eval()


def _inputs(n: int = 2, size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, size, size, generator=g)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, size // 2: size - 6, size // 5: size - size // 5] = 1.0
    return image, mask


def test_output_shape_and_range(small_generator):
    image, mask = _inputs()
    with torch.no_grad():
        out = small_generator(image, mask)
    assert out.shape == image.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_empty_hole_gives_valid_output(small_generator):
    image, _ = _inputs()
    with torch.no_grad():
        out = small_generator(image, torch.zeros(2, 1, SIZE, SIZE))
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_pixels_inside_the_hole_are_ignored(small_generator):
    image, mask = _inputs()
    scribbled = image.clone()
    scribbled[mask.expand_as(image) > 0] = torch.rand(int(mask.sum().item()) * 3)
    with torch.no_grad():
        a, b = small_generator(image, mask), small_generator(scribbled, mask)
    torch.testing.assert_close(a, b)


def test_known_pixels_change_the_output(small_generator):
    image, mask = _inputs()
    with torch.no_grad():
        a = small_generator(image, mask)
        b = small_generator(1.0 - image, mask)
    assert (a - b).abs().max() > 1e-3


def test_soft_mask_is_binarised(small_generator):
    image, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(small_generator(image, mask * 0.9), small_generator(image, mask))


def test_contextual_attention_softmax_stays_fp32_under_bf16_autocast(small_generator):
    image, mask = _inputs()
    seen = []
    real_softmax = torch.softmax

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return real_softmax(x, *args, **kwargs)

    with mock.patch.object(torch, "softmax", spy), torch.autocast("cpu", dtype=torch.bfloat16):
        out = small_generator(image, mask)
    assert seen and all(d == torch.float32 for d in seen)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_contextual_attention_pastes_known_features_only():
    torch.manual_seed(0)
    ca = ContextualAttention(scale=10.0)
    x = torch.randn(1, 4, 16, 16)
    keys = torch.randn(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ca(x.bfloat16() * 1e3, keys.bfloat16() * 1e3, mask)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # Outside the hole the features pass through untouched.
    keep = mask.expand_as(x) == 0
    torch.testing.assert_close(out[keep], (x.bfloat16() * 1e3).float()[keep])
    # Inside, every value is a convex combination of known features (within their range).
    known = (x.bfloat16() * 1e3).float()[keep]
    assert out[~keep].min() >= known.min() - 1e-3 and out[~keep].max() <= known.max() + 1e-3


def test_output_blur_smooths_the_prediction_and_only_at_inference(small_generator):
    image, mask = _inputs()
    with torch.no_grad():
        _, refined = small_generator.forward_stages(image, mask)
        out = small_generator(image, mask)
    # Training sees the sharp prediction; inference a smoothed one with the same colours.
    assert not torch.allclose(out, refined)
    torch.testing.assert_close(out.mean((2, 3)), refined.mean((2, 3)), atol=0.01, rtol=0)
    blur = small_generator.blur
    checker = (torch.arange(SIZE)[:, None] + torch.arange(SIZE)[None, :]).remainder(2).float().expand(1, 3, -1, -1)
    assert blur(checker).std() < 0.1 * checker.std()  # a 2x2 checkerboard is wiped out
    flat = torch.full((1, 3, SIZE, SIZE), 0.3)
    torch.testing.assert_close(blur(flat), flat)  # flat areas and borders keep their value
    assert "blur.kernel" not in small_generator.state_dict()
    assert build_generator(config=GeneratorConfig(size=SIZE, width=8)).blur is None


def test_square_crop_box_is_square_centred_and_scaled():
    face = np.array([10.0, 20.0, 70.0, 100.0])  # 60 x 80
    box = square_crop_box(face, crop_scale=1.5)
    assert box.dtype == np.float32 and box.shape == (4,)
    assert box[2] - box[0] == pytest.approx(120.0) and box[3] - box[1] == pytest.approx(120.0)
    assert (box[0] + box[2]) / 2 == pytest.approx(40.0) and (box[1] + box[3]) / 2 == pytest.approx(60.0)
    assert box[0] <= face[0] and box[1] <= face[1] and box[2] >= face[2] and box[3] >= face[3]


def test_square_crop_box_rejects_bad_boxes():
    with pytest.raises(ValueError):
        square_crop_box(np.array([10.0, 10.0, 5.0, 30.0]), crop_scale=1.2)
    with pytest.raises(ValueError):
        square_crop_box(np.array([1.0, 2.0, 3.0]), crop_scale=1.2)


def test_config_validation():
    with pytest.raises(ValueError):
        GeneratorConfig(size=100)
    with pytest.raises(ValueError):
        GeneratorConfig(crop_scale=0.8)
    with pytest.raises(ValueError):
        GeneratorConfig(output_blur=-1.0)


def test_save_load_roundtrip(tmp_path, small_generator):
    path = tmp_path / "g.pt"
    save_generator(small_generator, small_generator.config, path, meta={"steps": 3})
    loaded, config = load_generator(path)
    assert config == small_generator.config
    sd = torch.load(path, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    image, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, mask), small_generator(image, mask), atol=1e-2, rtol=0)


def test_load_missing_weights_raises(tmp_path):
    with pytest.raises(GeneratorWeightsError):
        load_generator(tmp_path / "nope.pt")


@pytest.fixture(scope="module")
def reference_generator():
    torch.manual_seed(1)
    return build_generator(config=GeneratorConfig(size=SIZE, width=8, output_blur=1.0, reference=True)).eval()


def _reference_inputs(n: int = 2, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g), torch.ones(n, 1, SIZE, SIZE)


@pytest.mark.parametrize("with_reference", [False, True])
def test_onnx_export_parity_and_tensorrt_ops(tmp_path, small_generator, reference_generator, with_reference):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    generator = reference_generator if with_reference else small_generator
    inputs = _inputs(n=1) + (_reference_inputs(n=1) if with_reference else ())
    names = list(generator.config.input_names)
    program = torch.onnx.export(generator, inputs, dynamo=True, input_names=names, output_names=["output"])
    path = tmp_path / "g.onnx"
    program.save(str(path))
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == names
    assert [o.name for o in model.graph.output] == ["output"]
    ops = {node.op_type for node in model.graph.node}
    assert ops <= TENSORRT_ONNX_OPS, f"ops TensorRT cannot parse: {sorted(ops - TENSORRT_ONNX_OPS)}"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["output"], {name: t.numpy() for name, t in zip(names, inputs)})
    with torch.no_grad():
        ref = generator(*inputs).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=0)


def test_widened_generator_starts_as_the_old_one_and_reads_the_reference(small_generator):
    config = GeneratorConfig(size=SIZE, width=8, output_blur=1.0, reference=True)
    widened = build_generator(config=config).eval()
    widen_inputs(widened, dict(small_generator.state_dict()))
    image, mask = _inputs()
    reference, valid = _reference_inputs()
    with torch.no_grad():
        before = small_generator(image, mask)
        without = widened(image, mask, reference, torch.zeros_like(valid))
        with_ref = widened(image, mask, reference, valid)
    torch.testing.assert_close(without, before, atol=1e-5, rtol=0)
    # Contextual attention already borrows from a valid reference before any training.
    assert (with_ref - before).abs().max() > 1e-6
    with pytest.raises(ValueError, match="reference"):
        widened(image, mask)


def test_form_without_reference_computes_what_an_all_zero_reference_mask_gives(small_generator, reference_generator):
    plain = without_reference(reference_generator)
    assert not plain.config.reference and plain.config.input_names == ("image", "mask")
    image, mask = _inputs()
    reference, valid = _reference_inputs()
    with torch.no_grad():
        want = reference_generator(image, mask, reference, torch.zeros_like(valid))
        got = plain(image, mask)
        with_ref = reference_generator(image, mask, reference, valid)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (with_ref - want).abs().max() > 1e-4  # the reference matters, so the match above is not vacuous
    assert without_reference(small_generator) is small_generator


def test_contextual_attention_borrows_from_a_valid_source_only():
    attention = ContextualAttention(scale=50.0)
    x = torch.zeros(1, 2, 16, 16)
    keys = torch.rand(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 6:10, 6:10] = 1.0
    x[..., mask[0, 0] < 0.5] = -1.0  # the visible face's features
    source_x = torch.full((1, 2, 16, 16), 5.0)
    source_keys = keys.clone()  # the reference's patches match as well as the face's own
    filled = attention(x, keys, mask, (source_x, source_keys, torch.zeros_like(mask)))
    assert filled[..., 6:10, 6:10].mean() > 1.0  # mostly the reference's content
    ignored = attention(x, keys, mask, (source_x, source_keys, torch.ones_like(mask)))
    torch.testing.assert_close(ignored, attention(x, keys, mask))


def test_discriminator_scores_patches():
    disc = build_discriminator()
    image, mask = _inputs()
    scores = disc(image, mask)
    assert scores.shape == (2, 1, SIZE // 16, SIZE // 16) and torch.isfinite(scores).all()


def test_feature_matching_pulls_the_completed_face_towards_the_real_ones_features():
    from training.train.generator_losses import feature_matching_loss

    torch.manual_seed(2)
    disc = build_discriminator().eval()  # spectral norm's power iteration only runs in training
    image, mask = _inputs()
    scores, acts = disc.features(image, mask)
    torch.testing.assert_close(scores, disc(image, mask))
    assert len(acts) == 4 and acts[-1].shape[-1] == SIZE // 16
    assert float(feature_matching_loss(acts, acts)) == 0.0
    fake = torch.full_like(image, 0.5).requires_grad_(True)
    loss = feature_matching_loss(disc.features(fake, mask)[1], acts)
    loss.backward()
    assert loss > 0 and fake.grad.abs().sum() > 0  # the gradient reaches the generator's output


def test_parsing_net_logits_shape():
    net = build_parsing_net().eval()
    with torch.no_grad():
        logits = net(torch.rand(2, 3, SIZE, SIZE))
    assert logits.shape == (2, len(PARSING_CLASSES), SIZE, SIZE) and logits.dtype == torch.float32


def _frontal_landmarks(size: int) -> np.ndarray:
    """A crude frontal 68-point face centred in a size x size crop."""
    s = size / 128.0
    lm = np.zeros((68, 2))
    t = np.linspace(np.pi, 2 * np.pi, 17)
    lm[0:17] = np.stack([64 - 40 * np.cos(t), 60 - 50 * np.sin(t)], 1)  # jaw, ear to ear via chin
    lm[17:22] = np.stack([np.linspace(34, 58, 5), np.full(5, 40.0)], 1)
    lm[22:27] = np.stack([np.linspace(70, 94, 5), np.full(5, 40.0)], 1)
    lm[27:31] = np.stack([np.full(4, 64.0), np.linspace(48, 70, 4)], 1)
    lm[31:36] = np.stack([np.linspace(56, 72, 5), np.full(5, 74.0)], 1)
    for base, cx in ((36, 46.0), (42, 82.0)):
        a = np.linspace(0, 2 * np.pi, 7)[:6]
        lm[base:base + 6] = np.stack([cx - 8 * np.cos(a), 50 - 3 * np.sin(a)], 1)
    a = np.linspace(0, 2 * np.pi, 13)[:12]
    lm[48:60] = np.stack([64 - 16 * np.cos(a), 90 - 7 * np.sin(a)], 1)
    a = np.linspace(0, 2 * np.pi, 9)[:8]
    lm[60:68] = np.stack([64 - 10 * np.cos(a), 90 - 2 * np.sin(a)], 1)
    return lm * s


def test_parsing_labels_put_parts_where_the_landmarks_are():
    labels = parsing_labels(_frontal_landmarks(128), 128)
    cls = {n: i for i, n in enumerate(PARSING_CLASSES)}
    assert labels.shape == (128, 128) and labels.dtype == np.uint8
    assert labels[2, 2] == cls["background"]
    assert labels[50, 46] == cls["eye_left"] and labels[50, 82] == cls["eye_right"]
    assert labels[65, 64] == cls["nose"]
    assert labels[90, 64] == cls["inner_mouth"]
    assert labels[100, 40] == cls["skin"]
    assert set(np.unique(labels)) == set(range(len(PARSING_CLASSES)))


def test_metrics_identity_and_ordering():
    a = torch.rand(2, 3, 32, 32)
    noisy = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
    very_noisy = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
    assert (psnr(a, noisy) > psnr(a, very_noisy)).all()
    assert (ssim(a, noisy) > ssim(a, very_noisy)).all()
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    b = a.clone()
    b[..., :4, :4] = 1 - b[..., :4, :4]  # error outside the mask only
    assert (psnr(b, a, mask) > 90).all()


class _PaintSynthesizer:
    """Stands in for MaskSynthesizer: a grey block over the lower face."""

    def apply(self, face, landmarks, *, rng, pulled_down):
        from training.data.synth import SynthResult, face_box_from_landmarks

        box = face_box_from_landmarks(landmarks, face.shape)
        mask = np.zeros(face.shape[:2], bool)
        y = int((box[1] + box[3]) / 2)
        mask[y:int(box[3]), int(box[0]):int(box[2])] = True
        image = face.copy()
        image[mask] = 128
        return SynthResult(image=image, mask=mask, face_box=box, template="grey")


def test_reference_samples_are_own_other_or_none(tmp_path):
    import cv2

    from training.data.generator_data import FaceRecord, MaskedFaceDataset, ReferenceSampling

    records = []
    for i in range(3):
        face = np.full((96, 96, 3), 40 + 80 * i, np.uint8)  # each person a different grey
        cv2.imwrite(str(tmp_path / f"{i}.png"), face)
        records.append(FaceRecord(tmp_path / f"{i}.png", _frontal_landmarks(96).astype(np.float32)))
    config = GeneratorConfig(size=32, width=4, reference=True)
    sampling = ReferenceSampling(own=0.5, other=0.25, shift=0.0, scale=0.0, turn=0.0)
    data = MaskedFaceDataset(records, synthesizer=_PaintSynthesizer(), config=config, train=False, references=sampling)
    own, other, none = data[0], data[1], data[2]
    for item in (own, other, none):
        assert item["reference"].shape == (3, 32, 32) and item["reference_mask"].shape == (1, 32, 32)
    assert own["reference_mask"].min() == 1 and other["reference_mask"].min() == 1
    assert none["reference_mask"].max() == 0 and none["reference"].abs().max() == 0
    # Own: the same grey face (re-coloured by at most the photo jitter); other: a different face.
    assert abs(own["reference"].mean() - own["target"].mean()) < 0.12
    assert abs(other["reference"].mean() - other["target"].mean()) > 0.2
    with pytest.raises(ValueError):
        ReferenceSampling(own=0.8, other=0.4)


def test_pair_samples_mask_one_photo_of_a_person_and_show_another(tmp_path):
    import cv2

    from training.data.generator_data import FaceRecord, MaskedFaceDataset, ReferenceSampling

    def photo(name, grey):
        cv2.imwrite(str(tmp_path / name), np.full((96, 96, 3), grey, np.uint8))
        return FaceRecord(tmp_path / name, _frontal_landmarks(96).astype(np.float32))

    utk = [photo("u.png", 20)]
    person = (photo("a.png", 100), photo("b.png", 200))  # one person, two photos of different light
    config = GeneratorConfig(size=32, width=4, reference=True)
    sampling = ReferenceSampling(own=0.0, other=0.0, pair=1.0)
    data = MaskedFaceDataset(utk, synthesizer=_PaintSynthesizer(), config=config, train=True, references=sampling,
                             pairs=[person])
    seen = set()
    for _ in range(12):
        item = data[0]
        target, reference = round(float(item["target"].mean()) * 255), round(float(item["reference"].mean()) * 255)
        # The masked face is the person's, never the UTK record's, and the reference is their other photo.
        assert {target, reference} == {100, 200}
        seen.add(target)
    assert seen == {100, 200}
    with pytest.raises(ValueError):
        MaskedFaceDataset(utk, synthesizer=_PaintSynthesizer(), config=config, train=True, references=sampling)
    with pytest.raises(ValueError):
        MaskedFaceDataset(utk, synthesizer=_PaintSynthesizer(), config=config, train=True, references=sampling,
                          pairs=[person[:1]])


def test_training_crops_are_the_pipelines_crops(tmp_path):
    """One crop geometry: the generator's training sample is what FaceInpainter.prepare cuts."""
    import cv2

    from engines.models.generator import GeneratorConfig
    from stream.geometry import CropWindow
    from stream.inpaint import FaceInpainter
    from stream.records import Track
    from training.data.generator_data import FaceRecord, MaskedFaceDataset
    from training.data.synth import face_box_from_landmarks

    rng = np.random.default_rng(0)
    face = cv2.GaussianBlur(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8), (0, 0), 1.5)
    cv2.imwrite(str(tmp_path / "f.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    landmarks = _frontal_landmarks(96).astype(np.float32)
    config = GeneratorConfig(size=32, width=4, mask_dilation=1)
    sample = MaskedFaceDataset([FaceRecord(tmp_path / "f.png", landmarks)], synthesizer=_PaintSynthesizer(),
                               config=config, train=False).sample(0, np.random.default_rng(0))
    synth = _PaintSynthesizer().apply(face, landmarks, rng=None, pulled_down=False)
    track = Track(1, synth.face_box, 0.9, synth.mask)
    no_engine = mock.Mock(device=torch.device("cpu"))  # prepare() only cuts; nothing is run
    _, crop, hole = FaceInpainter(no_engine, config).prepare(face, track)
    np.testing.assert_array_equal(sample["target"], crop)
    np.testing.assert_array_equal(sample["mask"], hole > 0.5)
    # Points go into the crop by the inverse of the map the crop is cut with.
    window = CropWindow.for_face(face_box_from_landmarks(landmarks, face.shape), 1.2)
    dot = np.zeros((96, 96), np.float32)
    dot[40, 50] = 1.0
    blurred = window.cut(cv2.GaussianBlur(dot, (0, 0), 3.0), 32)
    y, x = np.unravel_index(np.argmax(blurred), blurred.shape)
    cx, cy = window.to_crop(32) @ np.array([50.0, 40.0, 1.0])
    assert abs(x - cx) <= 0.5 and abs(y - cy) <= 0.5


def test_parsing_samples_can_wear_a_mask_and_keep_their_labels(tmp_path):
    import cv2

    from training.data.generator_data import FaceRecord, ParsingDataset

    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "face.png"), rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    records = [FaceRecord(tmp_path / "face.png", _frontal_landmarks(128).astype(np.float32))]
    config = GeneratorConfig(size=64, width=4)
    plain = ParsingDataset(records, config=config, train=False)
    masked = ParsingDataset(records, config=config, train=False, synthesizer=_PaintSynthesizer(), masked=1.0)
    (image, labels), (masked_image, masked_labels) = plain[0], masked[0]
    assert torch.equal(labels, masked_labels)  # the parts under the mask are still labelled
    changed = (image - masked_image).abs().sum(0) > 0
    assert changed[40:].float().mean() > 0.3 and not changed[:20].any()  # the lower face only
    assert torch.equal(masked[0][0], masked_image)  # the same mask every epoch when held out
    with pytest.raises(ValueError, match="needs a synthesizer"):
        ParsingDataset(records, config=config, train=False, masked=0.5)
