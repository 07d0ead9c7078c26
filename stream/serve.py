"""Serve: a local web page where the browser is one more source and sink of the same pipeline.

    browser camera ──WebRTC──▶ BrowserSource ─▶ detect ─▶ track ─▶ inpaint ─▶ BrowserSink ──WebRTC──▶ page
    --input (file, RTSP, webcam) ─▶ one shared pipeline ─▶ BrowserSink ─▶ every viewer's track

Each browser camera gets its own pipeline (its own tracks and references); a server-side input
has one pipeline whatever the number of viewers, started with the first and stopped when the
last one leaves. The stages, models and settings are the file pipeline's (``build``). Frames
stay in memory; nothing is written to disk.

Routes: ``GET /`` (the page), ``GET /app.js``, ``POST /offer`` (a WebRTC offer; the answer comes
back with a session id), ``POST /control`` (smoothing on/off, "use this frame as my reference"),
``GET /status`` (viewers and pipelines running, as JSON).
Bound to loopback unless a host is given; on any other address every request needs the access
token printed in the URL (403 without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from stream.pipeline import Pipeline
from stream.records import Frame
from stream.reference import ReferenceError
from stream.sink import Sink, SinkError
from stream.source import Source, SourceInfo
from stream.stages import InpaintStage, TrackStage

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
# WebRTC video is stamped at 90 kHz.
RTP_TIME_BASE = Fraction(1, 90000)


class ServeError(SinkError):
    """The web page cannot be served (bad address, port in use): the browser is a sink that
    could not be opened."""


@dataclass(frozen=True)
class ServeAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ServeAddress:
        """``PORT`` or ``HOST:PORT`` (``[v6]:PORT`` for IPv6); the host defaults to loopback."""
        host, sep, port = text.rpartition(":")
        host = host.strip("[]") if sep else "127.0.0.1"
        try:
            number = int(port)
        except ValueError:
            raise ServeError(f"--serve: expected [HOST:]PORT, got {text!r}") from None
        if not 0 <= number <= 65535:
            raise ServeError(f"--serve: port must be 0-65535, got {number}")
        return cls(host or "127.0.0.1", number)

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


# The page stamps every frame it sends along the bottom-left edge: 16 black/white blocks (its
# capture time, read back by the page for the latency readout), then two grey blocks whose levels
# tell how the browser turned the picture into video (see BrowserSource).
STAMP_BLOCK = 16
CALIBRATION = ((16, 64), (17, 192))  # (block index, grey level drawn)
CALIBRATION_FRAMES = 10


def _calibration_spread(image: np.ndarray) -> float | None:
    """Difference of the two grey calibration blocks as received; None where they are not there."""
    h = image.shape[0]
    levels = []
    for index, drawn in CALIBRATION:
        x0 = index * STAMP_BLOCK
        block = image[h - STAMP_BLOCK + 4:h - 4, x0 + 4:x0 + STAMP_BLOCK - 4]
        if block.size == 0 or block.std() > 8 or abs(float(block.mean()) - drawn) > 40:
            return None
        levels.append(float(block.mean()))
    return levels[1] - levels[0]


class BrowserSource(Source):
    """Frames of a browser's WebRTC video track, handed over by the event loop (``push``).

    Live: when the pipeline is busy the older waiting frame is dropped. Every frame is scaled to
    the first frame's size, since the browser may change resolution under load and the tracker's
    masks are full-frame.

    ``stamped``: the frames carry the page's calibration blocks. Chromium encodes a canvas
    capture in full-range YUV while VP8 cannot say so, and the frames then arrive brighter and
    harsher than the camera saw them; the grey blocks show it (their spread grows by 255/219) and
    the frames are decoded as full range from then on."""

    def __init__(self, width: int, height: int, *, stamped: bool = False, rate: float = 30.0) -> None:
        self.info = SourceInfo(width=width, height=height, rate=Fraction(rate).limit_denominator(1000),
                               time_base=RTP_TIME_BASE, frame_count=None, live=True)
        self._frames: queue.Queue = queue.Queue(maxsize=1)
        self._ended = threading.Event()
        self._votes: list[bool] = [] if stamped else [False] * CALIBRATION_FRAMES
        self._range: dict[str, object] = {}
        self.latest: np.ndarray | None = None
        self.dropped = 0

    def push(self, frame: av.VideoFrame) -> None:
        while True:
            try:
                self._frames.put_nowait(frame)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._frames.get_nowait()
                    self.dropped += 1

    def end(self) -> None:
        self._ended.set()

    def _to_rgb(self, vf: av.VideoFrame) -> np.ndarray:
        image = vf.to_ndarray(width=self.info.width, height=self.info.height, format="rgb24", **self._range)
        if len(self._votes) < CALIBRATION_FRAMES:
            spread = _calibration_spread(image)
            if spread is not None:
                # Drawn 128 apart; limited range read as such keeps that, full range read as
                # limited stretches it to 149.
                self._votes.append(spread > 138.0)
                if len(self._votes) == CALIBRATION_FRAMES and sum(self._votes) > CALIBRATION_FRAMES // 2:
                    logger.info("the browser sends full-range video: decoding it as such")
                    self._range = {"src_color_range": ColorRange.JPEG}
                    image = vf.to_ndarray(width=self.info.width, height=self.info.height, format="rgb24",
                                          **self._range)
        return image

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while not self._ended.is_set():
            try:
                vf = self._frames.get(timeout=0.1)
            except queue.Empty:
                continue
            image = self.latest = self._to_rgb(vf)
            yield Frame(index=index, image=image, pts=vf.pts, time_base=vf.time_base)
            index += 1

    def close(self) -> None:
        self._ended.set()


class OutputTrack(MediaStreamTrack):
    """A WebRTC video track fed from the pipeline's thread; the newest frame wins."""

    kind = "video"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._frames: asyncio.Queue = asyncio.Queue(maxsize=1)

    def offer(self, frame: av.VideoFrame | None) -> None:
        """From any thread: the next frame to send (None: the stream has ended)."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody listens
            self._loop.call_soon_threadsafe(self._put, frame)

    def _put(self, frame: av.VideoFrame | None) -> None:
        if self._frames.full():
            self._frames.get_nowait()
        self._frames.put_nowait(frame)

    async def recv(self) -> av.VideoFrame:
        frame = await self._frames.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame


class BrowserSink(Sink):
    """Sends each output frame to every attached ``OutputTrack``."""

    def __init__(self) -> None:
        self._tracks: set[OutputTrack] = set()
        self._lock = threading.Lock()
        self._start: float | None = None

    def attach(self, track: OutputTrack) -> None:
        with self._lock:
            self._tracks.add(track)

    def detach(self, track: OutputTrack) -> int:
        """Returns how many tracks are left."""
        with self._lock:
            self._tracks.discard(track)
            return len(self._tracks)

    def write(self, frame: Frame) -> None:
        image = np.ascontiguousarray(frame.output if frame.output is not None else frame.image)
        if frame.pts is not None and frame.time_base is not None:
            pts, time_base = frame.pts, frame.time_base
        else:
            # Still images and sources without timestamps: stamp by the wall clock.
            self._start = self._start or time.monotonic()
            pts, time_base = int((time.monotonic() - self._start) / RTP_TIME_BASE), RTP_TIME_BASE
        with self._lock:
            tracks = list(self._tracks)
        for track in tracks:
            # One frame object per track: each track's encoder runs in its own thread, and a
            # PyAV frame's converter must not be used by two threads at once (it hangs).
            vf = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            vf.pts, vf.time_base = pts, time_base
            track.offer(vf)

    def close(self, *, complete: bool = True) -> None:
        with self._lock:
            tracks = list(self._tracks)
        for track in tracks:
            track.offer(None)


class Running:
    """One pipeline in a thread of its own, with the handles the page's controls need."""

    def __init__(self, pipeline: Pipeline, on_end: Callable[[BaseException | None], None]) -> None:
        self.pipeline = pipeline
        self._on_end = on_end
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self.pipeline.run()
        except BaseException as exc:  # noqa: BLE001 - logged and reported to the session
            error = exc
            logger.error("pipeline stopped: %s", exc)
        self._on_end(error)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self.pipeline.stop()
        self._thread.join(timeout)

    def set_smoothing(self, enabled: bool) -> None:
        """Temporal smoothing on or off from the next frame on (the stages read it per frame)."""
        for stage in self.pipeline.stages:
            if isinstance(stage, TrackStage):
                stage.tracker.temporal = dataclasses.replace(stage.tracker.temporal, enabled=enabled)
            if isinstance(stage, InpaintStage):
                stage.inpainter.temporal = dataclasses.replace(stage.inpainter.temporal, enabled=enabled)

    def use_reference(self, image: np.ndarray, make_reference: Callable[[np.ndarray], object]) -> None:
        """Make the face in ``image`` every track's reference (raises ReferenceError without one)."""
        reference = make_reference(image)
        for stage in self.pipeline.stages:
            if isinstance(stage, InpaintStage) and stage.inpainter.references is not None:
                stage.inpainter.references.prefer(reference)


