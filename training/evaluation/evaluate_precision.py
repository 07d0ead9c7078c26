"""Do no harm: how often the program touches what is not a masked face, with recall beside it.

    python -m training.evaluation.evaluate_precision --data ../shared/data --clips cache/masked_clips \\
        --json runs/precision.json

Sets (``--sets``), each scored through the pipeline's own detect stage (``stream.detect.FaceDetector``
at default settings, gates included) or through the whole pipeline (``run_stream.py`` at default
settings), so the numbers are what a user gets:

* ``photos``, ``lfw``: the held-out (measuring) split of ``photos/unmasked`` and of LFW
  (``training.data.negatives``): share of images where any face_mask is reported (lower is better),
  with the settings ``run_stream.py`` gives photos (``DetectorSettings.for_stills``);
* ``masked-photos``: ``photos/masked``: share of images with a face_mask (recall), on the held-out
  fifth (``training.data.negatives.masked_photo_files``; the rest may train the mask verifier) and on all,
  with the photo settings as well; and how many of the things labelled by eye as not faces
  (``annotations/masked_photo_nonfaces.json``: cars, logos, signs, hands, found there with a worn mask
  on 2026-12-07) would still be filled (harm);
* ``masked-clips``: the real masked clips, every frame from the annotated first masked one: share
  of frames on which the pipeline's detect and track stages (default schedule and tracker, as
  ``run_stream.py`` runs a video) give some face a mask to fill (recall); beside it the share of
  frames on which the detect stage alone, frame by frame, reports one; and, over every frame, the
  frames on which more faces are given a mask than the clip shows people (annotated): a face would
  be painted on a hand, an arm or clothes (harm);
* ``photo-folder``: the held-out real masked photos as one folder through ``run_stream.py`` (the
  batch-photo path): share of photos visibly altered (as below) anywhere but in the crop windows
  of their own detected faces, grown by one tile: what a photo's faces leave outside themselves,
  or an earlier photo's faces leave on it;
* ``unmasked-clips``: ``videos/unmasked`` through ``run_stream.py`` (``--max-frames`` frames):
  share of frames whose output differs visibly from the input (some 16x16 block with a mean
  absolute luma difference above 12; re-encoding alone stays under 9), overall and per clip;
* ``mask-off``: clips made from the synthetic masked clips (``training.data.masked_clips``): the masked
  video for the first half, the unmasked ground truth for the second; frames after the switch
  until the output is the input again (no frame altered from then on), and the share of the masked
  half that was filled;
* ``segmentation``, ``synthetic``: the detector's own recall sets, as in ``training.evaluation.evaluate_detector``
  (IWM/CWM held-out mask mIoU, synthetic face AP50 and mask mIoU; raw model at ``--score``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from engines.models.detector import load_detector_meta
from engines.registry import load_model
from engines.runtime import EngineError
from stream.detect import CropVerifier, DetectorSettings, FaceDetector
from stream.geometry import CropWindow, box_iou
from stream.records import Frame
from stream.source import VideoFileSource
from stream.stages import DetectSchedule, DetectStage, TrackStage
from stream.track import FaceTracker, TrackerConfig
from training.cli import log_to_stderr, use_cpu_threads, write_json
from training.data.detector_data import DataUnavailableError
from training.evaluation.evaluate_detector import (
    IMAGE_SUFFIXES,
    Predictor,
    evaluate_segmentation,
    evaluate_synthetic,
    load_clip_annotations,
    load_clip_people,
)
from training.evaluation.evaluate_temporal import EvaluationError, find_clips, iter_rgb, run_stream_once
from training.data.masked_clips import clip_writer
from training.data.negatives import load_nonfaces, masked_photo_files, negative_files
from training.metrics.temporal_metrics import block_luma_difference, visibly_altered

logger = logging.getLogger(__name__)

SETS = ("photos", "lfw", "masked-photos", "photo-folder", "masked-clips", "unmasked-clips", "mask-off", "segmentation",
        "synthetic")
RUN_STREAM = Path(__file__).resolve().parents[2] / "run_stream.py"


def _read_rgb(path: Path) -> np.ndarray | None:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def mask_rate(detector: FaceDetector, paths: list[Path], desc: str) -> dict:
    """Share of images in which the detect stage reports a face_mask on some face; ``worn_boxes``:
    per flagged image, the (xyxy) boxes of the faces it would fill."""
    if not paths:
        raise DataUnavailableError(f"no images for {desc}")
    found, n, flagged, missed, worn_boxes = 0, 0, [], [], {}
    for p in tqdm(paths, desc=desc, unit="img", mininterval=5):
        image = _read_rgb(p)
        if image is None:
            continue
        n += 1
        detections = detector(image)
        worn = detector.worn(detections)
        if worn.any():
            found += 1
            flagged.append(p.name)
            worn_boxes[p.name] = detections.boxes[worn].round(1).tolist()
        else:
            missed.append(p.name)
    return {"images": n, "face_mask_rate": found / max(n, 1), "flagged": flagged, "missed": missed,
            "worn_boxes": worn_boxes}


def nonface_fills(worn_boxes: dict[str, list], nonfaces: list[tuple[str, np.ndarray]], *, iou: float = 0.5) -> list[int]:
    """Indices of the labelled non-faces that a worn-mask box of the same photo still covers."""
    hits = []
    for k, (name, box) in enumerate(nonfaces):
        boxes = np.asarray(worn_boxes.get(name, []), np.float32).reshape(-1, 4)
        if len(boxes) and float(box_iou(box[None], boxes).max()) >= iou:
            hits.append(k)
    return hits


def clip_mask_rate(detector: FaceDetector, folder: Path, masked_from: dict[str, int], people: dict[str, int]) -> dict:
    paths = sorted(folder.glob("*.mp4"))
    if not paths:
        raise DataUnavailableError(f"no clips in {folder}")
    per_clip, filled, alone, n, off_face, seen = {}, 0, 0, 0, 0, 0
    for path in paths:
        first = masked_from.get(path.stem, 0)
        most = people.get(path.stem)
        extra = []
        # run_stream.py's default schedule for a video (--detect-every auto).
        detect = DetectStage(detector, schedule=DetectSchedule(auto=True))
        track = TrackStage(FaceTracker(TrackerConfig()))
        fills, hits = [], []
        for i, rgb in enumerate(iter_rgb(path)):
            frame = Frame(index=i, image=rgb)
            detect.process(frame)
            track.process(frame)
            given = sum(t.mask.any() for t in frame.tracks)
            if most is not None:
                extra.append(given > most)
            if i < first:
                continue
            fills.append(given > 0)
            # The per-frame count runs the detector on every frame, whatever the schedule skipped.
            found = frame.detections if frame.detected_index == i else detector(rgb)
            hits.append(bool(detector.worn(found).any()))
        per_clip[path.stem] = {"frames": len(fills), "filled_rate": float(np.mean(fills)) if fills else 0.0,
                               "face_mask_rate": float(np.mean(hits)) if hits else 0.0,
                               "off_face_frames": int(sum(extra)) if most is not None else None}
        filled, alone, n = filled + sum(fills), alone + sum(hits), n + len(fills)
        off_face, seen = off_face + sum(extra), seen + len(extra)
    return {"frames": n, "filled_rate": filled / max(n, 1), "face_mask_rate": alone / max(n, 1),
            "off_face_frames": int(off_face), "off_face_rate": off_face / max(seen, 1), "frames_all": seen,
            "clips": per_clip}


def pipeline_fills(path: Path, work: Path, extra: list[str]) -> list[int]:
    """Faces the whole pipeline (``run_stream.py`` with ``extra``) reconstructed, per frame of ``path``."""
    detections = work / f"{path.stem}_faces.jsonl"
    _run(path, work / f"{path.stem}_out.mp4", None, extra + ["--detections", str(detections)])
    with open(detections, encoding="utf-8") as f:
        return [sum(face["filled"] for face in json.loads(line)["faces"]) for line in f]


def clip_fills(folder: Path, masked_from: dict[str, int], people: dict[str, int], work: Path,
               extra: list[str]) -> dict:
    """``clip_mask_rate``'s recall and harm counted on what the whole pipeline filled: its inpaint
    stage may still leave a tracked mask alone (the eye guard)."""
    per_clip, filled, n, off_face = {}, 0, 0, 0
    for path in sorted(folder.glob("*.mp4")):
        counts = pipeline_fills(path, work, extra)
        fills = [k > 0 for k in counts[masked_from.get(path.stem, 0):]]
        most = people.get(path.stem)
        extra_faces = sum(k > most for k in counts) if most is not None else None
        per_clip[path.stem] = {"frames": len(fills), "filled_rate": float(np.mean(fills)) if fills else 0.0,
                               "off_face_frames": extra_faces}
        filled, n, off_face = filled + sum(fills), n + len(fills), off_face + (extra_faces or 0)
    if not per_clip:
        raise DataUnavailableError(f"no clips in {folder}")
    return {"frames": n, "filled_rate": filled / max(n, 1), "off_face_frames": int(off_face), "clips": per_clip}


def altered_flags(source: Path, output: Path, limit: int | None) -> list[bool]:
    """Per frame of ``output``: does it differ visibly from the same frame of ``source``."""
    flags = []
    for i, (a, b) in enumerate(zip(iter_rgb(source), iter_rgb(output))):
        if limit is not None and i >= limit:
            break
        flags.append(visibly_altered(a, b))
    return flags


def _run(source: Path, output: Path, max_frames: int | None, extra: list[str]) -> None:
    cmd = [sys.executable, str(RUN_STREAM), "--input", str(source), "--output", str(output), "--no-progress"]
    if max_frames is not None:
        cmd += ["--max-frames", str(max_frames)]
    run_stream_once(cmd + extra, cwd=RUN_STREAM.parent, timeout=None)


def unmasked_clips(folder: Path, work: Path, max_frames: int | None, extra: list[str]) -> dict:
    paths = sorted(p for p in folder.glob("*.mp4"))
    if not paths:
        raise DataUnavailableError(f"no clips in {folder}")
    per_clip, altered, n = {}, 0, 0
    for path in paths:
        out = work / f"{path.stem}_out.mp4"
        _run(path, out, max_frames, extra)
        flags = altered_flags(path, out, max_frames)
        per_clip[path.stem] = {"frames": len(flags), "altered_rate": float(np.mean(flags)) if flags else 0.0}
        altered, n = altered + sum(flags), n + len(flags)
        logger.info("%s: %d of %d frames altered", path.stem, sum(flags), len(flags))
    return {"frames": n, "altered_rate": altered / max(n, 1), "clips": per_clip}


def altered_outside_faces(source: np.ndarray, output: np.ndarray, boxes: list[list[float]], *, crop_scale: float,
                          block: int = 16, threshold: float = 12.0) -> bool:
    """Does ``output`` differ visibly from ``source`` ((H, W, 3) uint8 RGB) in some ``block`` tile
    that no face's crop window (``boxes``: xyxy frame pixels, squared and grown by ``crop_scale``
    as the inpainter cuts them) reaches, nor a tile next to one."""
    tiles = block_luma_difference(source, output, block=block) > threshold
    faces = np.zeros(tiles.shape, bool)
    for box in boxes:
        window = CropWindow.for_face(np.asarray(box, np.float32), crop_scale)
        x1, y1 = int(window.x1 // block) - 1, int(window.y1 // block) - 1
        x2, y2 = int((window.x1 + window.side) // block) + 2, int((window.y1 + window.side) // block) + 2
        faces[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
    return bool((tiles & ~faces).any())


def photo_folder(paths: list[Path], work: Path, extra: list[str], *, crop_scale: float) -> dict:
    folder, out, found = work / "photo_folder", work / "photo_folder_out", work / "photo_folder.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    cmd = [sys.executable, str(RUN_STREAM), "--input", str(folder), "--output", str(out), "--detections", str(found),
           "--no-progress"]
    run_stream_once(cmd + extra, cwd=RUN_STREAM.parent, timeout=None)
    records = [json.loads(line) for line in found.read_text().splitlines()]
    altered, earlier = [], set()
    for record in records:
        # A photo's own faces are the tracks that start on it; one carried from an earlier photo
        # is that photo's face painted onto this one.
        own = [f["box"] for f in record["faces"] if f["track_id"] not in earlier]
        earlier |= {f["track_id"] for f in record["faces"]}
        source, output = _read_rgb(folder / record["file"]), _read_rgb(out / record["file"])
        if altered_outside_faces(source, output, own, crop_scale=crop_scale):
            altered.append(record["file"])
    return {"images": len(records), "altered_outside_rate": len(altered) / max(len(records), 1), "altered": altered}


def make_mask_off_clip(masked: Path, gt: Path, out: Path) -> int:
    """The masked video up to the middle frame, the unmasked truth from there on. Returns the
    index of the first unmasked frame."""
    masked_frames, gt_frames = list(iter_rgb(masked)), list(iter_rgb(gt))
    if len(masked_frames) != len(gt_frames) or not masked_frames:
        raise EvaluationError(f"{masked.name} and {gt.name} differ in length")
    switch = len(masked_frames) // 2
    with VideoFileSource(masked) as source:
        rate, tb = source.info.rate, source.info.time_base
    h, w = masked_frames[0].shape[:2]
    with clip_writer(out, size=(w, h), rate=rate, time_base=tb, crf=16, preset="medium") as writer:
        step = max(1, round(1 / (rate * tb)))
        for t, frame in enumerate(masked_frames[:switch] + gt_frames[switch:]):
            writer.write(Frame(index=t, image=frame, pts=t * step, time_base=tb))
    return switch


@dataclass(frozen=True)
class MaskOff:
    switch: int
    frames_until_back: int
    filled_before: float


def mask_off_clip(flags: list[bool], switch: int) -> MaskOff:
    """Frames after ``switch`` until no frame is altered any more, and the altered share before it."""
    after = [i for i in range(switch, len(flags)) if flags[i]]
    back = (after[-1] - switch + 1) if after else 0
    return MaskOff(switch, back, float(np.mean(flags[:switch])) if switch else 0.0)


def mask_off(clips_root: Path, work: Path, extra: list[str]) -> dict:
    clips = [c for c in find_clips(clips_root) if not c.name.startswith("multi")]
    if not clips:
        raise DataUnavailableError(f"no masked clips in {clips_root} (python -m training.data.masked_clips)")
    per_clip = {}
    for clip in clips:
        source = work / f"{clip.name}_maskoff.mp4"
        switch = make_mask_off_clip(clip.masked, clip.gt, source)
        out = work / f"{clip.name}_maskoff_out.mp4"
        _run(source, out, None, extra)
        r = mask_off_clip(altered_flags(source, out, None), switch)
        per_clip[clip.name] = {"frames_until_back": r.frames_until_back, "filled_before": r.filled_before}
        logger.info("%s: back after %d frames, %.0f%% of the masked half filled", clip.name,
                    r.frames_until_back, 100 * r.filled_before)
    backs = [c["frames_until_back"] for c in per_clip.values()]
    return {"clips": per_clip, "frames_until_back_max": max(backs), "frames_until_back_mean": float(np.mean(backs)),
            "filled_before_mean": float(np.mean([c["filled_before"] for c in per_clip.values()]))}


def format_table(r: dict) -> str:
    rows = []

    def row(name: str, value: str, target: str, n: str) -> None:
        rows.append(f"{name:44s} {value:>10s} {n:>8s}   {target}")

    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    rows.append(f"{'measure':44s} {'value':>10s} {'n':>8s}   target")
    if "photos" in r:
        row("unmasked web photos (held out): face_mask on", pct(r["photos"]["face_mask_rate"]), "<= 2 %", str(r["photos"]["images"]))
    if "lfw" in r:
        row("LFW news photos (held out): face_mask on", pct(r["lfw"]["face_mask_rate"]), "<= 2 %", str(r["lfw"]["images"]))
    if "photo-folder" in r:
        row("masked photos as one folder: altered off their faces", pct(r["photo-folder"]["altered_outside_rate"]),
            "<= 2 %", str(r["photo-folder"]["images"]))
    if "unmasked-clips" in r:
        u = r["unmasked-clips"]
        row("unmasked clips: frames visibly altered", pct(u["altered_rate"]), "<= 1 %", str(u["frames"]))
        for name, c in u["clips"].items():
            row(f"  {name}", pct(c["altered_rate"]), "", str(c["frames"]))
    if "mask-off" in r:
        m = r["mask-off"]
        row("mask taken off: frames until the face is back", f"{m['frames_until_back_max']} max", "<= 5", str(len(m["clips"])))
        for name, c in m["clips"].items():
            row(f"  {name} (masked half filled {pct(c['filled_before'])})", str(c["frames_until_back"]), "", "")
    if "masked-photos" in r:
        m = r["masked-photos"]
        row("real masked photos (held out): face_mask found", pct(m["held_out"]["face_mask_rate"]), ">= 95 %",
            str(m["held_out"]["images"]))
        row("  all of them", pct(m["face_mask_rate"]), "", str(m["images"]))
        if "nonfaces" in m:
            n = m["nonfaces"]
            row("real masked photos: labelled non-faces filled", f"{len(n['filled'])} of {n['labelled']}", "0",
                str(n["masked_faces"]))
            row("  in the held-out fifth", f"{n['held_out_filled']} of {n['held_out_labelled']}", "", "")
    if "masked-clips" in r:
        c = r["masked-clips"]
        row("real masked clips: frames filled (detect+track)", pct(c["filled_rate"]), ">= 95 %", str(c["frames"]))
        for name, v in c["clips"].items():
            row(f"  {name}", pct(v["filled_rate"]), "", str(v["frames"]))
        row("  frame by frame, detect stage alone", pct(c["face_mask_rate"]), "", str(c["frames"]))
        row("real masked clips: more faces filled than people", pct(c["off_face_rate"]), "0 %", str(c["frames_all"]))
        for name, v in c["clips"].items():
            if v["off_face_frames"] is not None:
                row(f"  {name}", str(v["off_face_frames"]), "", "")
        w = c["pipeline"]
        row("real masked clips: frames filled (whole pipeline)", pct(w["filled_rate"]), ">= 95 %", str(w["frames"]))
        for name, v in w["clips"].items():
            row(f"  {name}", pct(v["filled_rate"]), "", str(v["frames"]))
        row("  frames with more faces filled than people", str(w["off_face_frames"]), "0", "")
        for name, v in w["clips"].items():
            if v["off_face_frames"] is not None:
                row(f"    {name}", str(v["off_face_frames"]), "", "")
    if "segmentation" in r:
        row("IWM/CWM held out: face_mask mIoU", f"{r['segmentation']['face_mask_mIoU']:.3f}", ">= 0.95",
            str(r["segmentation"]["images"]))
    if "synthetic" in r:
        s = r["synthetic"]
        row("synthetic held out: face AP50", f"{s['face_AP50']:.3f}", "", str(s["images"]))
        row("synthetic held out: face_mask mIoU", f"{s['face_mask_mIoU']:.3f}", "", str(s["images"]))
    return "\n".join(rows)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Precision of mask removal on real unmasked material, recall beside it.")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="shared data root")
    p.add_argument("--clips", type=Path, default=Path("cache/masked_clips"), help="training.data.masked_clips output")
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--detector-weights", type=Path, default=Path("engines/weights/detector_mobilenet_v3.pt"))
    p.add_argument("--verifier-weights", type=Path, default=Path("engines/weights/mask_verifier.pt"),
                   help="the mask verifier that vetoes masks face by face")
    p.add_argument("--verifier", default="off", choices=["on", "off"], help="as run_stream.py --verifier")
    p.add_argument("--face-verifier", default="off", choices=["on", "off"], help="as run_stream.py --face-verifier")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    p.add_argument("--max-frames", type=int, default=150, help="frames per unmasked clip")
    p.add_argument("--synthetic", type=int, default=200, help="synthetic validation scenes")
    p.add_argument("--score", type=float, default=0.5, help="raw-model score threshold of the recall sets")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=None, help="keep the pipeline's outputs here (default: a temp dir)")
    p.add_argument("--stream-args", default="", help="extra run_stream.py arguments, one string")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr()
    use_cpu_threads(args.threads)
    extra = ["--detector-weights", str(args.detector_weights.resolve()), "--verifier", args.verifier,
             "--face-verifier", args.face_verifier]
    if args.verifier == "on":
        extra += ["--verifier-weights", str(args.verifier_weights.resolve())]
    extra += args.stream_args.split()
    try:
        loaded = load_model("detector", backend="torch", device="cpu", weights=args.detector_weights,
                            threads=args.threads)
        verifier = None
        if args.verifier == "on":
            checker = load_model("verifier", backend="torch", device="cpu", weights=args.verifier_weights,
                                 threads=args.threads)
            verifier = CropVerifier(checker.engine, checker.config)
        face_verifier = None
        if args.face_verifier == "on":
            checker = load_model("face_verifier", backend="torch", device="cpu", threads=args.threads)
            face_verifier = CropVerifier(checker.engine, checker.config)
    except EngineError as exc:
        logger.error("%s", exc)
        return 2
    detector = FaceDetector(loaded.engine, loaded.config, verifier=verifier, face_verifier=face_verifier)
    # Photos are judged as run_stream.py judges them (DetectorSettings.for_stills).
    photo_detector = FaceDetector(loaded.engine, loaded.config, verifier=verifier, face_verifier=face_verifier,
                                  settings=DetectorSettings().for_stills())
    results: dict = {"weights": str(args.detector_weights), "meta": load_detector_meta(args.detector_weights),
                     "verifier": str(args.verifier_weights) if args.verifier == "on" else None,
                     "face_verifier": args.face_verifier == "on"}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        try:
            for name in ("photos", "lfw"):
                if name in args.sets:
                    results[name] = mask_rate(photo_detector, negative_files(args.data, name, "val"), name)
            if "masked-photos" in args.sets:
                paths = sorted(p for p in (args.data / "photos" / "masked").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                found = mask_rate(photo_detector, paths, "masked photos")
                held = {p.name for p in masked_photo_files(args.data, "val")}
                hits, read = len(held & set(found["flagged"])), len(held & set(found["flagged"] + found["missed"]))
                found["held_out"] = {"images": read, "face_mask_rate": hits / max(read, 1)}
                nonfaces = load_nonfaces()
                filled = nonface_fills(found["worn_boxes"], nonfaces)
                found["nonfaces"] = {"labelled": len(nonfaces), "filled": filled,
                                     "held_out_labelled": sum(name in held for name, _ in nonfaces),
                                     "held_out_filled": sum(nonfaces[k][0] in held for k in filled),
                                     "masked_faces": sum(len(b) for b in found["worn_boxes"].values())}
                results["masked-photos"] = found
            if "photo-folder" in args.sets:
                # The windows the shipped generator cuts, whose crop scale the weights carry.
                crop_scale = load_model("generator", backend="torch", device="cpu").config.crop_scale
                results["photo-folder"] = photo_folder(masked_photo_files(args.data, "val"), work, extra,
                                                       crop_scale=crop_scale)
            if "masked-clips" in args.sets:
                folder, masked_from, people = args.data / "videos" / "masked", load_clip_annotations(), load_clip_people()
                results["masked-clips"] = clip_mask_rate(detector, folder, masked_from, people)
                results["masked-clips"]["pipeline"] = clip_fills(folder, masked_from, people, work, extra)
            if "unmasked-clips" in args.sets:
                results["unmasked-clips"] = unmasked_clips(args.data / "videos" / "unmasked", work, args.max_frames, extra)
            if "mask-off" in args.sets:
                results["mask-off"] = mask_off(args.clips, work, extra)
            if {"segmentation", "synthetic"} & set(args.sets):
                predictor = Predictor(args.detector_weights, threads=args.threads)
                if "segmentation" in args.sets:
                    results["segmentation"] = evaluate_segmentation(predictor, args.data / "segmentation" / "training",
                                                                    args.score)
                if "synthetic" in args.sets:
                    results["synthetic"] = evaluate_synthetic(predictor, args.data, args.landmarks, args.synthetic,
                                                              args.score)
        except (DataUnavailableError, EvaluationError) as exc:
            logger.error("%s", exc)
            return 2
    results["seconds"] = round(time.time() - t0, 1)
    print(format_table(results))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
