"""CPU latency of the detector on one 640x480 frame (letterbox + network + mask paste).

    python -m training.evaluation.benchmark_detector --weights engines/weights/detector_mobilenet_v3.pt --threads 2

Reports the median and 90th percentile over ``--runs`` timed runs after ``--warmup`` runs,
for PyTorch eager and, with ``--onnx``, for ONNX Runtime on the exported graph. The frame is
a real masked photo when ``--image`` is given (so the heads see detections), else noise.
``--int8 A`` also times the fp32 and int8 exports that ``build_engines.py --int8 --artifacts A``
wrote, in turn for ``--rounds`` rounds (the median of each round's median), so that a busy
machine slows both alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from engines.models.detector import OUTPUT_NAMES, DetectorConfig, DetectorExport, build_detector, load_detector
from stream.detect import detector_input
from training.cli import log_to_stderr, use_cpu_threads

logger = logging.getLogger(__name__)


def _time(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        n = fn()
        times.append(1000.0 * (time.perf_counter() - t))
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "detections": int(n)}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Time the detector on a 640x480 frame on CPU.")
    p.add_argument("--weights", type=Path, default=Path("engines/weights/detector_mobilenet_v3.pt"),
                   help="weights file; an untrained default model is timed when it does not exist")
    p.add_argument("--image", type=Path, default=None, help="photo to resize to 640x480 (default: noise)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--onnx", action="store_true", help="also time ONNX Runtime")
    p.add_argument("--int8", type=Path, metavar="ARTIFACTS",
                   help="also time the fp32 and int8 exports in this artifacts folder, in turn")
    p.add_argument("--rounds", type=int, default=3, help="rounds of --int8's alternation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr()
    use_cpu_threads(args.threads)
    cv2.setNumThreads(args.threads)  # the letterbox resize is part of what is timed
    if args.weights.is_file():
        model, config = load_detector(args.weights)
    else:
        logger.warning("no weights at %s: timing an untrained model", args.weights)
        config = DetectorConfig()
        model = build_detector(config).eval()
    wrapper = DetectorExport(model).eval()
    if args.image is not None:
        bgr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
        if bgr is None:
            logger.error("cannot read %s", args.image)
            return 2
        frame = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (640, 480))
    else:
        frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)

    def prep() -> torch.Tensor:
        return detector_input(frame, tuple(config.input_size))[0]

    @torch.inference_mode()
    def run_torch() -> int:
        return int(wrapper(prep())[0].shape[0])

    results = {"threads": args.threads, "input_size": list(config.input_size), "frame": [480, 640],
               "torch": _time(run_torch, args.runs, args.warmup)}
    if args.onnx:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "detector.onnx"
            torch.onnx.export(wrapper, (prep(),), str(path), dynamo=False, opset_version=17,
                              input_names=["image"], output_names=list(OUTPUT_NAMES))
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            results["onnxruntime"] = _time(
                lambda: len(session.run(None, {"image": prep().numpy()})[0]), args.runs, args.warmup
            )
    if args.int8 is not None:
        import onnxruntime as ort

        from engines.artifacts import onnx_path

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sessions = {}
        for precision in ("fp32", "int8"):
            path = onnx_path("detector", args.int8, precision=precision)
            if not path.is_file():
                logger.error("%s not found: run build_engines.py --models detector --int8 --artifacts %s first",
                             path, args.int8)
                return 2
            sessions[precision] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        rounds: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(args.rounds):
            for precision, session in sessions.items():
                timed = _time(lambda s=session: len(s.run(None, {"image": prep().numpy()})[0]), args.runs, args.warmup)
                rounds[precision].append(timed["median_ms"])
        fp32, int8 = float(np.median(rounds["fp32"])), float(np.median(rounds["int8"]))
        results["artifacts"] = {"fp32_median_ms": fp32, "int8_median_ms": int8, "int8_saving": 1.0 - int8 / fp32,
                                "rounds": rounds}
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
