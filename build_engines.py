"""Export every shipped model to ONNX and build the runtime artefacts the pipeline uses.

    python build_engines.py                      # ONNX (+ ONNX Runtime check) for all models
    python build_engines.py --int8               # also int8 ONNX Runtime variants for CPU
    python build_engines.py --tensorrt           # also TensorRT engines (needs TensorRT + CUDA)
    python build_engines.py --models generator --tensorrt --precision fp16

One step per model: export → check (ONNX checker, TensorRT op set, ONNX Runtime parity
against PyTorch) → build. Artefacts go to artifacts/ with a .json metadata sidecar each; the
pipeline refuses an artefact whose sidecar does not match the weights or the machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from engines.artifacts import ARTIFACTS_DIR, engine_path, onnx_path
from engines.build import TensorRTSettings, build_tensorrt, check_tensorrt_ops
from engines.export import ExportError, example_inputs, export_onnx
from engines.quantize import int8_error, quantize_int8
from engines.registry import MODELS, load_model
from engines.runtime import EngineError
from stream.calibration import SAMPLE_CLIP, calibration_feeds, load_images, video_frames

logger = logging.getLogger("build_engines")
# Training data of the detector (real photos of masked faces): the calibration set the issue asks for.
DEFAULT_CALIBRATION = Path(__file__).resolve().parent.parent / "shared" / "data" / "segmentation" / "training"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    p.add_argument("--artifacts", type=Path, default=ARTIFACTS_DIR)
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "int8"])
    p.add_argument("--max-batch", type=int, default=8, help="largest batch of face crops (generator)")
    p.add_argument("--workspace-mib", type=int, default=2048)
    p.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--int8", action="store_true",
                   help="also build int8 ONNX Runtime variants for CPU (run_stream.py --int8 uses them)")
    p.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION,
                   help="folder of photos of masked faces for int8 calibration, searched recursively "
                        "(default: the shared segmentation training set)")
    p.add_argument("--calibration-images", type=int, default=120, help="calibration photos used")
    p.add_argument("--parity-atol", type=float, default=1e-3, help="largest allowed ONNX Runtime vs torch error")
    return p


def parity_feeds(name: str, inputs) -> dict[str, torch.Tensor]:
    """Inputs that make the model do real work: a frame of the bundled clip for the detector
    (random pixels hold no face, and parity on an empty result proves nothing)."""
    feeds = dict(zip((s.name for s in inputs), example_inputs(inputs)))
    if name == "detector" and SAMPLE_CLIP.exists():
        from stream.detect import detector_input

        (image,) = video_frames(SAMPLE_CLIP, limit=1)
        hw = tuple(inputs[0].shape[2:])
        feeds["image"], _ = detector_input(image, hw)
    return feeds


def check_parity(name: str, artifacts: Path, atol: float) -> float:
    """Max absolute difference between ONNX Runtime and PyTorch outputs."""
    reference = load_model(name, backend="torch", device="cpu")
    exported = load_model(name, backend="onnxruntime", device="cpu", artifacts=artifacts)
    feeds = parity_feeds(name, reference.engine.inputs)
    want, got = reference.engine.run(feeds), exported.engine.run(feeds)
    if any(t.numel() == 0 for t in want.values()):
        logger.warning("%s: parity checked on an empty output", name)
    worst = 0.0
    for spec in reference.engine.outputs:
        a, b = want[spec.name], got[spec.name]
        if a.shape != b.shape:
            raise ExportError(f"{name}: output {spec.name} has shape {tuple(b.shape)} in ONNX Runtime, {tuple(a.shape)} in torch")
        if a.numel():
            worst = max(worst, float((a.double() - b.double()).abs().max()))
    if worst > atol:
        raise ExportError(f"{name}: ONNX Runtime differs from torch by {worst:.2e} (> {atol:.0e})")
    return worst


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    torch.set_flush_denormal(True)
    trt_ready = False
    if args.tensorrt:
        from engines.backends.tensorrt_backend import tensorrt_available

        trt_ready = tensorrt_available() and torch.cuda.is_available()
        if not trt_ready:
            print("TensorRT or CUDA is not available here: skipping TensorRT engines, building the rest", file=sys.stderr)
    try:
        for name in args.models:
            path = export_onnx(name, artifacts=args.artifacts)
            worst = check_parity(name, args.artifacts, args.parity_atol)
            check_tensorrt_ops(path)
            print(f"{name}: {path} (ONNX Runtime vs torch max |diff| {worst:.1e}; ops fit TensorRT)")
        needs_calibration = args.int8 or (trt_ready and args.precision == "int8")
        calibration_images = load_images(args.calibration, limit=args.calibration_images) if needs_calibration else []
        for name in args.models:
            feeds = calibration_feeds(name, calibration_images) if calibration_images else []
            if args.int8:
                path = quantize_int8(name, feeds, artifacts=args.artifacts, source=str(args.calibration))
                output, error = int8_error(name, feeds[:20], artifacts=args.artifacts)
                print(f"{name}: {path} (int8, {len(feeds)} calibration inputs; mean |int8 - torch| "
                      f"of {output!r} {error:.4f})")
            if trt_ready:

                settings = TensorRTSettings(precision=args.precision, max_batch=args.max_batch,
                                            workspace_mib=args.workspace_mib)
                plan = build_tensorrt(onnx_path(name, args.artifacts), engine_path(name, args.artifacts),
                                      settings=settings, timing_cache=args.timing_cache, calibration=feeds)
                print(f"{name}: {plan} ({args.precision})")
    except (ExportError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
