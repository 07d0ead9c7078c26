"""The shipped models by name, and loading them on any backend behind the engine interface."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.artifacts import (
    ARTIFACTS_DIR,
    check_sidecar,
    engine_path,
    file_sha256,
    onnx_path,
    user_cache_dir,
)
from engines.runtime import (
    BACKENDS,
    BackendUnavailableError,
    Engine,
    EngineError,
    EngineMismatchError,
    TensorSpec,
    WeightsError,
)

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class WeightsNotFoundError(WeightsError):
    """The shipped weights file is missing."""


@dataclass(frozen=True)
class ModelSpec:
    """How to turn a weights file into a runnable module and describe its tensors.

    load: weights path -> (module whose forward takes the inputs in order and returns the
        outputs in order, model config).
    specs: model config -> (input specs, output specs).
    exporter: which torch ONNX exporter handles the graph ("legacy" for torchvision's
        detection ops, "dynamo" for unfold/fold).
    """

    name: str
    filename: str
    load: Callable[[Path], tuple[nn.Module, Any]]
    specs: Callable[[Any], tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]
    exporter: str

    @property
    def weights(self) -> Path:
        return WEIGHTS_DIR / self.filename


def _load_detector(path: Path) -> tuple[nn.Module, Any]:
    from engines.models.detector import DetectorExport, load_detector

    model, config = load_detector(path)
    return DetectorExport(model).eval(), config


def _detector_specs(config: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    h, w = config.input_size
    return (
        (TensorSpec("image", (1, 3, h, w), "float32"),),
        (
            TensorSpec("boxes", ("N", 4), "float32"),
            TensorSpec("labels", ("N",), "int64"),
            TensorSpec("scores", ("N",), "float32"),
            TensorSpec("masks", ("N", 1, h, w), "float32"),
        ),
    )


def _load_generator(path: Path) -> tuple[nn.Module, Any]:
    from engines.models.generator import load_generator

    model, config = load_generator(path)
    return model.eval(), config


def _load_generator_without_reference(path: Path) -> tuple[nn.Module, Any]:
    from engines.models.generator import load_generator, without_reference

    model = without_reference(load_generator(path)[0])
    return model, model.config


def _generator_specs(config: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    s = config.size
    inputs = (TensorSpec("image", ("N", 3, s, s), "float32"), TensorSpec("mask", ("N", 1, s, s), "float32"))
    if config.reference:
        inputs += (TensorSpec("reference", ("N", 3, s, s), "float32"), TensorSpec("reference_mask", ("N", 1, s, s), "float32"))
    return inputs, (TensorSpec("output", ("N", 3, s, s), "float32"),)


def _load_verifier(path: Path) -> tuple[nn.Module, Any]:
    from engines.models.verifier import load_verifier

    return load_verifier(path)


def _verifier_specs(config: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    s = config.size
    return (TensorSpec("image", ("N", 3, s, s), "float32"),), (TensorSpec("logit", ("N",), "float32"),)


def _load_parsing(path: Path) -> tuple[nn.Module, Any]:
    from engines.models.parsing import load_parsing_net

    model, config = load_parsing_net(path)
    return model.eval(), config


def _parsing_specs(config: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    s = config.input_size
    return ((TensorSpec("image", ("N", 3, s, s), "float32"),),
            (TensorSpec("logits", ("N", config.num_classes, s, s), "float32"),))


MODELS: dict[str, ModelSpec] = {
    "detector": ModelSpec("detector", "detector_mobilenet_v3.pt", _load_detector, _detector_specs, "legacy"),
    "generator": ModelSpec("generator", "generator_128.pt", _load_generator, _generator_specs, "dynamo"),
    # The generator's form for faces without a reference (image and mask only): the pipeline runs it
    # for every batch in which no face has one, which spares a reference-conditioned generator's
    # reference pass (engines.models.generator.without_reference).
    "generator_noref": ModelSpec("generator_noref", "generator_128.pt", _load_generator_without_reference,
                                 _generator_specs, "dynamo"),
    "verifier": ModelSpec("verifier", "mask_verifier.pt", _load_verifier, _verifier_specs, "dynamo"),
    # The same architecture asked whether a detected masked face is a face at all (not a hand, an
    # arm or shiny clothes).
    "face_verifier": ModelSpec("face_verifier", "face_verifier.pt", _load_verifier, _verifier_specs, "dynamo"),
    # Where an exemplar's eyes, nose and mouth are, and those of the face it lends detail to.
    "parsing": ModelSpec("parsing", "face_parsing.pt", _load_parsing, _parsing_specs, "dynamo"),
    # The same net fine-tuned on faces wearing drawn masks: where the eyes are above a worn mask (EyeGuard).
    "parsing_masked": ModelSpec("parsing_masked", "face_parsing_masked.pt", _load_parsing, _parsing_specs, "dynamo"),
}


def weights_path(name: str, weights: Path | None = None) -> Path:
    spec = MODELS[name]
    path = weights or spec.weights
    if not path.exists():
        raise WeightsNotFoundError(f"{name}: weights {path} not found")
    return path


@dataclass(frozen=True)
class LoadedModel:
    name: str
    engine: Engine
    config: Any
    weights: Path
    precision: str = "fp32"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("--device cuda: no CUDA device is available")
    return torch.device(device)


def artifact_ready(path: Path, *, model: str, weights: Path) -> bool:
    try:
        check_sidecar(path, model=model, weights=weights)
    except EngineMismatchError as exc:
        if path.exists():
            logger.warning("%s", exc)
        return False
    return path.exists()


def resolve_backend(name: str, backend: str, device: torch.device, *, weights: Path,
                    artifacts: Path = ARTIFACTS_DIR, precision: str = "fp32") -> str:
    """``auto``: TensorRT on CUDA when an engine is built, ONNX Runtime on CPU when its export is
    built (faster than eager torch there), torch otherwise. ``precision="int8"`` exists only as
    an ONNX Runtime variant, so it always resolves to ONNX Runtime."""
    if precision != "fp32":
        if backend not in ("auto", "onnxruntime"):
            raise EngineError(f"{precision} is an ONNX Runtime variant; use --backend onnxruntime or auto")
        return "onnxruntime"
    if backend != "auto":
        if backend not in BACKENDS:
            raise EngineError(f"unknown backend {backend!r}")
        return backend
    if device.type == "cuda":
        from engines.backends.tensorrt_backend import tensorrt_available

        if tensorrt_available() and artifact_ready(engine_path(name, artifacts), model=name, weights=weights):
            return "tensorrt"
        return "torch"
    if artifact_ready(onnx_path(name, artifacts), model=name, weights=weights):
        return "onnxruntime"
    return "torch"


def cached_export(name: str, weights: Path) -> Path | None:
    """The artifacts folder holding an ONNX export of ``weights`` in the user cache, exporting it
    there on first use (one folder per weights hash, so a changed file never meets a stale
    export); None when the export fails, and the caller stays on torch."""
    artifacts = user_cache_dir() / "onnx" / file_sha256(weights)[:16]
    if artifact_ready(onnx_path(name, artifacts), model=name, weights=weights):
        return artifacts
    logger.info("%s: exporting to ONNX for the faster ONNX Runtime backend, once (cached in %s)", name, artifacts)
    try:
        from engines.export import export_onnx

        export_onnx(name, weights=weights, artifacts=artifacts)
    except Exception as exc:  # noqa: BLE001 - whatever the exporter raises, torch still runs the model
        logger.warning("%s: ONNX export failed (%s: %s); running on torch", name, type(exc).__name__, exc)
        return None
    return artifacts


def load_model(
    name: str,
    *,
    backend: str = "auto",
    device: str = "auto",
    weights: Path | None = None,
    artifacts: Path = ARTIFACTS_DIR,
    threads: int | None = None,
    precision: str = "fp32",
    export_on_first_use: bool = False,
    cuda_graphs: bool = False,
) -> LoadedModel:
    """Load a shipped model by name on a backend; ``auto`` picks and logs the fastest available.

    ``precision="int8"`` loads the quantised ONNX Runtime variant (``build_engines.py --int8``).
    ``export_on_first_use``: with ``auto`` on CPU and no export in ``artifacts``, export to the
    user cache (``cached_export``) and run on ONNX Runtime rather than eager torch.
    ``cuda_graphs``: the torch backend on CUDA replays captured graphs (fixed-shape models only)."""
    if name not in MODELS:
        raise EngineError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    spec = MODELS[name]
    path = weights_path(name, weights)
    dev = resolve_device(device)
    chosen = resolve_backend(name, backend, dev, weights=path, artifacts=artifacts, precision=precision)
    if chosen == "torch" and backend == "auto" and dev.type == "cpu" and export_on_first_use:
        cached = cached_export(name, path)
        if cached is not None:
            artifacts, chosen = cached, "onnxruntime"
    module, config = spec.load(path)
    inputs, outputs = spec.specs(config)
    if chosen == "torch":
        from engines.backends.torch_backend import TorchEngine

        engine: Engine = TorchEngine(module, inputs=inputs, outputs=outputs, device=dev, half=dev.type == "cuda",
                                     cuda_graphs=cuda_graphs)
    elif chosen == "onnxruntime":
        from engines.backends.onnxruntime_backend import OnnxRuntimeEngine

        artifact = onnx_path(name, artifacts, precision=precision)
        if not artifact.exists():
            flag = " --int8" if precision == "int8" else ""
            raise EngineMismatchError(f"{artifact} not found; run build_engines.py{flag} first")
        check_sidecar(artifact, model=name, weights=path)
        engine = OnnxRuntimeEngine(artifact, device=dev, threads=threads)
    else:
        from engines.backends.tensorrt_backend import TensorRTEngine

        engine = TensorRTEngine(engine_path(name, artifacts), model=name, weights=path, device=dev)
    logger.info("%s: %s backend%s on %s (weights %s)", name, chosen, " int8" if precision == "int8" else "",
                dev, path.name)
    return LoadedModel(name=name, engine=engine, config=config, weights=path, precision=precision)
