"""Engine interface, ONNX export, backend parity against PyTorch, artefact metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines.artifacts import check_sidecar
from engines.export import TENSORRT_ONNX_OPS, example_inputs, export_onnx, graph_ops
from engines.registry import load_model, resolve_backend
from engines.runtime import BackendUnavailableError, EngineError, EngineMismatchError, TensorSpec


@pytest.fixture(scope="module")
def tiny_weights(tiny_weights, tmp_path_factory) -> tuple[Path, Path]:
    """conftest's, but the detector's proposal and class scores spread apart. Untrained, every box
    scores 0.334 to within 1e-5, so which proposals and boxes survive the cuts turns on float rounding:
    with torch on one thread (as after any test that ran run_stream.main) ORT and torch kept
    different boxes."""
    from engines.models.detector import load_detector, save_detector

    model, config = load_detector(tiny_weights[0])
    with torch.no_grad():
        for layer in (model.rpn.head.cls_logits, model.roi_heads.box_predictor.cls_score):
            layer.weight.mul_(50.0)
    path = tmp_path_factory.mktemp("spread") / "detector.pt"
    save_detector(model, config, path, meta={"untrained": True})
    return path, tiny_weights[1]


@pytest.fixture(scope="module")
def exported(tiny_weights, tmp_path_factory) -> Path:
    artifacts = tmp_path_factory.mktemp("artifacts")
    det, gen = tiny_weights
    export_onnx("detector", weights=det, artifacts=artifacts)
    export_onnx("generator", weights=gen, artifacts=artifacts)
    return artifacts


def _weights(tiny_weights, name: str) -> Path:
    return dict(zip(("detector", "generator"), tiny_weights))[name]


@pytest.mark.parametrize("name", ["detector", "generator"])
def test_onnxruntime_matches_torch(name, tiny_weights, exported):
    w = _weights(tiny_weights, name)
    ref = load_model(name, backend="torch", device="cpu", weights=w)
    ort = load_model(name, backend="onnxruntime", device="cpu", weights=w, artifacts=exported)
    assert [s.name for s in ort.engine.inputs] == [s.name for s in ref.engine.inputs]
    assert sorted(s.name for s in ort.engine.outputs) == sorted(s.name for s in ref.engine.outputs)
    batch = 1 if name == "detector" else 3  # the generator takes any number of face crops
    feeds = dict(zip((s.name for s in ref.engine.inputs), example_inputs(ref.engine.inputs, batch=batch)))
    want, got = ref.engine.run(feeds), ort.engine.run(feeds)
    for spec in ref.engine.outputs:
        assert got[spec.name].shape == want[spec.name].shape, spec.name
        assert got[spec.name].dtype == want[spec.name].dtype, spec.name
        torch.testing.assert_close(got[spec.name], want[spec.name], atol=2e-3, rtol=1e-3)
    if name == "detector":
        assert len(want["boxes"]) > 0, "parity on an empty result proves nothing"


@pytest.mark.parametrize("name", ["detector", "generator"])
def test_exported_graph_fits_tensorrt_parser(name, exported):
    model = onnx.load(str(exported / f"{name}.onnx"))
    onnx.checker.check_model(model)
    ops = graph_ops(model)
    assert ops <= TENSORRT_ONNX_OPS, sorted(ops - TENSORRT_ONNX_OPS)
    if name == "generator":
        # Contextual attention lives in the graph as a softmax over patch similarities.
        assert "Softmax" in ops
    else:
        assert {"NonMaxSuppression", "RoiAlign"} <= ops


def test_sidecar_refuses_other_weights(tiny_weights, exported, tmp_path):
    det, gen = tiny_weights
    meta = check_sidecar(exported / "detector.onnx", model="detector", weights=det)
    assert meta["weights_sha256"] and meta["onnx_sha256"] and meta["inputs"][0]["name"] == "image"
    with pytest.raises(EngineMismatchError, match="other weights"):
        check_sidecar(exported / "detector.onnx", model="detector", weights=gen)
    with pytest.raises(EngineMismatchError, match="built for model"):
        check_sidecar(exported / "detector.onnx", model="generator", weights=det)
    lonely = tmp_path / "detector.onnx"
    shutil.copy(exported / "detector.onnx", lonely)
    with pytest.raises(EngineMismatchError, match="sidecar"):
        load_model("detector", backend="onnxruntime", device="cpu", weights=det, artifacts=tmp_path)


def test_auto_backend_prefers_fresh_onnx_on_cpu(tiny_weights, exported, tmp_path):
    det, gen = tiny_weights
    cpu = torch.device("cpu")
    assert resolve_backend("detector", "auto", cpu, weights=det, artifacts=exported) == "onnxruntime"
    assert resolve_backend("detector", "auto", cpu, weights=det, artifacts=tmp_path) == "torch"
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(exported / "detector.onnx", stale / "detector.onnx")
    sidecar = json.loads((exported / "detector.onnx.json").read_text())
    sidecar["weights_sha256"] = "0" * 64
    (stale / "detector.onnx.json").write_text(json.dumps(sidecar))
    assert resolve_backend("detector", "auto", cpu, weights=det, artifacts=stale) == "torch"


def test_engine_checks_names_shapes_dtypes(tiny_weights):
    engine = load_model("generator", backend="torch", device="cpu", weights=tiny_weights[1]).engine
    image, mask = example_inputs(engine.inputs)
    with pytest.raises(EngineError, match="do not match"):
        engine.run({"image": image})
    with pytest.raises(EngineError, match="shape"):
        engine.run({"image": image[:, :, :8], "mask": mask})
    with pytest.raises(EngineError, match="dtype"):
        engine.run({"image": image.double(), "mask": mask})
    out = engine.run({"image": image, "mask": mask})
    assert set(out) == {"output"} and out["output"].shape == image.shape


def test_tensor_spec_allows_dynamic_dims():
    spec = TensorSpec("x", ("N", 3), "float32")
    spec.check(torch.zeros(5, 3))
    with pytest.raises(EngineError):
        spec.check(torch.zeros(5, 4))


def test_tensorrt_backend_refuses_clearly_without_tensorrt(tiny_weights, tmp_path):
    from engines.backends.tensorrt_backend import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here; covered by the GPU checks")
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        load_model("detector", backend="tensorrt", device="cpu", weights=tiny_weights[0], artifacts=tmp_path)


def test_tensorrt_machine_check_refuses_other_gpu(monkeypatch, tmp_path):
    from engines.backends import tensorrt_backend

    here = {"tensorrt_version": "10.3.0", "cuda_version": "12.6", "gpu": "NVIDIA H100"}
    monkeypatch.setattr(tensorrt_backend, "machine_fingerprint", lambda device: here)
    tensorrt_backend.check_machine(dict(here), torch.device("cpu"), tmp_path / "x.plan")
    with pytest.raises(EngineMismatchError, match="rebuild"):
        tensorrt_backend.check_machine({**here, "gpu": "NVIDIA A10"}, torch.device("cpu"), tmp_path / "x.plan")



def test_build_engines_without_tensorrt_builds_what_the_pipeline_uses(tmp_path, capsys):
    import build_engines
    from engines.backends.tensorrt_backend import tensorrt_available

    if tensorrt_available() and torch.cuda.is_available():
        pytest.skip("TensorRT is available here; this checks the fallback")
    import cv2

    from stream.calibration import SAMPLE_CLIP, video_frames

    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i, frame in enumerate(video_frames(SAMPLE_CLIP, every=1, limit=2)):
        cv2.imwrite(str(calibration / f"{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    artifacts = tmp_path / "artifacts"
    assert build_engines.main(["--artifacts", str(artifacts), "--tensorrt", "--int8",
                               "--calibration", str(calibration)]) == 0
    captured = capsys.readouterr()
    assert "skipping TensorRT engines" in captured.err
    assert "ops fit TensorRT" in captured.out
    for name in ("detector", "generator"):
        assert (artifacts / f"{name}.onnx").exists() and (artifacts / f"{name}.onnx.json").exists()
        model = load_model(name, backend="auto", device="cpu", artifacts=artifacts)
        assert model.engine.backend == "onnxruntime"
        assert f"{name}.int8.onnx (int8, 2 calibration inputs" in captured.out
        assert load_model(name, device="cpu", artifacts=artifacts, precision="int8").precision == "int8"


@pytest.mark.parametrize("name", ["detector", "generator"])
def test_int8_variant_is_close_to_torch_and_says_so(name, tiny_weights, exported):
    from engines.quantize import int8_error, quantize_int8

    w = _weights(tiny_weights, name)
    ref = load_model(name, backend="torch", device="cpu", weights=w)
    feeds = [{s.name: t.numpy() for s, t in zip(ref.engine.inputs, example_inputs(ref.engine.inputs))}
             for _ in range(4)]
    path = quantize_int8(name, feeds, artifacts=exported, source="test inputs")
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert path.name == f"{name}.int8.onnx" and meta["precision"] == "int8"
    assert meta["calibration"] == {"samples": 4, "source": "test inputs"}
    check_sidecar(path, model=name, weights=w)  # same weights as the fp32 export
    model = load_model(name, backend="auto", device="cpu", weights=w, artifacts=exported, precision="int8")
    assert model.engine.backend == "onnxruntime" and model.precision == "int8"
    assert sorted(s.name for s in model.engine.outputs) == sorted(s.name for s in ref.engine.outputs)
    output, error = int8_error(name, feeds[:1], artifacts=exported, weights=w)
    assert output == ref.engine.outputs[0].name
    if name == "generator":
        assert error < 0.02  # mean |int8 - fp32| on a 0..1 image


def test_int8_is_refused_on_backends_that_have_no_such_variant(tiny_weights, exported):
    with pytest.raises(EngineError, match="ONNX Runtime variant"):
        load_model("generator", backend="torch", device="cpu", weights=tiny_weights[1], precision="int8")


def test_calibration_inputs_are_what_the_pipeline_feeds():
    from stream.calibration import SAMPLE_CLIP, calibration_feeds, video_frames

    frames = video_frames(SAMPLE_CLIP, every=3, limit=4)
    assert len(frames) == 4 and frames[0].shape == (404, 720, 3) and frames[0].dtype == np.uint8
    frame = frames[0]
    (det,) = calibration_feeds("detector", [frame])
    assert det["image"].shape == (1, 3, 320, 320) and det["image"].dtype == "float32"
    (gen,) = calibration_feeds("generator", [frame])  # one masked face in the sample
    assert gen["image"].shape == (1, 3, 128, 128) and gen["mask"].shape == (1, 1, 128, 128)
    assert 0.05 < gen["mask"].mean() < 0.6 and 0 <= gen["image"].min() and gen["image"].max() <= 1


def test_an_int8_variant_is_built_once_on_first_use_from_the_bundled_clip(tmp_path, monkeypatch):
    from engines.models.generator import GeneratorConfig, build_generator, save_generator
    from stream import calibration

    monkeypatch.setenv("UNMASK_STREAM_CACHE", str(tmp_path / "cache"))
    config = GeneratorConfig(size=128, width=8, output_blur=1.0, reference=True)
    torch.manual_seed(4)
    weights = tmp_path / "generator_ref.pt"
    save_generator(build_generator(config=config), config, weights)
    built = []
    quantize = calibration.quantize_int8
    monkeypatch.setattr(calibration, "quantize_int8", lambda *a, **k: built.append(a[0]) or quantize(*a, **k))
    artifacts = calibration.cached_int8("generator_noref", weights)
    assert artifacts is not None and built == ["generator_noref"]
    model = load_model("generator_noref", backend="onnxruntime", device="cpu", weights=weights, artifacts=artifacts,
                       precision="int8")
    assert model.precision == "int8" and [s.name for s in model.engine.inputs] == ["image", "mask"]
    assert calibration.cached_int8("generator_noref", weights) == artifacts and built == ["generator_noref"]


def test_no_int8_variant_when_its_calibration_fails_and_fp32_runs_on(tmp_path, monkeypatch, tiny_weights):
    from stream import calibration

    monkeypatch.setenv("UNMASK_STREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "SAMPLE_CLIP", tmp_path / "missing.mp4")
    assert calibration.cached_int8("generator", tiny_weights[1]) is None


def test_reference_generator_exports_with_its_named_inputs(tmp_path):
    from engines.models.generator import GeneratorConfig, build_generator, save_generator

    config = GeneratorConfig(size=64, width=8, output_blur=1.0, reference=True)
    torch.manual_seed(3)
    weights = tmp_path / "generator_ref.pt"
    save_generator(build_generator(config=config), config, weights)
    export_onnx("generator", weights=weights, artifacts=tmp_path)
    ref = load_model("generator", backend="torch", device="cpu", weights=weights)
    ort = load_model("generator", backend="onnxruntime", device="cpu", weights=weights, artifacts=tmp_path)
    names = ["image", "mask", "reference", "reference_mask"]
    assert [s.name for s in ort.engine.inputs] == names == [s.name for s in ref.engine.inputs]
    feeds = dict(zip(names, example_inputs(ref.engine.inputs, batch=2)))
    feeds["reference_mask"] = (feeds["reference_mask"] > 0.5).float()
    torch.testing.assert_close(ort.engine.run(feeds)["output"], ref.engine.run(feeds)["output"], atol=2e-3, rtol=1e-3)

    # Its form for faces without a reference: exported on its own, image and mask in, and the
    # reference form's result for an all-zero reference_mask out.
    export_onnx("generator_noref", weights=weights, artifacts=tmp_path)
    plain = load_model("generator_noref", backend="auto", device="cpu", weights=weights, artifacts=tmp_path)
    assert plain.engine.backend == "onnxruntime"
    assert [s.name for s in plain.engine.inputs] == ["image", "mask"]
    none = dict(feeds, reference_mask=torch.zeros_like(feeds["reference_mask"]))
    torch.testing.assert_close(plain.engine.run({"image": feeds["image"], "mask": feeds["mask"]})["output"],
                               ref.engine.run(none)["output"], atol=2e-3, rtol=1e-3)


def _as_if_trained(model: torch.nn.Module) -> None:
    """BatchNorm statistics that are not the identity, as after training, so an export's
    folding of them is tested."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("name", ["verifier", "face_verifier"])
