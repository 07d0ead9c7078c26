"""The shipped weights format shared by every model: ``{"config", "state_dict", "meta"}``.

Floating-point tensors are stored in fp16 (half the size, no measured loss for these models)
and loaded back as fp32; ``meta`` holds plain JSON-able values so files load with
``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from engines.runtime import WeightsError


def save_checkpoint(model: nn.Module, config: dict[str, Any], path: str | Path, *, meta: dict | None = None) -> None:
    """Write atomically (temporary file, then rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": config, "state_dict": state, "meta": dict(meta or {})}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(config, fp32 state dict, meta) of a file written by ``save_checkpoint``; WeightsError for
    a missing file, one that is not a torch file (a text file, a truncated download), or a torch
    file that is not a checkpoint of this project."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip, EOF and runtime errors alike for a bad file
        raise WeightsError(f"{path} is not a readable weights file ({type(exc).__name__})") from exc
    if not isinstance(blob, dict) or not {"config", "state_dict"} <= set(blob) or not isinstance(blob["config"], dict):
        raise WeightsError(f"{path} is a torch file but not a weights file of this project")
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    return blob["config"], state, blob.get("meta", {})


ModelT = TypeVar("ModelT", bound=nn.Module)
ConfigT = TypeVar("ConfigT")


def load_weights(path: str | Path, *, kind: str, config_type: Callable[..., ConfigT],
                 build: Callable[[ConfigT], ModelT], error: type[WeightsError],
                 device: str | torch.device = "cpu") -> tuple[ModelT, ConfigT]:
    """The float32 model in eval mode and its config, from a file written by ``save_checkpoint``.
    ``kind`` names the model in messages; every failure is raised as ``error``: missing file,
    a config ``config_type`` refuses, or weights that do not fit ``build(config)``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"no {kind} weights at {path}")
    try:
        config_dict, state, _ = load_checkpoint(path)
        config = config_type(**config_dict)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise error(f"unreadable {kind} checkpoint {path}: {exc}") from exc
    model = build(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise error(f"weights in {path} do not match {config}: {exc}") from exc
    return model.to(device).eval(), config

