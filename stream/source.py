"""Sources: video files, network streams, webcams and still images, decoded to RGB frames."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from stream.records import Frame

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "udp://", "srt://", "tcp://")
URL_SCHEMES = LIVE_SCHEMES + ("http://", "https://")

# Live streams are stamped with wall-clock time: their own timestamps restart on reconnect.
LIVE_TIME_BASE = Fraction(1, 1000)


class SourceError(RuntimeError):
    """The input cannot be opened or read."""


@dataclass(frozen=True)
class LiveAudio:
    """The sound of a live source, handed to file sinks beside its frames (which may be dropped;
    the sound is not). stream: the input's audio stream, which the output's is made like;
    packets: its packets as they arrive, stamped (pts and dts in ``stream.time_base``) on the
    frames' clock, so a packet and a frame of the same moment carry the same time."""

    stream: av.AudioStream
    packets: queue.SimpleQueue
    # Set by the sink that takes the packets: with none (re-streaming, a preview, the web page)
    # nothing is queued, or a long live run would hoard every packet.
    wanted: threading.Event = dataclasses.field(default_factory=threading.Event)


@dataclass(frozen=True)
class SourceInfo:
    """What the sinks need to know about the input.

    rate: nominal frames per second (None for still images).
    frame_count: frames expected, when the container says (None when unknown or live).
    audio_path: a file, or the URL of a recorded video, whose audio stream is copied to the output
        (None when there is none, or the source is live).
    live_audio: a live source's sound (None when it has none).
    """

    width: int
    height: int
    rate: Fraction | None
    time_base: Fraction | None
    frame_count: int | None
    live: bool
    audio_path: Path | str | None = None
    live_audio: LiveAudio | None = None