# build(source, sinks) -> Pipeline: the file pipeline's stages, models and settings around them.
BuildPipeline = Callable[[Source, list[Sink]], Pipeline]


class Session:
    """One viewer: a peer connection, the track it is sent, and what it watches."""

    def __init__(self, session_id: str, pc: RTCPeerConnection, output: OutputTrack) -> None:
        self.id = session_id
        self.pc = pc
        self.output = output
        self.camera: BrowserSource | None = None
        self.running: Running | None = None


class WebApp:
    """The aiohttp application; see the module docstring."""

    def __init__(self, *, build: BuildPipeline, make_reference: Callable[[np.ndarray], object],
                 open_input: Callable[[], Source] | None = None, token: str | None = None) -> None:
        self.build = build
        self.make_reference = make_reference
        self.open_input = open_input
        self.token = token
        self.sessions: dict[str, Session] = {}
        self._shared: Running | None = None
        self._shared_sink: BrowserSink | None = None
        self.app = web.Application(middlewares=[self._check_token], client_max_size=1 << 20)
        self.app.router.add_get("/", self._page)
        self.app.router.add_get("/app.js", self._script)
        self.app.router.add_post("/offer", self._offer)
        self.app.router.add_post("/control", self._control)
        self.app.router.add_get("/status", self._status)
        self.app.on_shutdown.append(self._shutdown)

    @web.middleware
    async def _check_token(self, request: web.Request, handler):
        if self.token is not None and not hmac.compare_digest(request.query.get("token", ""), self.token):
            logger.warning("refused %s %s from %s: no valid token", request.method, request.path, request.remote)
            raise web.HTTPForbidden(text="a valid ?token= is required\n")
        return await handler(request)

    async def _page(self, request: web.Request) -> web.Response:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        html = html.replace("{{HAS_INPUT}}", "true" if self.open_input is not None else "false")
        html = html.replace("{{SCRIPT}}", "app.js" + (f"?token={self.token}" if self.token else ""))
        return web.Response(text=html, content_type="text/html")

    async def _script(self, request: web.Request) -> web.Response:
        return web.Response(text=(STATIC / "app.js").read_text(encoding="utf-8"), content_type="application/javascript")

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            offer = RTCSessionDescription(sdp=str(body["sdp"]), type=str(body["type"]))
            watch = str(body.get("source", "camera"))
            stamped = bool(body.get("stamped", False))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return _bad_request(f"malformed offer: {type(exc).__name__} {exc}".strip())
        if offer.type != "offer":
            return _bad_request(f"expected an SDP offer, got type {offer.type!r}")
        if watch not in ("camera", "input"):
            return _bad_request(f"source must be 'camera' or 'input', got {watch!r}")
        if watch == "input" and self.open_input is None:
            return _bad_request("this server was started without --input")
        pc = RTCPeerConnection()
        session = Session(secrets.token_hex(8), pc, OutputTrack(asyncio.get_running_loop()))
        self.sessions[session.id] = session

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._close_session(session)

        if watch == "camera":
            @pc.on("track")
            def _track(track: MediaStreamTrack) -> None:
                if track.kind == "video":
                    asyncio.ensure_future(self._feed_camera(session, track, stamped=stamped))

        try:
            await pc.setRemoteDescription(offer)
            pc.addTrack(session.output)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds on a bad SDP
            await self._close_session(session)
            return _bad_request(f"cannot use this offer: {exc}")
        if watch == "input":
            await asyncio.get_running_loop().run_in_executor(None, self._watch_input, session.output)
        logger.info("session %s: %s from %s", session.id, watch, request.remote)
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                                  "session": session.id})

    async def _feed_camera(self, session: Session, track: MediaStreamTrack, *, stamped: bool) -> None:
        """Browser camera frames into this session's own pipeline, started on the first frame
        (only then is the camera's size known)."""
        try:
            first = await track.recv()
            camera = session.camera = BrowserSource(first.width, first.height, stamped=stamped)
            sink = BrowserSink()
            sink.attach(session.output)
            session.running = Running(self.build(camera, [sink]), lambda error: camera.end())
            camera.push(first)
            while True:
                camera.push(await track.recv())
        except MediaStreamError:
            logger.info("session %s: the camera track ended", session.id)
        finally:
            if session.camera is not None:
                session.camera.end()
                logger.info("session %s: %d camera frames dropped while the pipeline was busy", session.id,
                            session.camera.dropped)

    def _watch_input(self, output: OutputTrack) -> None:
        if self._shared is None or not self._shared.alive:
            sink = BrowserSink()
            source = self.open_input()

            def ended(error: BaseException | None) -> None:
                sink.close()

            self._shared_sink = sink
            sink.attach(output)
            self._shared = Running(self.build(source, [sink]), ended)
        else:
            self._shared_sink.attach(output)

    async def _close_session(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        loop = asyncio.get_running_loop()
        if session.running is not None:
            await loop.run_in_executor(None, session.running.stop)
        if self._shared_sink is not None and self._shared is not None and self._shared_sink.detach(session.output) == 0:
            shared, self._shared, self._shared_sink = self._shared, None, None
            await loop.run_in_executor(None, shared.stop)
        await session.pc.close()
        logger.info("session %s closed", session.id)

    def pipelines(self) -> int:
        """Pipelines running now: one per browser camera, one for the input whatever its viewers."""
        cameras = sum(1 for s in self.sessions.values() if s.running is not None and s.running.alive)
        return cameras + int(self._shared is not None and self._shared.alive)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"sessions": len(self.sessions), "pipelines": self.pipelines()})

    async def _control(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            session = self.sessions[str(body["session"])]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            return _bad_request(f"malformed control: {type(exc).__name__} {exc}".strip())
        running = session.running or self._shared
        if running is None:
            return _bad_request("nothing is running in this session yet")
        if "smoothing" in body:
            running.set_smoothing(bool(body["smoothing"]))
        if body.get("reference"):
            if session.camera is None or session.camera.latest is None:
                return _bad_request("the reference comes from your camera: start it first")
            try:
                running.use_reference(session.camera.latest, self.make_reference)
            except ReferenceError as exc:
                return _bad_request(str(exc))
        return web.json_response({"ok": True})

    async def _shutdown(self, app: web.Application) -> None:
        for session in list(self.sessions.values()):
            await self._close_session(session)


def _bad_request(reason: str) -> web.Response:
    logger.warning("bad request: %s", reason)
    return web.Response(status=400, text=reason.splitlines()[0] + "\n")


def access_token(address: ServeAddress) -> str | None:
    """A random token when the app is reachable from other machines; none on loopback."""
    return None if address.loopback else secrets.token_urlsafe(16)


async def serve(webapp: WebApp, address: ServeAddress, *, ready: Callable[[str], None],
                stop: asyncio.Event | None = None) -> None:
    """Run ``webapp`` on ``address`` until ``stop`` is set (or the task is cancelled). ``ready``
    gets the page's URL (with the token) once the socket listens."""
    runner = web.AppRunner(webapp.app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, address.host, address.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ServeError(f"cannot listen on {address.host}:{address.port}: {exc.strerror or exc}") from exc
    port = runner.addresses[0][1]
    host = "127.0.0.1" if address.host in ("0.0.0.0", "::") else address.host
    shown = f"[{host}]" if ":" in host else host
    ready(f"http://{shown}:{port}/" + (f"?token={webapp.token}" if webapp.token else ""))
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
