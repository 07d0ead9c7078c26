"""Sinks: encoded video (file or live stream), still images, detections JSONL and a preview window."""

from __future__ import annotations

import abc
import json
import logging
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from pycocotools import mask as mask_utils

from stream.records import Frame
from stream.source import IMAGE_EXTENSIONS, LiveAudio, SourceInfo

logger = logging.getLogger(__name__)

# extension -> (container format, video encoder)
VIDEO_CONTAINERS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".avi": ("avi", "libx264"),
    ".ts": ("mpegts", "libx264"),
    ".flv": ("flv", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
}
# URL scheme -> container format for live re-streaming
STREAM_FORMATS = {"rtsp://": "rtsp", "rtmp://": "flv", "udp://": "mpegts", "srt://": "mpegts"}


class SinkError(RuntimeError):
    """The output cannot be created or written."""


@dataclass(frozen=True)
class EncoderSettings:
    """H.264 settings: constant rate factor (lower is better) and x264 preset (faster is cheaper)."""

    crf: int = 20
    preset: str = "veryfast"


class Sink(abc.ABC):
    @abc.abstractmethod
    def write(self, frame: Frame) -> None: ...

    def close(self, *, complete: bool = True) -> None:
        """Finish the output so it is valid; called once, also after an error or Ctrl-C
        (``complete=False``: the input was not read to its end)."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        """Closed as incomplete when the block raised. A sink handed to a ``Pipeline`` is closed by
        the pipeline instead (``Pipeline.run``)."""
        self.close(complete=exc_type is None)


def _check_writable_dir(directory: Path, what: str) -> None:
    if not directory.is_dir():
        raise SinkError(f"{what}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise SinkError(f"{what}: directory {directory} is not writable")


def _encoder_rate(codec: str, rate: int) -> int:
    """The sample rate to encode ``rate`` Hz sound in with ``codec``: its own where it takes it,
    else the lowest it takes above it (AC-3 takes 32-48 kHz only, a camera's G.711 is 8 kHz),
    else its highest."""
    rates = av.codec.Codec(codec, "w").audio_rates
    if not rates or rate in rates:
        return rate
    above = [r for r in rates if r > rate]
    return min(above) if above else max(rates)


class _AudioCopier:
    """Copies the input's audio packets into the output, untouched, interleaved with the video.
    Where the output's container cannot hold the input's audio codec (a phone's AAC into WebM, a
    camera's G.711 into MP4), the audio is decoded and encoded again in the container's own.

    ``packets()`` gives the next packet of ``in_stream``, stamped on the video's clock, or None:
    at the end of a file, or, for a live source (``live``), when none has arrived yet."""

    def __init__(self, in_stream: av.AudioStream, packets: Callable[[], av.Packet | None],
                 output: av.container.OutputContainer, *, live: bool = False,
                 release: Callable[[], None] = lambda: None) -> None:
        self.live = live
        self._next_packet = packets
        self._release = release
        self._encoder: av.AudioStream | None = None
        try:
            self._out_stream = output.add_stream_from_template(in_stream)
        except ValueError:
            codec = output.default_audio_codec
            rate = _encoder_rate(codec, in_stream.rate)
            logger.info("%s cannot hold %s audio: encoding it as %s", output.name, in_stream.codec_context.name, codec)
            self._encoder = self._out_stream = output.add_stream(codec, rate=rate, layout=in_stream.layout.name)
            self._resampler = av.AudioResampler(format=self._encoder.format.name, layout=self._encoder.layout.name,
                                                rate=rate)
            # A decoder of its own: a live source's container is closed before the sinks drain the
            # last packets, and its streams' decoders go with it.
            source = in_stream.codec_context
            self._decoder = av.CodecContext.create(source.name, "r")
            self._decoder.sample_rate, self._decoder.layout = source.sample_rate, source.layout
            if source.extradata:
                self._decoder.extradata = source.extradata
            self._samples: int | None = None
        self._output = output
        self._tb = in_stream.time_base
        self._pending: av.Packet | None = None

    @classmethod
    def of_file(cls, source: Path | str, output: av.container.OutputContainer) -> _AudioCopier:
        """The first audio stream of the file or recorded video at ``source``."""
        container = av.open(str(source))
        packets = container.demux(container.streams.audio[0])
        return cls(container.streams.audio[0], lambda: next(packets, None), output, release=container.close)

    @classmethod
    def of_live(cls, audio: LiveAudio, output: av.container.OutputContainer) -> _AudioCopier:
        def queued() -> av.Packet | None:
            try:
                return audio.packets.get_nowait()
            except queue.Empty:
                return None

        audio.wanted.set()
        return cls(audio.stream, queued, output, live=True)

    def copy_until(self, seconds: float | None) -> None:
        """Mux every audio packet that starts before ``seconds`` (None: all that are left)."""
        while True:
            packet = self._pending or self._next_packet()
            self._pending = None
            if packet is None:
                return
            if packet.dts is None:  # demuxer flush packet
                continue
            if seconds is not None and packet.pts is not None and float(packet.pts * self._tb) > seconds:
                self._pending = packet
                return
            if self._encoder is None:
                packet.stream = self._out_stream
                self._output.mux(packet)
            else:
                if self._samples is None:
                    # Stamped by the samples written from the first packet's time on.
                    self._samples = int(round(float((packet.pts or 0) * self._tb) * self._encoder.rate))
                for frame in self._decoder.decode(packet):
                    self._encode(frame)

    def _encode(self, frame: av.AudioFrame | None) -> None:
        """Resample and encode one decoded frame (None: flush), stamped by the samples written."""
        rate = self._encoder.rate
        if self._samples is None:  # nothing came to flush
            return
        for part in self._resampler.resample(frame):
            part.pts, part.time_base = self._samples, Fraction(1, rate)
            self._samples += part.samples
            for packet in self._encoder.encode(part):
                self._output.mux(packet)
        if frame is None:
            for packet in self._encoder.encode(None):
                self._output.mux(packet)

    def close(self) -> None:
        """Flush what the encoder holds (re-encoded audio) and release the input."""
        try:
            if self._encoder is not None:
                for frame in self._decoder.decode(None):
                    self._encode(frame)
                self._encode(None)
        finally:
            self._release()


class VideoSink(Sink):
    """H.264 (or VP9 for .webm) through PyAV to a file or a live URL, keeping source timestamps.

    Files are written under a ``.partial`` name and renamed when finished, so an output that
    looks complete always is; the sound of ``info.audio_path`` or ``info.live_audio`` goes with the
    pictures, to files and live URLs alike.
    """

    def __init__(self, target: str, info: SourceInfo, *, settings: EncoderSettings = EncoderSettings()) -> None:
        self.target = target
        self.live = target.startswith(tuple(STREAM_FORMATS))
        if self.live:
            fmt = next(f for scheme, f in STREAM_FORMATS.items() if target.startswith(scheme))
            codec = "libx264"
            self._final: Path | None = None
            open_target = target
        else:
            path = Path(target)
            if path.suffix.lower() not in VIDEO_CONTAINERS:
                raise SinkError(f"{target}: no known video container for extension {path.suffix or '(none)'!r}")
            _check_writable_dir(path.parent if str(path.parent) else Path("."), target)
            fmt, codec = VIDEO_CONTAINERS[path.suffix.lower()]
            self._final = path
            open_target = str(path.with_name(f"{path.stem}.partial{path.suffix}"))
            try:  # PyAV opens the file lazily; find out now, before any work is done
                open(open_target, "wb").close()
            except OSError as exc:
                raise SinkError(f"{target}: cannot write ({exc.strerror})") from exc
        self._open_target = open_target
        try:
            options = {"rtsp_transport": "tcp"} if fmt == "rtsp" else {}
            self._container = av.open(open_target, "w", format=fmt, options=options)
        except (av.error.FFmpegError, OSError) as exc:
            raise SinkError(f"{target}: cannot open for writing ({exc})") from exc
        rate = info.rate or Fraction(25)
        stream = self._container.add_stream(codec, rate=rate)
        # x264's yuv420p halves chroma resolution and so needs even sizes. An odd frame gets its last
        # column or row repeated: H.264 in full chroma (yuv444p, used until 2026-12-07) plays in
        # neither browsers nor phones.
        self._pad = (info.width % 2, info.height % 2) if codec == "libx264" else (0, 0)
        stream.width, stream.height = info.width + self._pad[0], info.height + self._pad[1]
        stream.pix_fmt = "yuv420p"
        if any(self._pad):
            logger.info("%s: odd frame size %dx%d written as %dx%d (an edge pixel repeated)", target,
                        info.width, info.height, stream.width, stream.height)
        # The muxer may pick its own stream time base when it writes the header; frames are
        # stamped in the source's time base, which the encoder keeps.
        self._time_base = info.time_base or 1 / rate
        stream.time_base = self._time_base
        stream.codec_context.time_base = self._time_base
        if codec == "libx264":
            opts = {"crf": str(settings.crf), "preset": settings.preset}
            if self.live:
                opts["tune"] = "zerolatency"
            stream.options = opts
        self._stream = stream
        self._audio: _AudioCopier | None = None
        if info.audio_path is not None:
            self._audio = _AudioCopier.of_file(info.audio_path, self._container)
        elif info.live_audio is not None:
            self._audio = _AudioCopier.of_live(info.live_audio, self._container)
        self.frames_written = 0
        self._last_seconds: float | None = None
        self._next_pts = 0

    def write(self, frame: Frame) -> None:
        image = frame.output if frame.output is not None else frame.image
        if any(self._pad):
            image = cv2.copyMakeBorder(image, 0, self._pad[1], 0, self._pad[0], cv2.BORDER_REPLICATE)
        # A copy, though it holds the GIL: a frame over the array itself (from_numpy_buffer) is only
        # safe if nothing reads it after encode() returns, which was not settled (2026-12-07).
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        if frame.pts is not None and frame.time_base == self._time_base:
            # Live frames are stamped by the wall clock in milliseconds; two decoded in the same
            # millisecond (a burst after a stall) would share a stamp, which the muxer refuses.
            vf.pts = max(frame.pts, self._next_pts)
        else:
            vf.pts = self._next_pts
        self._next_pts = vf.pts + 1
        vf.time_base = self._time_base
        try:
            if self._audio is not None and frame.seconds is not None:
                self._audio.copy_until(frame.seconds)
                self._last_seconds = frame.seconds
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
        except av.error.FFmpegError as exc:
            raise SinkError(f"{self.target}: cannot write frame {frame.index} ({exc})") from exc
        self.frames_written += 1

    def close(self, *, complete: bool = True) -> None:
        """Flush the encoder and write the trailer; with ``complete=False`` (interrupted run)
        audio is cut where the video stopped."""
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            if self._audio is not None:
                # A live source's sound is cut where its pictures end, as an interrupted file's.
                self._audio.copy_until(None if complete and not self._audio.live else self._last_seconds)
                self._audio.close()
            self._container.close()
        except av.error.FFmpegError as exc:
            raise SinkError(f"{self.target}: could not finish the output ({exc})") from exc
        if self._final is not None:
            if self.frames_written == 0:
                os.unlink(self._open_target)
                raise SinkError(f"{self.target}: no frame was written; no output left")
            os.replace(self._open_target, self._final)


class ImageSink(Sink):
    """Writes frames as images: into a directory (source names, or frame numbers for video)
    or to one image file (single-image input)."""

    def __init__(self, target: Path, info: SourceInfo) -> None:
        self.single = target.suffix.lower() in IMAGE_EXTENSIONS and not target.is_dir()
        if self.single:
            if info.frame_count != 1:
                raise SinkError(f"{target}: an image file can take one frame; the input has more (use a directory)")
            _check_writable_dir(target.parent if str(target.parent) else Path("."), str(target))
        else:
            if target.suffix:
                raise SinkError(f"{target}: no known container for extension {target.suffix!r}")
            target.mkdir(parents=True, exist_ok=True)
            _check_writable_dir(target, str(target))
        self.target = target
        self.frames_written = 0

    def write(self, frame: Frame) -> None:
        image = frame.output if frame.output is not None else frame.image
        if self.single:
            path = self.target
        else:
            path = self.target / (frame.file or f"{frame.index:06d}.png")
        # Write then rename, so an interrupted run never leaves a truncated image behind.
        tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise SinkError(f"{path}: cannot write image")
        os.replace(tmp, path)
        self.frames_written += 1


def encode_rle(mask: np.ndarray) -> dict[str, object]:
    """COCO RLE of a (H, W) bool mask: {"size": [h, w], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


class DetectionsSink(Sink):
    """One JSON line per frame: tracks with box, score, the mask as COCO RLE and whether the face
    was reconstructed ("filled")."""

    def __init__(self, path: Path) -> None:
        _check_writable_dir(path.parent if str(path.parent) else Path("."), str(path))
        self._file = open(path, "w", encoding="utf-8")

    def write(self, frame: Frame) -> None:
        faces = [
            {
                "track_id": t.track_id,
                "box": [round(float(v), 2) for v in t.box],
                "score": round(float(t.score), 4),
                "mask_rle": encode_rle(t.mask),
                "filled": t.track_id in frame.filled,
            }
            for t in frame.tracks
        ]
        record = {"frame": frame.index, "pts": frame.seconds, "file": frame.file, "faces": faces}
        self._file.write(json.dumps(record) + "\n")

    def close(self, *, complete: bool = True) -> None:
        self._file.close()


def draw_overlays(image: np.ndarray, frame: Frame) -> None:
    """Outline each tracked face's mask region and box with its id, in place (BGR or RGB)."""
    for t in frame.tracks:
        x1, y1, x2, y2 = (int(v) for v in t.box)
        contours, _ = cv2.findContours(t.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, (255, 0, 255), 1)
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 2)
        cv2.putText(image, f"#{t.track_id}", (x1, max(12, y1 - 5)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 0), 2)


class PreviewSink(Sink):
    """An OpenCV window; needs OpenCV built with GUI support (``opencv-python``)."""

    WINDOW = "unmask"

    def __init__(self, *, overlays: bool = True) -> None:
        try:
            cv2.namedWindow(self.WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError("--show needs OpenCV with GUI support (pip install opencv-python) and a display") from exc
        self.overlays = overlays
        self.closed_by_user = False
        self._shown: list[float] = []

    def write(self, frame: Frame) -> None:
        image = cv2.cvtColor(frame.output if frame.output is not None else frame.image, cv2.COLOR_RGB2BGR)
        if self.overlays:
            draw_overlays(image, frame)
            now = time.perf_counter()
            self._shown = [t for t in self._shown if now - t < 1.0] + [now]
            cv2.putText(image, f"{len(self._shown)} FPS", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 255), 2)
        cv2.imshow(self.WINDOW, image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.closed_by_user = True

    def close(self, *, complete: bool = True) -> None:
        cv2.destroyWindow(self.WINDOW)


def open_sink(target: str, info: SourceInfo, *, settings: EncoderSettings = EncoderSettings()) -> Sink:
    """A sink for ``target``: a stream URL, a video file, an image file or a directory."""
    if target.startswith(tuple(STREAM_FORMATS)):
        return VideoSink(target, info, settings=settings)
    path = Path(target)
    if path.suffix.lower() in VIDEO_CONTAINERS:
        return VideoSink(target, info, settings=settings)
    return ImageSink(path, info)