def test_verifier_exports_with_parity(tmp_path, name):
    from engines.models.verifier import VerifierConfig, build_verifier, save_verifier

    config = VerifierConfig(size=32, width=8, threshold=0.3)
    torch.manual_seed(4)
    model = build_verifier(config=config)
    _as_if_trained(model)
    weights = tmp_path / "verifier.pt"
    save_verifier(model, config, weights)
    export_onnx(name, weights=weights, artifacts=tmp_path)
    ref = load_model(name, backend="torch", device="cpu", weights=weights)
    ort = load_model(name, backend="onnxruntime", device="cpu", weights=weights, artifacts=tmp_path)
    assert ref.config.threshold == 0.3
    feeds = {"image": torch.rand(3, 3, 32, 32)}
    want, got = ref.engine.run(feeds)["logit"], ort.engine.run(feeds)["logit"]
    assert want.shape == got.shape == (3,)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_first_use_exports_to_the_user_cache_once_and_falls_back_to_torch(tiny_weights, tmp_path, monkeypatch, caplog):
    import logging

    from engines.artifacts import user_cache_dir

    monkeypatch.setenv("UNMASK_STREAM_CACHE", str(tmp_path / "cache"))
    det, _ = tiny_weights
    empty = tmp_path / "no_artifacts"
    assert load_model("detector", device="cpu", weights=det, artifacts=empty).engine.backend == "torch"
    with caplog.at_level(logging.INFO, logger="engines.registry"):
        first = load_model("detector", device="cpu", weights=det, artifacts=empty, export_on_first_use=True)
    assert first.engine.backend == "onnxruntime"
    assert any("exporting to ONNX" in r.getMessage() for r in caplog.records)
    exported = list((tmp_path / "cache" / "onnx").glob("*/detector.onnx"))
    assert len(exported) == 1 and not list(exported[0].parent.glob(".*partial*"))
    stamp = exported[0].stat().st_mtime_ns
    again = load_model("detector", device="cpu", weights=det, artifacts=empty, export_on_first_use=True)
    assert again.engine.backend == "onnxruntime" and exported[0].stat().st_mtime_ns == stamp

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    # A check that fails after the export leaves nothing where a reader looks.
    monkeypatch.setenv("UNMASK_STREAM_CACHE", str(tmp_path / "checked_cache"))
    monkeypatch.setattr("onnx.checker.check_model", broken)
    assert load_model("detector", device="cpu", weights=det, artifacts=empty, export_on_first_use=True
                      ).engine.backend == "torch"
    assert [p.name for p in (tmp_path / "checked_cache").rglob("*") if p.is_file()] == []
    monkeypatch.undo()

    monkeypatch.setenv("UNMASK_STREAM_CACHE", str(tmp_path / "other_cache"))
    monkeypatch.setattr("engines.export.export_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="engines.registry"):
        fallback = load_model("detector", device="cpu", weights=det, artifacts=empty, export_on_first_use=True)
    assert fallback.engine.backend == "torch"
    assert any("exporter crashed" in r.getMessage() for r in caplog.records)
    assert user_cache_dir() == tmp_path / "other_cache"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (scripts/gpu_check.sh runs this)")
def test_cuda_graphs_replay_what_the_eager_generator_gives(tiny_weights):
    gen = _weights(tiny_weights, "generator")
    eager = load_model("generator", backend="torch", device="cuda", weights=gen)
    graphed = load_model("generator", backend="torch", device="cuda", weights=gen, cuda_graphs=True)
    for batch in (1, 2, 1):  # a new shape is captured; a known one replays its graph
        for seed in (0, 1):
            feeds = dict(zip([s.name for s in eager.engine.inputs], example_inputs(eager.engine.inputs, batch=batch)))
            feeds["image"] = torch.rand(feeds["image"].shape, generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(graphed.engine.run(feeds)["output"], eager.engine.run(feeds)["output"],
                                       atol=1e-3, rtol=1e-3)
    assert len(graphed.engine._graphs) == 2 and all(g is not None for g in graphed.engine._graphs.values())


def test_cuda_graphs_are_a_no_op_off_the_gpu(tiny_weights):
    gen = _weights(tiny_weights, "generator")
    graphed = load_model("generator", backend="torch", device="cpu", weights=gen, cuda_graphs=True)
    eager = load_model("generator", backend="torch", device="cpu", weights=gen)
    feeds = dict(zip([s.name for s in eager.engine.inputs], example_inputs(eager.engine.inputs, batch=2)))
    assert not graphed.engine.cuda_graphs
    torch.testing.assert_close(graphed.engine.run(feeds)["output"], eager.engine.run(feeds)["output"])


@pytest.mark.parametrize("name", ["parsing", "parsing_masked"])
def test_parsing_net_exports_with_parity(tmp_path, name):
    from engines.models.parsing import ParsingConfig, build_parsing_net, save_parsing_net

    config = ParsingConfig(width=8, input_size=64)
    torch.manual_seed(5)
    model = build_parsing_net(config=config)
    _as_if_trained(model)
    weights = tmp_path / "parsing.pt"
    save_parsing_net(model, config, weights)
    export_onnx(name, weights=weights, artifacts=tmp_path)
    ref = load_model(name, backend="torch", device="cpu", weights=weights)
    ort = load_model(name, backend="onnxruntime", device="cpu", weights=weights, artifacts=tmp_path)
    feeds = {"image": torch.rand(2, 3, 64, 64)}
    want, got = ref.engine.run(feeds)["logits"], ort.engine.run(feeds)["logits"]
    assert want.shape == got.shape == (2, 10, 64, 64)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
