"""A face, not a blur: held-out masked faces through the pipeline's own detect and inpaint code.

    python -m training.evaluation.evaluate_completion --data ../shared/data --json runs/completion.json

Each face is masked with the project's synthesizer (fixed seed), then goes through
``stream.detect.FaceDetector`` and ``stream.inpaint.FaceInpainter`` as a photo does in
``run_stream.py``. Scored inside the drawn mask, against the true face:

* PSNR (dB);
* sharpness: mean gradient magnitude of the output over that of the true face (1: as much detail
  as the real face; the true face blurred with a Gaussian of sigma 4 px scores about 0.6);
* structure: the same ratio after both are cleaned by the same non-local means filter
  (``structural_sharpness``), so that grain lent from an exemplar's JPEG is not counted as detail;
* SSIM inside the mask;
* face-parts score: the project's frozen parsing net (``engines/weights/face_parsing.pt``) labels
  the generator's crop window of output and truth; F-score of nose, lips and inner mouth, pixels
  inside the mask only (1: the same parts in the same places);
* identity distance: Euclidean distance between dlib's 128-D face descriptors of the output and
  of the true face (lower is closer; dlib calls 0.6 the same-person threshold).

Modes: ``blur`` (the generator alone, as before references), ``exemplar`` (no reference: a face
of the shipped exemplar bank lends its detail), ``reference`` (another photo of the same person,
only where one exists: LFW).

Sets: ``utk``: the generator's held-out UTKFace faces; ``lfw``: the held-out LFW people
(``training.data.negatives`` split) with two or more photos, the first masked, the second the
reference; ``web``: the unmasked web photos of ``photos/unmasked`` (both of the detector's splits: the
generator and the exemplar bank never saw them), the largest face of each masked, kept apart for
judging completion changes once the held-out faces of the other two are spent. Faces where the detector finds no mask are counted and left out of the means.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from engines.registry import load_model
from engines.runtime import EngineError
from stream.detect import FaceDetector
from stream.geometry import CropWindow
from stream.inpaint import EyeGuard, FaceInpainter, InpaintSettings
from stream.reference import EXEMPLAR_SHORTLIST, EXEMPLARS, PartsLocator, References, load_exemplars, person_reference
from stream.smoothing import TemporalConfig
from stream.track import FaceTracker, TrackerConfig
from training.cli import log_to_stderr, use_cpu_threads, write_json
from training.data.generator_data import FaceDataError, load_face_records, read_rgb, split_records
from training.data.landmarks import LandmarkDetector, default_predictor_path
from training.data.negatives import negative_files
from training.data.synth import MaskSynthesizer
from training.metrics.image_metrics import ssim
from training.metrics.temporal_metrics import frame_psnr, gradient_magnitude, structural_sharpness

logger = logging.getLogger(__name__)
MODES = ("blur", "exemplar", "reference")


@dataclass(frozen=True)
class Case:
    """A masked photo, its truth, the drawn mask (H, W) bool, and a reference photo or None."""

    name: str
    masked: np.ndarray
    truth: np.ndarray
    hole: np.ndarray
    reference: np.ndarray | None


class IdentityDescriptor:
    """dlib's 128-D face descriptor (``face-recognition-models``) at given landmarks."""

    def __init__(self) -> None:
        import dlib

        models = default_predictor_path().parent
        self._net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self._predictor = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
        self._rect = dlib.rectangle

    def __call__(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        shape = self._predictor(rgb, self._rect(x1, y1, x2, y2))
        return np.asarray(self._net.compute_face_descriptor(rgb, shape), np.float32)


def utk_cases(data: Path, landmarks: Path, synth: MaskSynthesizer, n: int, seed: int, offset: int = 0) -> list[Case]:
    _, val = split_records(load_face_records(data / "faces" / "utkface", landmarks))
    cases = []
    for i, r in enumerate(val[offset:offset + n], start=offset):
        truth = read_rgb(r.path)
        res = synth.apply(truth, r.landmarks, rng=np.random.default_rng([seed, i]))
        cases.append(Case(r.path.name, res.image, truth, res.mask, None))
    if not cases:
        raise FaceDataError(f"no held-out UTKFace faces from {offset} on (the split holds {len(val)})")
    return cases


def _with_faces(photos: list[Path], detector: LandmarkDetector, *, n: int, offset: int
                ) -> tuple[list[tuple[Path, np.ndarray, list[np.ndarray]]], int]:
    """Up to ``n`` of ``photos`` in which ``detector`` finds a face, past the first ``offset`` such:
    (photo, its RGB pixels, the landmarks found), and how many had a face up to where it stopped."""
    picked, usable = [], 0
    for photo in photos:
        if len(picked) >= n:
            break
        truth = read_rgb(photo)
        found = detector.detect(truth)
        if not found:
            continue
        usable += 1
        if usable > offset:
            picked.append((photo, truth, found))
    return picked, usable


def lfw_cases(data: Path, synth: MaskSynthesizer, detector: LandmarkDetector, n: int, seed: int,
              offset: int = 0) -> list[Case]:
    by_person: dict[str, list[Path]] = {}
    for p in negative_files(data, "lfw", "val"):
        by_person.setdefault(p.parent.name, []).append(p)
    second = {photos[0]: photos[1] for _, photos in sorted(by_person.items()) if len(photos) >= 2}
    picked, usable = _with_faces(list(second), detector, n=n, offset=offset)
    cases = []
    for photo, truth, found in picked:
        res = synth.apply(truth, found[0], rng=np.random.default_rng([seed, len(cases)]))
        cases.append(Case(photo.name, res.image, truth, res.mask, read_rgb(second[photo])))
    if not cases:
        # An empty set would print NaN for every measure, which reads like a result.
        raise FaceDataError(f"no held-out LFW people from {offset} on ({usable} with two photos and a face found)")
    return cases


def web_cases(data: Path, synth: MaskSynthesizer, detector: LandmarkDetector, n: int, seed: int,
              offset: int = 0) -> list[Case]:
    photos = sorted(negative_files(data, "photos", "train") + negative_files(data, "photos", "val"))
    picked, usable = _with_faces(photos, detector, n=n, offset=offset)
    cases = []
    for photo, truth, found in picked:
        largest = max(found, key=lambda lm: np.ptp(lm[:, 0]) * np.ptp(lm[:, 1]))
        res = synth.apply(truth, largest, rng=np.random.default_rng([seed, 7, len(cases)]))
        cases.append(Case(photo.name, res.image, truth, res.mask, None))
    if not cases:
        raise FaceDataError(f"no unmasked web photo with a face from {offset} on ({usable} with a face found)")
    return cases


PARTS = ("nose", "upper_lip", "inner_mouth", "lower_lip")


class PartsScore:
    """F-score of the face parts in ``PARTS`` between the parsing net's labels of output and truth,
    counted inside the hole, on the generator's crop window of the face."""

    def __init__(self, weights: Path, *, size: int, crop_scale: float) -> None:
        from engines.models.parsing import PARSING_CLASSES, load_parsing_net

        self.net, _ = load_parsing_net(weights)
        self.size, self.crop_scale = size, crop_scale
        self.classes = [PARSING_CLASSES.index(p) for p in PARTS]

    def _labels(self, image: np.ndarray, window: CropWindow) -> np.ndarray:
        crop = torch.from_numpy(window.cut(image, self.size)).permute(2, 0, 1)[None].float().div(255.0)
        with torch.no_grad():
            return self.net(crop).argmax(1)[0].numpy()

    def __call__(self, output: np.ndarray, truth: np.ndarray, hole: np.ndarray, box: np.ndarray) -> float:
        window = CropWindow.for_face(box, self.crop_scale)
        inside = window.cut(hole.astype(np.uint8), self.size, interpolation=cv2.INTER_NEAREST) > 0
        got, want = self._labels(output, window)[inside], self._labels(truth, window)[inside]
        hit = sum(int(((got == c) & (want == c)).sum()) for c in self.classes)
        said = sum(int((got == c).sum()) for c in self.classes)
        true = sum(int((want == c).sum()) for c in self.classes)
        return 2.0 * hit / max(said + true, 1)


def complete(case: Case, mode: str, *, detector: FaceDetector, inpainter_for, exemplars, crop_scale: float,
             locator=None, eye_locator=None, shortlist: int = EXEMPLAR_SHORTLIST):
    """The pipeline's photo path on one case; None when no mask is found."""
    found = detector(case.masked)
    tracker = FaceTracker(TrackerConfig(initialization_delay=0, hit_counter_max=1, mask_confirm=1),
                          temporal=TemporalConfig(enabled=False))
    tracks = tracker.update(found, frame_hw=case.masked.shape[:2])
    if not any(t.mask.any() for t in tracks):
        return None
    given = []
    if mode == "reference":
        ref = detector(case.reference)
        if len(ref) == 0:
            return None
        given = [person_reference(case.reference, ref.boxes[0], crop_scale=crop_scale, source=case.name)]
    references = None if mode == "blur" else References(
        given=given, exemplars=exemplars if mode == "exemplar" else [], memory=None, locator=locator,
        eye_locator=eye_locator, shortlist=shortlist)
    return inpainter_for(references)(case.masked, tracks), found


def _ssim(output: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> float:
    ys, xs = np.nonzero(hole)
    y1, y2, x1, x2 = max(ys.min() - 8, 0), ys.max() + 9, max(xs.min() - 8, 0), xs.max() + 9
    a, b = (torch.from_numpy(np.ascontiguousarray(im[y1:y2, x1:x2])).permute(2, 0, 1)[None].float().div(255.0)
            for im in (output, truth))
    return float(ssim(a, b, torch.from_numpy(hole[y1:y2, x1:x2])[None, None].float())[0])


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Held-out masked faces through the pipeline: PSNR, sharpness, identity.")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--landmarks", type=Path, default=Path("cache/utkface_landmarks.npz"))
    p.add_argument("--detector-weights", type=Path, default=None)
    p.add_argument("--generator-weights", type=Path, default=None)
    p.add_argument("--sets", nargs="+", default=["utk", "lfw"], choices=["utk", "lfw", "web"])
    p.add_argument("--count", type=int, default=150, help="faces per set")
    p.add_argument("--detail-sigma", type=float, default=InpaintSettings.detail_sigma)
    p.add_argument("--exemplar-gain", type=float, default=InpaintSettings.exemplar_gain)
    p.add_argument("--exemplar-shortlist", type=int, default=EXEMPLAR_SHORTLIST, help="as run_stream.py's")
    p.add_argument("--eye-guard", default="on", choices=["on", "off"], help="as run_stream.py --eye-guard")
    p.add_argument("--exemplars", type=Path, default=EXEMPLARS, help="the exemplar bank (.npz) of the exemplar mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=int, default=0,
                   help="start at this held-out face of each set (UTKFace faces, LFW people with two photos): "
                        "settings are tuned on faces past the measured ones (e.g. --offset 300), and measured at 0")
    p.add_argument("--parsing", type=Path, default=Path("engines/weights/face_parsing.pt"),
                   help="the frozen parsing net of the face-parts score")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--sheet", type=Path, default=None, help="write a contact sheet PNG (masked, modes, truth)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_to_stderr()
    use_cpu_threads(args.threads)
    try:
        det = load_model("detector", backend="torch", device="cpu", weights=args.detector_weights, threads=args.threads)
        gen = load_model("generator", backend="torch", device="cpu", weights=args.generator_weights, threads=args.threads)
    except EngineError as exc:
        logger.error("%s", exc)
        return 2
    detector = FaceDetector(det.engine, det.config)
    settings = InpaintSettings(detail_sigma=args.detail_sigma, exemplar_gain=args.exemplar_gain)
    locator = PartsLocator(load_model("parsing", backend="torch", device="cpu", threads=args.threads).engine)
    # As run_stream.py: the eyes above the mask are found by the net trained on masked faces.
    eye_locator = PartsLocator(load_model("parsing_masked", backend="torch", device="cpu", threads=args.threads).engine
                               ) if args.eye_guard == "on" else None

    def inpainter_for(references):
        return FaceInpainter(gen.engine, gen.config, settings=settings, temporal=TemporalConfig(enabled=False),
                             references=references,
                             # A guard per inpainter: it remembers eyes per track id, and every case is track 1.
                             # No hand guard: it arms only on a mask seen bare for frames, never on one photo.
                             eye_guard=EyeGuard(eye_locator, every=1) if eye_locator is not None else None)

    exemplars = load_exemplars(args.exemplars)
    synth = MaskSynthesizer(templates_root=args.data / "mask_templates",
                            textures_root=args.data / "mask_templates" / "textures")
    identity = IdentityDescriptor()
    parts = PartsScore(args.parsing, size=gen.config.size, crop_scale=gen.config.crop_scale)
    results: dict = {}
    sheet_rows = []
    try:
        sets = {}
        if "utk" in args.sets:
            sets["utk"] = utk_cases(args.data, args.landmarks, synth, args.count, args.seed, args.offset)
        if "lfw" in args.sets:
            sets["lfw"] = lfw_cases(args.data, synth, LandmarkDetector(), args.count, args.seed, args.offset)
        if "web" in args.sets:
            sets["web"] = web_cases(args.data, synth, LandmarkDetector(), args.count, args.seed, args.offset)
    except FaceDataError as exc:
        logger.error("%s", exc)
        return 2
    for name, cases in sets.items():
        modes = [m for m in MODES if m != "reference" or name == "lfw"]
        scores = {m: {"psnr": [], "ssim": [], "sharpness": [], "structure": [], "parts": [], "identity": []} for m in modes}
        missed = 0
        for k, case in enumerate(tqdm(cases, desc=name, unit="face", mininterval=5)):
            outs = {}
            for mode in modes:
                done = complete(case, mode, detector=detector, inpainter_for=inpainter_for, exemplars=exemplars,
                                crop_scale=gen.config.crop_scale, locator=locator, eye_locator=eye_locator,
                                shortlist=args.exemplar_shortlist)
                if done is None:
                    break
                outs[mode] = done
            if len(outs) < len(modes):
                missed += 1
                continue
            box = outs[modes[0]][1].boxes[0]
            truth_id = identity(case.truth, box)
            g_truth = float(gradient_magnitude(case.truth)[case.hole].mean())
            for mode, (out, _) in outs.items():
                scores[mode]["psnr"].append(frame_psnr(out, case.truth, case.hole))
                scores[mode]["ssim"].append(_ssim(out, case.truth, case.hole))
                scores[mode]["parts"].append(parts(out, case.truth, case.hole, box))
                scores[mode]["sharpness"].append(float(gradient_magnitude(out)[case.hole].mean()) / max(g_truth, 1e-6))
                scores[mode]["structure"].append(structural_sharpness(out, case.truth, case.hole))
                scores[mode]["identity"].append(float(np.linalg.norm(identity(out, box) - truth_id)))
            if args.sheet is not None and k < 6:
                tiles = [case.masked] + [outs[m][0] for m in modes] + [case.truth]
                if name == "lfw":
                    tiles.append(case.reference)
                sheet_rows.append([cv2.resize(t, (200, 200)) for t in tiles])
        results[name] = {
            "faces": len(cases), "no_mask_found": missed,
            **{m: {k: float(np.mean(v)) if v else float("nan") for k, v in s.items()} for m, s in scores.items()},
        }
    print(f"{'set':6s} {'mode':10s} {'PSNR hole':>10s} {'SSIM':>6s} {'sharpness':>10s} {'structure':>10s} {'parts F':>8s} {'identity':>9s}")
    for name, r in results.items():
        for mode in MODES:
            if mode in r:
                m = r[mode]
                print(f"{name:6s} {mode:10s} {m['psnr']:10.2f} {m['ssim']:6.3f} {m['sharpness']:10.3f} {m['structure']:10.3f} {m['parts']:8.3f} "
                      f"{m['identity']:9.3f}")
        print(f"{name:6s} {r['faces']} faces, no mask found on {r['no_mask_found']}")
    write_json(args.json, results)
    if args.sheet is not None and sheet_rows:
        width = max(len(r) for r in sheet_rows)
        rows = [np.concatenate(r + [np.zeros_like(r[0])] * (width - len(r)), 1) for r in sheet_rows]
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.sheet), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    return 0


if __name__ == "__main__":
    sys.exit(main())