class Source(abc.ABC):
    """An iterable of frames. ``live`` sources may have frames dropped downstream."""

    info: SourceInfo
    corrupt_frames: int = 0

    @property
    def live(self) -> bool:
        return self.info.live

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None:
        """Release the device or connection; safe to call twice and from another thread."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _HandleGuard:
    """Releases a source's FFmpeg or V4L2 handle once, on a thread that is not reading it.

    Closing a container while another thread is inside FFmpeg's decoder crashes the process, so
    ``close`` from another thread only marks the source closed and the reading thread releases
    the handle when it leaves ``reading()``. Every read is bounded (network reads by the read
    timeout, file and camera reads by nature), so the reader does leave.
    """

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._readers = 0
        self._released = False
        self.closed = threading.Event()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._lock:
            self._readers += 1
        try:
            yield
        finally:
            with self._lock:
                self._readers -= 1
                if self.closed.is_set() and self._readers == 0:
                    self._release_once()

    def close(self) -> None:
        with self._lock:
            self.closed.set()
            if self._readers == 0:
                self._release_once()

    def _release_once(self) -> None:
        if not self._released:
            self._released = True
            self._release()


def _first_video_stream(container: av.container.InputContainer, name: str) -> av.VideoStream:
    if not container.streams.video:
        raise SourceError(f"{name}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _quarter_turns(path: Path) -> int:
    """Counter-clockwise quarter turns that bring the pictures of the video at ``path`` upright:
    its display matrix's rotation (phones store a portrait video as landscape pictures and a
    rotation to show them by). PyAV reads the matrix off decoded frames, so the first is decoded."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            first = next(container.decode(video=0), None)
    except (av.error.FFmpegError, UnicodeDecodeError):
        return 0
    degrees = 0 if first is None else first.rotation
    if degrees % 90:
        logger.warning("%s: display rotation of %s degrees is not a quarter turn; shown as stored", path, degrees)
        return 0
    return (degrees // 90) % 4


class VideoFileSource(Source):
    """A video file decoded with PyAV; every frame is kept, corrupt ones are skipped and counted.
    Pictures stored turned (a display rotation) are turned upright: faces are found and filled
    upright, and the output, which carries no rotation, shows them as the input did."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise SourceError(f"{path}: no such file")
        if path.is_dir():
            raise SourceError(f"{path}: is a directory with no images")
        try:
            self._container = av.open(str(path), metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError) as exc:
            raise SourceError(f"{path}: not a readable video ({exc.__class__.__name__})") from exc
        stream = _first_video_stream(self._container, str(path))
        if stream.codec_context.width <= 0:
            self._container.close()
            raise SourceError(f"{path}: video stream has no frame size (corrupt header?)")
        self._stream = stream
        self._path = path
        self._guard = _HandleGuard(self._container.close)
        self._turns = _quarter_turns(path)
        if self._turns:
            logger.info("%s: stored turned by %d degrees; read upright", path, 90 * self._turns)
        width, height = stream.codec_context.width, stream.codec_context.height
        if self._turns % 2:
            width, height = height, width
        has_audio = bool(self._container.streams.audio)
        self.info = SourceInfo(
            width=width,
            height=height,
            rate=stream.average_rate or stream.guessed_rate,
            time_base=stream.time_base,
            frame_count=stream.frames or None,
            live=False,
            audio_path=path if has_audio else None,
        )

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        rate = self.info.rate or Fraction(25)
        tb = self.info.time_base
        with self._guard.reading():
            yield from self._decode(index, rate, tb)

    def _decode(self, index: int, rate: Fraction, tb: Fraction) -> Iterator[Frame]:
        try:
            for packet in self._container.demux(self._stream):
                if self._guard.closed.is_set():
                    return
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:
                    # One damaged packet must not cost the rest of the video.
                    self.corrupt_frames += 1
                    logger.warning("%s: skipped a corrupt packet at pts %s (%s)", self._path, packet.pts, exc)
                    continue
                for vf in decoded:
                    # The decoder still needs damaged data for its references; the damaged
                    # picture itself is not worth showing.
                    if packet.is_corrupt or vf.is_corrupt:
                        self.corrupt_frames += 1
                        logger.warning("%s: skipped a corrupt frame at pts %s", self._path, vf.pts)
                        continue
                    pts = vf.pts if vf.pts is not None else int(index / rate / tb)
                    image = vf.to_ndarray(format="rgb24")
                    if self._turns:
                        image = np.ascontiguousarray(np.rot90(image, self._turns))
                    yield Frame(index=index, image=image, pts=pts, time_base=tb)
                    index += 1
        except av.error.FFmpegError as exc:
            # Demuxing failures mean the rest of the file is unreadable (truncated data).
            self.corrupt_frames += 1
            logger.warning("%s: stopped reading after %d frames: %s", self._path, index, exc)

    def close(self) -> None:
        self._guard.close()


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a network source retries.

    open_timeout: seconds to keep trying before the first frame arrives.
    give_up_after: seconds without a frame, once streaming, before the source ends with an error.
    backoff: first wait between attempts, doubled each time up to max_backoff.
    read_timeout: seconds a blocked read may wait before the connection counts as dropped.
    """

    open_timeout: float = 10.0
    give_up_after: float = 30.0
    backoff: float = 0.5
    max_backoff: float = 5.0
    read_timeout: float = 5.0


class NetworkSource(Source):
    """RTSP/RTMP/UDP/HTTP/HLS through PyAV, reconnecting with backoff when the stream drops."""

    def __init__(self, url: str, *, policy: ReconnectPolicy = ReconnectPolicy()) -> None:
        self.url = url
        self.policy = policy
        self._container: av.container.InputContainer | None = None
        self._guard = _HandleGuard(self._close_container)
        self._closed = self._guard.closed
        self.reconnects = 0
        self._live = url.startswith(LIVE_SCHEMES)
        container = self._open_with_retry(deadline=time.monotonic() + policy.open_timeout, first=True)
        stream = container.streams.video[0]
        self._audio = (LiveAudio(container.streams.audio[0], queue.SimpleQueue())
                       if self._live and container.streams.audio else None)
        self._last_audio: int | None = None
        self.info = SourceInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            rate=stream.average_rate or stream.guessed_rate or Fraction(30),
            time_base=LIVE_TIME_BASE if self._live else stream.time_base,
            frame_count=None,
            live=self._live,
            # A recorded video over HTTP or HLS keeps its sound, as a file does.
            audio_path=url if not self._live and container.streams.audio else None,
            live_audio=self._audio,
        )

    def _options(self) -> dict[str, str]:
        if self.url.startswith(("rtsp://", "rtsps://")):
            return {"rtsp_transport": "tcp", "fflags": "nobuffer", "flags": "low_delay", "max_delay": "500000"}
        if self.url.startswith(("http://", "https://")):
            return {"reconnect": "1", "reconnect_streamed": "1"}
        return {"fflags": "nobuffer", "flags": "low_delay"}

    def _open(self) -> av.container.InputContainer:
        container = av.open(
            self.url, options=self._options(), timeout=(self.policy.open_timeout, self.policy.read_timeout)
        )
        _first_video_stream(container, self.url)
        return container

    def _open_with_retry(self, *, deadline: float, first: bool) -> av.container.InputContainer:
        wait = self.policy.backoff
        while True:
            try:
                self._container = self._open()
                return self._container
            except (av.error.FFmpegError, OSError, SourceError) as exc:
                if self._closed.is_set():
                    raise SourceError(f"{self.url}: closed while connecting") from exc
                if time.monotonic() + wait > deadline:
                    verb = "cannot open" if first else "lost and could not reconnect to"
                    raise SourceError(f"{self.url}: {verb} the stream ({exc})") from exc
                logger.warning("%s: %s; retrying in %.1f s", self.url, exc, wait)
                if self._closed.wait(wait):
                    raise SourceError(f"{self.url}: closed while connecting") from exc
                wait = min(wait * 2, self.policy.max_backoff)

    def __iter__(self) -> Iterator[Frame]:
        with self._guard.reading():
            yield from self._read_with_reconnect()

    def _read_with_reconnect(self) -> Iterator[Frame]:
        index = 0
        start = time.monotonic()
        while not self._closed.is_set():
            container = self._container
            try:
                assert container is not None
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                audio = container.streams.audio[0] if self._audio is not None and container.streams.audio else None
                offset = None  # the frames' clock less the sound's own, set by this connection's first packet
                for packet in container.demux(stream, *([audio] if audio is not None else [])):
                    if self._closed.is_set():
                        return
                    if audio is not None and packet.stream.index == audio.index:
                        if packet.pts is not None and self._audio.wanted.is_set():
                            offset = self._queue_audio(packet, time.monotonic() - start, offset)
                        continue
                    for vf in packet.decode():
                        if self._live:
                            pts, tb = int((time.monotonic() - start) / LIVE_TIME_BASE), LIVE_TIME_BASE
                        else:
                            pts, tb = vf.pts, stream.time_base
                        yield Frame(index=index, image=vf.to_ndarray(format="rgb24"), pts=pts, time_base=tb)
                        index += 1
                if not self._live:
                    return
                logger.warning("%s: stream ended; reconnecting", self.url)
            except av.error.FFmpegError as exc:
                if self._closed.is_set():
                    return
                logger.warning("%s: stream dropped (%s); reconnecting", self.url, exc)
            self._close_container()
            self.reconnects += 1
            self._open_with_retry(deadline=time.monotonic() + self.policy.give_up_after, first=False)

    def _queue_audio(self, packet: av.Packet, now: float, offset: float | None) -> float:
        """Stamps a live audio packet on the frames' clock (``now``: seconds since reading began)
        and queues it for the sinks; returns the offset to stamp the connection's next ones by.
        The sound keeps its own pace (stamped by arrival, it would stutter with the network); the
        offset is fixed at the first packet of each connection, and a packet that would go back
        in time across a reconnect is dropped."""
        seconds = float(packet.pts * packet.time_base)
        if offset is None:
            offset = now - seconds
        stamp = int(round((seconds + offset) / packet.time_base))
        if self._last_audio is not None and stamp <= self._last_audio:
            return offset
        self._last_audio = stamp
        packet.pts = packet.dts = stamp
        self._audio.packets.put(packet)
        return offset

    def _close_container(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except av.error.FFmpegError:
                pass

    def close(self) -> None:
        self._guard.close()


class WebcamSource(Source):
    """A local camera through OpenCV (V4L2 on Linux): ``0`` or ``/dev/video0``."""

    def __init__(self, device: int | str, *, width: int | None = None, height: int | None = None) -> None:
        self._capture = cv2.VideoCapture(device)
        if not self._capture.isOpened():
            raise SourceError(f"webcam {device}: cannot open (no such device or it is busy)")
        if width and height:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        ok, first = self._capture.read()
        if not ok:
            self._capture.release()
            raise SourceError(f"webcam {device}: opened but delivers no frames")
        self._first = first
        self._device = device
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.info = SourceInfo(
            width=first.shape[1],
            height=first.shape[0],
            rate=Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(30),
            time_base=LIVE_TIME_BASE,
            frame_count=None,
            live=True,
        )
        self._guard = _HandleGuard(self._capture.release)
        self._closed = self._guard.closed

    def __iter__(self) -> Iterator[Frame]:
        with self._guard.reading():
            yield from self._read()

    def _read(self) -> Iterator[Frame]:
        start = time.monotonic()
        index = 0
        bgr: np.ndarray | None = self._first
        while not self._closed.is_set():
            if bgr is None:
                ok, bgr = self._capture.read()
                if not ok:
                    raise SourceError(f"webcam {self._device}: stopped delivering frames")
            pts = int((time.monotonic() - start) / LIVE_TIME_BASE)
            yield Frame(index=index, image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), pts=pts, time_base=LIVE_TIME_BASE)
            index += 1
            bgr = None

    def close(self) -> None:
        self._guard.close()


