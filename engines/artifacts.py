"""Artifacts: where exports and engines live, the metadata sidecar each carries, and the check
that refuses an artifact built from other weights or for another model. Used by the registry,
the exporters, the builders and every backend."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from engines.runtime import EngineError, EngineMismatchError

ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "artifacts"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


PRECISIONS = ("fp32", "int8")


def onnx_path(name: str, artifacts: Path = ARTIFACTS_DIR, *, precision: str = "fp32") -> Path:
    """The fp32 export, or its int8 variant for ONNX Runtime on CPU (``engines.quantize``)."""
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; known: {PRECISIONS}")
    return artifacts / (f"{name}.onnx" if precision == "fp32" else f"{name}.{precision}.onnx")


def engine_path(name: str, artifacts: Path = ARTIFACTS_DIR) -> Path:
    """A TensorRT engine (``build_engines.py``)."""
    return artifacts / f"{name}.plan"


def read_sidecar(artifact: Path) -> dict[str, Any]:
    sidecar = artifact.with_name(artifact.name + ".json")
    if not sidecar.exists():
        raise EngineMismatchError(f"{artifact}: no metadata sidecar {sidecar.name}; rebuild with build_engines.py")
    return json.loads(sidecar.read_text())


def check_sidecar(artifact: Path, *, model: str, weights: Path) -> dict[str, Any]:
    """Refuse an artefact built from other weights or for another model."""
    meta = read_sidecar(artifact)
    if meta.get("model") != model:
        raise EngineMismatchError(f"{artifact}: built for model {meta.get('model')!r}, not {model!r}; rebuild")
    if meta.get("weights_sha256") != file_sha256(weights):
        raise EngineMismatchError(f"{artifact}: built from other weights than {weights.name}; rebuild with build_engines.py")
    return meta


def user_cache_dir() -> Path:
    """Where exports made on first use live: $UNMASK_STREAM_CACHE, else the XDG cache folder."""
    if os.environ.get("UNMASK_STREAM_CACHE"):
        return Path(os.environ["UNMASK_STREAM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unmask-stream"
