"""CPU latency of the face-completion generator per crop (batch 1), in PyTorch and ONNX Runtime.

    python -m training.evaluation.benchmark_generator --weights engines/weights/generator_128.pt --threads 2

Without --weights an untrained model of the default config is timed (latency does not depend on
the weights). A reference-conditioned generator is timed with a reference and, under
``no_reference``, in the form the pipeline runs for a face without one. Prints and optionally
writes (--json) median and p90 milliseconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engines.models.generator import (
    GeneratorConfig,
    GeneratorWeightsError,
    build_generator,
    load_generator,
    without_reference,
)
from training.cli import log_to_stderr, use_cpu_threads, write_json

logger = logging.getLogger(__name__)


def _time(fn, *, warmup: int, iters: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "min_ms": float(np.min(times))}


def _time_forms(model: torch.nn.Module, inputs: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, object]:
    """Latency of ``model`` on ``inputs`` in torch and (unless --no-onnx) ONNX Runtime."""
    result: dict[str, object] = {}
    with torch.inference_mode():
        result["torch_fp32"] = _time(lambda: model(*inputs.values()), warmup=args.warmup, iters=args.iters)
    if not args.no_onnx:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "generator.onnx"
            torch.onnx.export(model, tuple(inputs.values()), dynamo=True, input_names=list(inputs),
                              output_names=["output"]).save(str(path))
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feeds = {name: tensor.numpy() for name, tensor in inputs.items()}
            result["onnxruntime_fp32"] = _time(lambda: session.run(None, feeds), warmup=args.warmup, iters=args.iters)
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Time the generator on CPU.")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--size", type=int, default=128, help="crop size when no weights are given")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime timing")
    p.add_argument("--json", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr()
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # the exporter's pass-by-pass chatter
    use_cpu_threads(args.threads)
    if args.weights is not None:
        try:
            model, config = load_generator(args.weights)
        except GeneratorWeightsError as exc:
            logger.error("%s", exc)
            return 2
    else:
        config = GeneratorConfig(size=args.size)
        model = build_generator(config=config).eval()
    s = config.size
    image = torch.rand(1, 3, s, s)
    mask = torch.zeros(1, 1, s, s)
    mask[..., s // 2: s - s // 8, s // 5: s - s // 5] = 1.0
    inputs = {"image": image, "mask": mask}
    result: dict[str, object] = {"size": s, "threads": args.threads, "reference": config.reference,
                                 "params": sum(p.numel() for p in model.parameters())}
    if config.reference:
        # What the pipeline runs for a face without a reference (the graph of the reference form
        # does the same work whatever its reference_mask says).
        result["no_reference"] = _time_forms(without_reference(model), inputs, args)
        inputs = dict(inputs, reference=torch.rand(1, 3, s, s), reference_mask=torch.ones(1, 1, s, s))
    result.update(_time_forms(model, inputs, args))
    logger.info("%s", json.dumps(result))
    print(json.dumps(result, indent=2))
    write_json(args.json, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