class ImageSource(Source):
    """One image or every image in a directory (sorted by name); never drops a frame."""

    def __init__(self, path: Path, *, also_read: frozenset[str] = frozenset()) -> None:
        """``also_read``: extensions of the directory's files that are read elsewhere (its
        videos), so not reported as left out."""
        if path.is_dir():
            entries = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
            files = sorted(p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS)
            # A phone's HEIC photos, say, which OpenCV cannot read: told, not silently passed over.
            left = sorted({p.suffix.lower() or p.name for p in entries
                           if p.suffix.lower() not in IMAGE_EXTENSIONS | also_read})
            if not files:
                raise SourceError(f"{path}: directory has no images it can read ({' '.join(sorted(IMAGE_EXTENSIONS))})"
                                  + (f"; found {' '.join(left)}" if left else ""))
            if left:
                logger.warning("%s: left out files of other types (%s); images read: %s", path, " ".join(left),
                               " ".join(sorted(IMAGE_EXTENSIONS)))
        elif path.exists():
            files = [path]
        else:
            raise SourceError(f"{path}: no such file")
        self.files = files
        first = self._read(files[0])
        self.info = SourceInfo(
            width=first.shape[1], height=first.shape[0], rate=None, time_base=None,
            frame_count=len(files), live=False,
        )

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SourceError(f"{path}: not a readable image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.files):
            try:
                image = self._read(path)
            except SourceError as exc:
                self.corrupt_frames += 1
                logger.warning("%s; skipped", exc)
                continue
            # Photos are unrelated to each other: nothing a photo's faces left behind (tracks,
            # reconstructions, references) may be carried onto the next one.
            yield Frame(index=index, image=image, file=path.name, scene_cut=True)


_WEBCAM_PATH = re.compile(r"^/dev/video\d+$")


class PacedSource(Source):
    """A recording played at its own frame rate, as a camera would deliver it (live): for
    watching a file on the web page, and for measuring live latency on a recording.

    ``open`` opens the recording; with ``loop`` it is opened again at its end, frame indices and
    timestamps running on, until ``close``."""

    def __init__(self, open: Callable[[], Source], *, loop: bool = False) -> None:
        self._open = open
        self._loop = loop
        self._current = open()
        self._closed = threading.Event()
        self.info = dataclasses.replace(self._current.info, live=True, audio_path=None, frame_count=None)
        self._rate = float(self.info.rate) if self.info.rate else 25.0

    @property
    def corrupt_frames(self) -> int:
        return self._current.corrupt_frames

    def __iter__(self) -> Iterator[Frame]:
        start, n = time.monotonic(), 0
        while not self._closed.is_set():
            cycle_start = n
            for frame in self._current:
                due = start + n / self._rate
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                tb = frame.time_base or self.info.time_base
                yield dataclasses.replace(frame, index=n, pts=round(n / self._rate / tb) if tb else None, time_base=tb)
                n += 1
            if not self._loop or self._closed.is_set() or n == cycle_start:
                return
            self._current.close()
            self._current = self._open()

    def close(self) -> None:
        self._closed.set()
        self._current.close()


def open_source(spec: str, *, policy: ReconnectPolicy = ReconnectPolicy()) -> Source:
    """Open ``spec``: a camera index, /dev/videoN, a stream URL, an image, a directory or a video."""
    if spec.isdigit():
        return WebcamSource(int(spec))
    if _WEBCAM_PATH.match(spec):
        return WebcamSource(spec)
    if spec.startswith(URL_SCHEMES):
        return NetworkSource(spec, policy=policy)
    path = Path(spec)
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource(path)
    return VideoFileSource(path)
