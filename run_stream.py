"""Remove face masks from a video file, a stream, a webcam or photos.

    python run_stream.py --input clip.mp4 --output unmasked.mp4
    python run_stream.py --input 0 --show
    python run_stream.py --input photos/ --output unmasked/ --detections faces.jsonl
"""

from __future__ import annotations

import signal
import sys

# A Ctrl-C while the libraries below import raises KeyboardInterrupt inside their import code,
# and one of them swallows it (numpy half-imported, the run going on as if nothing was pressed).
# Run as a script, a Ctrl-C until main() takes over only leaves a note, which main() acts on.
_EARLY_INTERRUPTS: list[int] = []
if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda signum, frame: _EARLY_INTERRUPTS.append(signum))

import argparse  # noqa: E402
import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from engines.artifacts import file_sha256
from engines.registry import LoadedModel, load_model, resolve_device, weights_path
from engines.runtime import EngineError
from stream.benchmark import BenchmarkResult, format_table, run_benchmark, write_outputs
from stream.calibration import cached_int8
from stream.detect import CropVerifier, DetectorSettings, DetectorSettingsError, FaceDetector
from stream.inpaint import EyeGuard, FaceInpainter, HandGuard, InpaintSettings
from stream.pipeline import Pipeline, PipelineConfig
from stream.progress import make_progress
from stream.records import Frame
from stream.reference import (
    EXEMPLAR_SHORTLIST,
    EXEMPLARS,
    IdentityMemory,
    PartsLocator,
    ReferenceError,
    ReferenceFace,
    References,
    load_exemplars,
    load_references,
    reference_from_image,
)
from stream.report import RunStats
from stream.smoothing import SceneCutDetector, TemporalConfig
from stream.sink import (STREAM_FORMATS, VIDEO_CONTAINERS, DetectionsSink, EncoderSettings, PreviewSink, Sink,
                         SinkError, open_sink)
from stream.source import (IMAGE_EXTENSIONS, ImageSource, PacedSource, ReconnectPolicy, Source, SourceError,
                           open_source)
from stream.stages import DetectSchedule, DetectStage, InpaintStage, TrackStage
from stream.track import FaceTracker, TrackerConfig

