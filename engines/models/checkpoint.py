"""The shipped weights format shared by every model: ``{"config", "state_dict", "meta"}``.

Floating-point tensors are stored in fp16 (half the size, no measured loss for these models)
and loaded back as fp32; ``meta`` holds plain JSON-able values so files load with
``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


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
    """(config, fp32 state dict, meta) of a file written by ``save_checkpoint``."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    return blob["config"], state, blob.get("meta", {})
