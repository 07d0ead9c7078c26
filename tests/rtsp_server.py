"""A real RTSP server on loopback for tests, run as a child process.

The server (``tests/gst_rtsp_serve.py``) needs the system python with PyGObject and
the GStreamer RTSP server (``.ci/install-rtsp-server.sh``); tests should skip when
:func:`rtsp_server_available` is False.

    with RtspTestServer(width=320, height=240, fps=25) as server:
        container = av.open(server.url, options={"rtsp_transport": "tcp"}, timeout=5)
        ...
        server.restart(down_seconds=1.0)   # same URL afterwards
"""
import functools
import logging
import selectors
import socket
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

SYSTEM_PYTHON = "/usr/bin/python3"
SERVE_SCRIPT = Path(__file__).resolve().with_name("gst_rtsp_serve.py")
HOST = "127.0.0.1"


class RtspServerError(RuntimeError):
    """The RTSP server process failed to start or to report readiness in time."""


@functools.lru_cache(maxsize=1)
def rtsp_server_available() -> bool:
    """True when the system python can build the served pipeline (gi, GstRtspServer, plugins)."""
    if not Path(SYSTEM_PYTHON).is_file():
        return False
    try:
        result = subprocess.run(
            [SYSTEM_PYTHON, str(SERVE_SCRIPT), "--check"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class RtspTestServer:
    """Context manager running ``gst_rtsp_serve.py`` on ``rtsp://127.0.0.1:PORT/MOUNT``.

    The stream is a live H.264 test pattern of ``width`` x ``height`` at ``fps``, or the video
    ``file`` scaled to that size and paced at that rate; with ``audio`` ("opus", "pcma") a live
    tone beside it. The port
    is fixed at construction (a free one is picked when ``port`` is None), so the URL stays
    valid across :meth:`restart`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        mount: str = "/test",
        width: int = 320,
        height: int = 240,
        fps: int = 25,
        file: str | Path | None = None,
        audio: str | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if not mount.startswith("/"):
            raise ValueError(f"mount must start with '/', got {mount!r}")
        self.port = free_loopback_port() if port is None else port
        self.mount = mount
        self.width = width
        self.height = height
        self.fps = fps
        self.file = None if file is None else Path(file).resolve()
        self.audio = audio
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://{HOST}:{self.port}{self.mount}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Launch the server and block until it listens; raise RtspServerError otherwise."""
        if self.running:
            raise RtspServerError(f"server already running on {self.url}")
        command = [
            SYSTEM_PYTHON,
            str(SERVE_SCRIPT),
            f"--port={self.port}",
            f"--mount={self.mount}",
            f"--width={self.width}",
            f"--height={self.height}",
            f"--fps={self.fps}",
        ]
        if self.file is not None:
            command.append(f"--file={self.file}")
        if self.audio is not None:
            command.append(f"--audio={self.audio}")
        # stderr is inherited so GStreamer diagnostics land in the test's captured output;
        # stdout carries only the single READY line, so the pipe can never fill up.
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        logger.info("RTSP test server ready on %s (pid %d)", self.url, self._process.pid)

    def _wait_ready(self) -> None:
        process = self._process
        deadline = time.monotonic() + self.start_timeout
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RtspServerError(
                        f"RTSP server did not become ready within {self.start_timeout} s"
                    )
                if selector.select(timeout=remaining):
                    line = process.stdout.readline()
                    if line.startswith("READY "):
                        break
                    if not line:
                        code = process.wait(timeout=self.stop_timeout)
                        raise RtspServerError(f"RTSP server exited with code {code} before ready")
        # The READY line is printed after the listening socket exists, so this connect
        # only guards against a server that reported readiness for another address.
        with socket.create_connection((HOST, self.port), timeout=self.start_timeout):
            pass

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``stop_timeout``); idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning("RTSP server pid %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
        process.stdout.close()

    def restart(self, down_seconds: float = 1.0) -> None:
        """Stop the server, stay down for ``down_seconds``, start again on the same URL."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def __enter__(self) -> "RtspTestServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