logger = logging.getLogger("run_stream")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _detect_every(value: str) -> DetectSchedule:
    if value == "auto":
        return DetectSchedule(auto=True)
    try:
        return DetectSchedule(every=int(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from exc


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input",
                   help="video file, image, folder of images and/or videos (each video written into the --output "
                        "folder under its own name), rtsp/rtmp/http URL, webcam index or /dev/videoN "
                        "(with --serve: optional, watchable on the page)")
    p.add_argument("--serve", metavar="[HOST:]PORT",
                   help="start the web page instead of writing a file: your browser's camera in, the unmasked "
                        "stream back (and --input, if given); bound to 127.0.0.1 unless HOST is given, any "
                        "other address needs the access token printed in the URL")
    p.add_argument("--output", help="video file (.mp4 .mkv .mov .avi .webm .ts), image, directory, or rtsp/rtmp/udp URL")
    p.add_argument("--show", action="store_true", help="preview window (needs opencv-python with GUI)")
    p.add_argument("--no-overlays", action="store_true", help="preview without boxes and track ids")
    p.add_argument("--detections", type=Path, help="write per-frame faces as JSON lines (masks as COCO RLE); for a "
                                                     "folder with videos, a folder: one NAME.jsonl per video")
    p.add_argument("--report", type=Path, help="write a JSON report: counts, FPS, per-stage latency, models")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--int8", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                   help="int8 ONNX Runtime models for CPU. auto (default): those whose model card measures the "
                        "int8 form within its tolerance (the generator without a reference), built on first use "
                        "with the shipped weights on CPU; on (or --int8 alone): every model (build them with "
                        "build_engines.py --int8); off: none")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="with the torch backend on a GPU, replay the generator as captured CUDA graphs")
    p.add_argument("--detect-every", type=_detect_every, default="auto", metavar="N|auto",
                   help="run the detector on every N-th frame, or 'auto' (default): every frame while "
                        "faces move fast or are uncertain, up to every 4th while they are steady")
    p.add_argument("--temporal", default="on", choices=["on", "off"],
                   help="smooth boxes, masks and reconstructions over time (off: frame by frame)")
    p.add_argument("--output-momentum", type=float, default=TemporalConfig.output_momentum,
                   help="weight of a new reconstruction while the face is still (lower: steadier)")
    p.add_argument("--mask-momentum", type=float, default=TemporalConfig.mask_momentum,
                   help="weight of a new mask in its running average (lower: steadier outline)")
    p.add_argument("--box-cutoff", type=float, default=TemporalConfig.min_cutoff,
                   help="One Euro min cutoff in Hz for face boxes (lower: steadier crops at rest)")
    p.add_argument("--reference", type=Path, metavar="PATH",
                   help="photo of the person without a mask (or a folder of photos, one or more people): "
                        "its detail goes into the reconstructed lower face")
    p.add_argument("--identity-memory", default="on", choices=["on", "off"],
                   help="use a face seen without its mask earlier in the video as its reference")
    p.add_argument("--exemplars", default="on", choices=["on", "off"],
                   help="without a reference, lips, nostrils and skin texture from the closest face of the shipped "
                        "exemplar bank, fitted to the face the generator draws (off: the generator's smooth face)")
    p.add_argument("--eye-guard", default="on", choices=["on", "off"],
                   help="keep the fill off the eyes above the mask (a face-parsing net trained on masked faces "
                        "finds them every 5 frames; off: the mask grown by a few pixels is filled, lower eyelids "
                        "included)")
    p.add_argument("--hand-guard", default="on", choices=["on", "off"],
                   help="keep a hand that comes over a mask out of the fill (told from the mask by colour, once the "
                        "track has seen its mask bare; off: the detected mask is filled, fingers over it included)")
    p.add_argument("--skip-still", default="on" if InpaintSettings.skip_still else "off", choices=["on", "off"],
                   help="a face whose visible part did not move since the last frame reuses that frame's "
                        "reconstruction, every other frame at most (the generator cannot see the mouth anyway)")
    p.add_argument("--skip-moving", default="on" if InpaintSettings.skip_moving else "off", choices=["on", "off"],
                   help="the same for a face that moved, carried by its measured motion (a face whose motion "
                        "cannot be measured is always generated)")
    p.add_argument("--exemplar-shortlist", type=_positive_int, default=EXEMPLAR_SHORTLIST, metavar="N",
                   help="exemplars short-listed by the upper face; the track settles on the one whose lower face "
                        "agrees best with the face the generator draws (1: the upper face alone decides)")
    p.add_argument("--exemplar-gain", type=float, default=InpaintSettings.exemplar_gain,
                   help="strength of an exemplar's lent detail (1: as in the exemplar)")
    p.add_argument("--detail-sigma", type=float, default=InpaintSettings.detail_sigma,
                   help="detail finer than this many generator pixels comes from the reference (0: none)")
    p.add_argument("--verifier", default="off", choices=["on", "off"],
                   help="a second opinion per face (the mask verifier network) before a mask is filled: "
                        "far fewer unmasked faces touched, but it also refuses some real masks (its model card)")
    p.add_argument("--face-verifier", default="off", choices=["on", "off"],
                   help="ask the face verifier network whether each detected masked face is a face at all: fewer "
                        "faces painted on hands, arms or shiny clothes the detector took for one, but it also "
                        "refuses some real masked faces (its model card)")
    p.add_argument("--face-score", type=float, default=DetectorSettings.face_score,
                   help="minimum face confidence, between the detector's own cut-off (0.3 for the shipped "
                        "model; lower is an error) and 1")
    p.add_argument("--mask-score", type=float, default=DetectorSettings.mask_score,
                   help="minimum face_mask confidence to start filling a face in a video, in the same range "
                        "(higher: fewer false masks, more missed see-through ones); a face already filled keeps "
                        "its mask down to 0.3")
    p.add_argument("--photo-mask-score", type=float, default=DetectorSettings.still_mask_score,
                   help="the same for photos, which get one look where a video's mask must be seen twice "
                        "(the higher of the two counts)")
    p.add_argument("--open-timeout", type=float, default=ReconnectPolicy.open_timeout,
                   help="seconds to keep trying to open a network stream")
    p.add_argument("--reconnect-timeout", type=float, default=ReconnectPolicy.give_up_after,
                   help="seconds without frames before a dropped network stream is given up")
    p.add_argument("--crf", type=int, default=EncoderSettings.crf, help="x264 quality (lower is better)")
    p.add_argument("--preset", default=EncoderSettings.preset, help="x264 preset")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--queue-size", type=_positive_int, default=PipelineConfig.queue_size,
                   help="frames each queue between stages holds (>= 1)")
    p.add_argument("--sequential", action="store_true", help="no threads, no overlap (a baseline)")
    p.add_argument("--live", default="auto", choices=["auto", "on", "off"],
                   help="latency first: one-frame queues (the newest frame wins) and the detector beside the "
                        "frames, not in their way; auto: on for cameras and network streams, off for files")
    p.add_argument("--benchmark", type=Path, metavar="DIR", nargs="?", const=Path("runs/benchmark"),
                   help="run --max-frames (default 300) frames threaded and then sequentially; print "
                        "latency and FPS, write DIR/benchmark.json and DIR/benchmark.png")
    p.add_argument("--detector-weights", type=Path, help="detector weights (default: the shipped model)")
    p.add_argument("--generator-weights", type=Path, help="generator weights (default: the shipped model)")
    p.add_argument("--verifier-weights", type=Path, help="mask verifier weights (default: the shipped model)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per model (default 1: the stages already run in parallel, and more "
                        "threads per model measured slower on 2 cores)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


@dataclass(frozen=True)
class ModelChoice:
    """Which weights run on what: ``--backend``, ``--device``, ``--threads``, ``--int8``,
    ``--cuda-graphs``, the ``--*-weights`` files (None: the shipped ones), ``--verifier`` and
    ``--face-verifier``."""

    backend: str = "auto"
    device: str = "auto"
    threads: int = 1
    int8: str = "auto"
    cuda_graphs: bool = False
    detector_weights: Path | None = None
    generator_weights: Path | None = None
    verifier: bool = False
    verifier_weights: Path | None = None
    face_verifier: bool = False
    parsing: bool = True  # the face-parsing net: fits exemplars to faces
    eye_parsing: bool = True  # its form trained on masked faces: finds the eyes above a mask (EyeGuard)


@dataclass(frozen=True)
class RunConfig:
    """One run of the program, built from the command line by ``config_from_args`` and nowhere
    else; the benchmark derives its runs from it with ``dataclasses.replace``.

    live: "auto" (latency first for cameras and network streams), "on" or "off".
    temporal.enabled and the detection schedule are what the user asked; photos override both.
    """

    input: str | None
    output: str | None = None
    detections: Path | None = None
    show: bool = False
    overlays: bool = True
    report: Path | None = None
    models: ModelChoice = ModelChoice()
    detector: DetectorSettings = DetectorSettings()
    schedule: DetectSchedule = DetectSchedule(auto=True)
    temporal: TemporalConfig = TemporalConfig()
    inpaint: InpaintSettings = InpaintSettings()
    reference: Path | None = None
    identity_memory: bool = True
    exemplars: bool = True
    exemplar_shortlist: int = EXEMPLAR_SHORTLIST
    eye_guard: bool = True
    hand_guard: bool = True
    live: str = "auto"
    pipeline: PipelineConfig = PipelineConfig()
    encoder: EncoderSettings = EncoderSettings()
    reconnect: ReconnectPolicy = ReconnectPolicy()
    progress: bool = True


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run configuration of parsed arguments; invalid settings raise (DetectorSettingsError,
    ValueError from the configs' own checks)."""
    return RunConfig(
        input=args.input, output=args.output, detections=args.detections, show=args.show,
        overlays=not args.no_overlays, report=args.report,
        models=ModelChoice(backend=args.backend, device=args.device, threads=args.threads, int8=args.int8,
                           cuda_graphs=args.cuda_graphs,
                           detector_weights=args.detector_weights, generator_weights=args.generator_weights,
                           verifier=args.verifier == "on", verifier_weights=args.verifier_weights,
                           face_verifier=args.face_verifier == "on",
                           parsing=args.exemplars == "on", eye_parsing=args.eye_guard == "on"),
        detector=DetectorSettings(face_score=args.face_score, mask_score=args.mask_score,
                                  still_mask_score=args.photo_mask_score,
                                  keep_score=min(DetectorSettings.keep_score, args.mask_score),
                                  masked_face_score=min(DetectorSettings.masked_face_score, args.face_score)),
        schedule=args.detect_every,
        temporal=TemporalConfig(enabled=args.temporal == "on", output_momentum=args.output_momentum,
                                mask_momentum=args.mask_momentum, min_cutoff=args.box_cutoff),
        inpaint=InpaintSettings(detail_sigma=args.detail_sigma, exemplar_gain=args.exemplar_gain,
                                skip_still=args.skip_still == "on",
                                skip_moving=args.skip_moving == "on"),
        reference=args.reference, identity_memory=args.identity_memory == "on", exemplars=args.exemplars == "on",
        exemplar_shortlist=args.exemplar_shortlist, eye_guard=args.eye_guard == "on",
        hand_guard=args.hand_guard == "on", live=args.live,
        pipeline=PipelineConfig(queue_size=args.queue_size, sequential=args.sequential, max_frames=args.max_frames),
        encoder=EncoderSettings(crf=args.crf, preset=args.preset),
        reconnect=ReconnectPolicy(open_timeout=args.open_timeout, give_up_after=args.reconnect_timeout),
        progress=not args.no_progress,
    )


@dataclass(frozen=True)
class Models:
    detector: LoadedModel
    generator: LoadedModel
    verifier: LoadedModel | None = None
    face_verifier: LoadedModel | None = None
    generator_noref: LoadedModel | None = None  # a reference-conditioned generator's form without one
    parsing: LoadedModel | None = None
    eye_parsing: LoadedModel | None = None

    def describe(self) -> dict[str, object]:
        return {
            m.name: {"weights": m.weights.name, "sha256": file_sha256(m.weights)[:16],
                     "backend": m.engine.backend, "precision": m.precision, "device": str(m.engine.device)}
            for m in (self.detector, self.generator, self.generator_noref, self.verifier, self.face_verifier,
                      self.parsing, self.eye_parsing)
            if m is not None
        }


# Models whose card measures the int8 form within its stated tolerance on the held-out faces, so
# that --int8 auto runs them int8 (generator card: the form without a reference, -0.01 dB in the
# hole, a third faster per crop).
INT8_BY_DEFAULT = ("generator_noref",)


def _int8_artifacts(name: str, choice: ModelChoice, weights: Path | None) -> Path | None:
    """The artifacts folder of ``name``'s int8 variant where ``--int8 auto`` runs it so (the shipped
    weights, whose card measured it, on CPU with the automatic backend); None: fp32."""
    if (choice.int8 != "auto" or name not in INT8_BY_DEFAULT or weights is not None or choice.backend != "auto"
            or resolve_device(choice.device).type != "cpu"):
        return None
    return cached_int8(name, weights_path(name))


def load_models(choice: ModelChoice) -> Models:
    kwargs = dict(backend=choice.backend, device=choice.device, threads=choice.threads,
                  precision="int8" if choice.int8 == "on" else "fp32", export_on_first_use=True)
    # The detector's outputs vary in number (one row per face found): no graph can hold it.
    generator = load_model("generator", weights=choice.generator_weights, cuda_graphs=choice.cuda_graphs, **kwargs)
    return Models(
        detector=load_model("detector", weights=choice.detector_weights, **kwargs),
        generator=generator,
        verifier=load_model("verifier", weights=choice.verifier_weights, **kwargs) if choice.verifier else None,
        face_verifier=load_model("face_verifier", **kwargs) if choice.face_verifier else None,
        generator_noref=_generator_noref(choice, kwargs) if generator.config.reference else None,
        # No int8 variant: it runs once every few frames per face.
        parsing=load_model("parsing", **dict(kwargs, precision="fp32")) if choice.parsing else None,
        eye_parsing=load_model("parsing_masked", **dict(kwargs, precision="fp32")) if choice.eye_parsing else None,
    )


def _generator_noref(choice: ModelChoice, kwargs: dict) -> LoadedModel:
    artifacts = _int8_artifacts("generator_noref", choice, choice.generator_weights)
    if artifacts is not None:
        return load_model("generator_noref", backend="onnxruntime", device="cpu", artifacts=artifacts,
                          threads=choice.threads, precision="int8")
    return load_model("generator_noref", weights=choice.generator_weights, cuda_graphs=choice.cuda_graphs, **kwargs)


def _detector(models: Models, settings: DetectorSettings) -> FaceDetector:
    verifier, face_verifier = models.verifier, models.face_verifier
    return FaceDetector(
        models.detector.engine, models.detector.config, settings=settings,
        verifier=CropVerifier(verifier.engine, verifier.config) if verifier is not None else None,
        face_verifier=CropVerifier(face_verifier.engine, face_verifier.config) if face_verifier is not None else None,
    )


def tracker_config_for(models: Models, *, still: bool) -> TrackerConfig:
    """Videos: the defaults. Photos are unrelated to each other: no track waits to be confirmed,
    and each photo's verifier verdict stands alone at the verifier's own threshold."""
    if not still:
        return TrackerConfig()
    threshold = models.verifier.config.threshold if models.verifier is not None else TrackerConfig.verify_threshold
    return TrackerConfig(initialization_delay=0, hit_counter_max=1, mask_confirm=1, verify_memory=1.0,
                         verify_threshold=threshold)


def load_given_references(models: Models, config: RunConfig) -> list[ReferenceFace]:
    """The faces of ``--reference`` (none without it); a bad reference raises ReferenceError."""
    if not config.reference:
        return []
    return load_references(config.reference, _detector(models, config.detector),
                           crop_scale=models.generator.config.crop_scale)


def build_pipeline(source: Source, models: Models, sinks: list[Sink], config: RunConfig, *,
                   given: list[ReferenceFace] = ()) -> Pipeline:
    still = isinstance(source, ImageSource)
    temporal = dataclasses.replace(config.temporal, enabled=config.temporal.enabled and not still)
    # Photos are unrelated to each other: every one is detected (see tracker_config_for).
    schedule = DetectSchedule() if still else config.schedule
    tracker_config = tracker_config_for(models, still=still)
    rate = float(source.info.rate) if source.info.rate else 25.0
    crop_scale = models.generator.config.crop_scale
    eye_locator = (PartsLocator(models.eye_parsing.engine)
                   if config.eye_guard and models.eye_parsing is not None else None)
    references = References(
        given=list(given),
        exemplars=load_exemplars(EXEMPLARS) if config.exemplars else [],
        memory=IdentityMemory(crop_scale=crop_scale) if config.identity_memory and not still else None,
        locator=PartsLocator(models.parsing.engine) if models.parsing is not None else None,
        eye_locator=eye_locator,
        shortlist=config.exemplar_shortlist,
    )
    live = config.live == "on" or (config.live == "auto" and source.live)
    stages = [
        DetectStage(_detector(models, config.detector.for_stills() if still else config.detector), schedule=schedule,
                    scene_cuts=SceneCutDetector(temporal.scene_cut) if temporal.enabled else None, background=live),
        TrackStage(FaceTracker(tracker_config, temporal=temporal, rate=rate)),
        InpaintStage(FaceInpainter(models.generator.engine, models.generator.config, temporal=temporal,
                                   settings=config.inpaint, references=references,
                                   no_reference_engine=models.generator_noref.engine if models.generator_noref else None,
                                   # Photos are unrelated: a face's eyes are looked for in each one.
                                   eye_guard=EyeGuard(eye_locator, every=1 if still else 5)
                                   if eye_locator is not None else None,
                                   hand_guard=HandGuard() if config.hand_guard else None)),
    ]
    logger.info("%s mode: %s", "live" if live else "file", "one-frame queues, detector in the background"
                if live else f"queues of {config.pipeline.queue_size}, no frame dropped")
    return Pipeline(source, stages, sinks, config=dataclasses.replace(config.pipeline, live=live))


def open_sinks(source: Source, config: RunConfig) -> list[Sink]:
    sinks: list[Sink] = []
    try:
        if config.output:
            sinks.append(open_sink(config.output, source.info, settings=config.encoder))
        if config.detections:
            sinks.append(DetectionsSink(config.detections))
        if config.show:
            sinks.append(PreviewSink(overlays=config.overlays))
    except SinkError:
        abandon(sinks)
        raise
    return sinks


def abandon(sinks: list[Sink]) -> None:
    """Close sinks that will get no frame (their own complaint about that is not the error)."""
    for sink in sinks:
        try:
            sink.close(complete=False)
        except SinkError:
            pass


def write_report(path: Path, stats: RunStats, models: Models, source: Source, config: PipelineConfig) -> None:
    report = {
        "input": {"width": source.info.width, "height": source.info.height, "live": source.live,
                  "rate": float(source.info.rate) if source.info.rate else None},
        "mode": "live" if config.live else "file",
        "run": stats.summary(),
        "models": models.describe(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


def _open_input(config: RunConfig) -> Source:
    return open_source(config.input, policy=config.reconnect)


def check_output_is_not_input(config: RunConfig) -> None:
    """Refuses an output that would replace what is read: the input video or photo itself, or for
    a folder of photos the folder (each photo would be overwritten by its filled self)."""
    if not (config.output and config.input):
        return
    source, target = Path(config.input), Path(config.output)
    if source.exists() and target.exists() and os.path.samefile(source, target):
        raise SinkError(f"{config.output}: is the input; write the output elsewhere, the input is kept as it is")


def run(config: RunConfig) -> list[RunStats]:
    """Runs the input through the pipeline: one run, or one per video of an input folder (after
    one for its photos, if it has any). Returns each run's statistics."""
    if not (config.output or config.show or config.detections):
        raise SinkError("nothing to do: give --output, --show or --detections")
    check_output_is_not_input(config)
    videos = folder_videos(config.input)
    if videos:
        models = load_models(config.models)
        return run_folder(config, videos, models, load_given_references(models, config))
    # Opened first, so a wrong input is told before the models load; closed on the way out
    # whatever happens (the pipeline closes it too; twice is safe).
    with _open_input(config) as source:
        models = load_models(config.models)
        return [run_one(source, models, load_given_references(models, config), config)]


def folder_videos(spec: str | None) -> list[Path]:
    """The videos in an input folder, by name; [] for any other input."""
    path = Path(spec) if spec else None
    if path is None or not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_CONTAINERS and p.is_file())


def run_folder(config: RunConfig, videos: list[Path], models: Models, given: list[ReferenceFace]) -> list[RunStats]:
    """A folder with videos: its photos as one run (as a folder of photos alone), then each video
    into the output folder under its own name (its detections, with ``--detections DIR``, into
    DIR/NAME.jsonl). A video that cannot be read or written is reported and skipped; the others
    are still made, and the run then ends with an error naming what failed."""
    for option, value in (("--output", config.output), ("--detections", config.detections)):
        if value and (Path(value).suffix or str(value).startswith(tuple(STREAM_FORMATS))):
            raise SinkError(f"{value}: a folder with videos is written into a folder: give {option} a folder")
    if config.report:
        raise SinkError("--report takes one input: give it a video, a photo or a folder of photos")
    for folder in (config.output, config.detections):
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
    done: list[RunStats] = []
    failed: list[str] = []
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in Path(config.input).iterdir()):
        photos = dataclasses.replace(
            config, detections=config.detections / "photos.jsonl" if config.detections else None)
        with ImageSource(Path(config.input), also_read=frozenset(VIDEO_CONTAINERS)) as source:
            done.append(run_one(source, models, given, photos))
    for k, video in enumerate(videos, 1):
        logger.info("video %d of %d: %s", k, len(videos), video.name)
        one = dataclasses.replace(
            config, input=str(video),
            output=str(Path(config.output) / video.name) if config.output else None,
            detections=config.detections / f"{video.stem}.jsonl" if config.detections else None)
        try:
            with _open_input(one) as source:
                done.append(run_one(source, models, given, one))
        except (SourceError, SinkError) as exc:
            logger.error("%s: skipped (%s)", video.name, exc)
            failed.append(video.name)
    if failed:
        raise SourceError(f"{len(failed)} of {len(videos)} videos failed: {', '.join(failed)}")
    return done


def run_one(source: Source, models: Models, given: list[ReferenceFace], config: RunConfig) -> RunStats:
    """One input (``source``, opened from ``config.input``) through the pipeline into ``config``'s
    outputs."""
    sinks = open_sinks(source, config)
    try:
        pipeline = build_pipeline(source, models, sinks, config, given=given)
    except BaseException:
        # Nothing was written: leave no half-made output behind the error.
        abandon(sinks)
        raise
    progress = make_progress(source.info.frame_count, enabled=config.progress)
    preview = next((s for s in sinks if isinstance(s, PreviewSink)), None)

    def on_frame(frame: Frame) -> None:
        progress.update(1)
        if preview is not None and preview.closed_by_user:
            pipeline.stop()

    pipeline.on_frame = on_frame
    try:
        stats = pipeline.run()
    finally:
        progress.close()
        if config.report:
            write_report(config.report, pipeline.stats, models, source, pipeline.config)
    logger.info(
        "%d frames in %.1f s (%.1f FPS), %d dropped, %d corrupt; a face filled on %d",
        stats.frames_written, stats.wall_seconds, stats.fps, stats.frames_dropped, stats.frames_corrupt,
        stats.frames_filled,
    )
    if stats.frames_written and not stats.frames_filled:
        # Otherwise the user gets their video back unchanged and wonders what went wrong.
        logger.warning("%s: no masked face found on any frame; the output shows the input as it was", config.input)
    return stats


def serve_web(config: RunConfig, serve_at: str) -> None:
    """``--serve``: the web page (stream/serve.py) around the same models and pipeline."""
    # Imported here: the web stack (aiohttp, aiortc) is needed by --serve only.
    import asyncio

    from stream.serve import ServeAddress, WebApp, access_token, serve

    address = ServeAddress.parse(serve_at)
    models = load_models(config.models)
    given = load_given_references(models, config)
    detector = _detector(models, config.detector)
    crop_scale = models.generator.config.crop_scale

    def build(source: Source, sinks: list[Sink]) -> Pipeline:
        return build_pipeline(source, models, sinks, config, given=given)

    def make_reference(image):
        return reference_from_image(image, detector, crop_scale=crop_scale, name="a frame of your camera")

    def open_input() -> Source:
        source = _open_input(config)
        if source.live:
            return source
        # A recording is played at its own pace, as a camera would be, so viewers watch it in
        # time, and over again while anyone watches.
        source.close()
        return PacedSource(lambda: _open_input(config), loop=True)

    webapp = WebApp(build=build, make_reference=make_reference, open_input=open_input if config.input else None,
                    token=access_token(address))

    def ready(url: str) -> None:
        print(f"serving on {url} (Ctrl-C stops)", flush=True)

    asyncio.run(serve(webapp, address, ready=ready))


def benchmark(config: RunConfig, directory: Path) -> BenchmarkResult:
    """Threaded, then sequential, on the same models and settings; encodes to a scratch file
    unless --output is given, so encoding is part of the measured cost."""
    models = load_models(config.models)
    given = load_given_references(models, config)
    scratch = tempfile.TemporaryDirectory()
    inputs: list[Source] = []
    frames = config.pipeline.max_frames if config.pipeline.max_frames is not None else 300
    bench = dataclasses.replace(config, show=False, output=config.output or str(Path(scratch.name) / "bench.mp4"),
                                pipeline=dataclasses.replace(config.pipeline, max_frames=frames))

    def make_pipeline(sequential: bool) -> Pipeline:
        source = _open_input(bench)
        inputs.append(source)
        run_config = dataclasses.replace(bench, pipeline=dataclasses.replace(bench.pipeline, sequential=sequential))
        return build_pipeline(source, models, open_sinks(source, run_config), run_config, given=given)

    def make_decode_encode() -> Pipeline:
        source = _open_input(bench)
        pipeline_config = PipelineConfig(queue_size=bench.pipeline.queue_size, max_frames=frames)
        return Pipeline(source, [], open_sinks(source, bench), config=pipeline_config)

    with scratch:
        result = run_benchmark(make_pipeline, compare_sequential=not config.pipeline.sequential,
                               make_decode_encode=make_decode_encode)
    print(format_table(result))
    info = inputs[0].info
    context = {
        "input": f"{Path(config.input).name} {info.width}x{info.height}",
        "backend": models.detector.engine.backend + ("-int8" if models.detector.precision == "int8" else ""),
        "device": str(models.detector.engine.device),
        "models": models.describe(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    json_path, png_path = write_outputs(result, directory, context)
    print(f"wrote {json_path} and {png_path}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
        # NumPy's BLAS too: its worker threads woke for small products in the inpaint stage and
        # fought the other stages for the cores (2026-12-07: a 3x3 inverse took milliseconds
        # while a second process held one core).
        threadpool_limits(args.threads, user_api="blas")
    torch.set_flush_denormal(True)
    if __name__ == "__main__":
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _EARLY_INTERRUPTS:
        print("interrupted before start: nothing written", file=sys.stderr)
        return 130
    if not (args.input or args.serve):
        print("error: give --input (or --serve for the web page)", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
        if args.serve:
            serve_web(config, args.serve)
        elif args.benchmark:
            benchmark(config, args.benchmark)
        else:
            run(config)
    except (SourceError, SinkError, EngineError, ReferenceError, DetectorSettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.serve:
            print("stopped", file=sys.stderr)
            return 0
        print("interrupted: output closed at the last written frame", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
