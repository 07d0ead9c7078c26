"""The web page (``run_stream.py --serve``) in a real headless Chromium with a fake camera that
plays the sample masked clip, and its HTTP edges (token, bad requests, a port in use)."""

from __future__ import annotations

import base64
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "samples" / "office_worker_720x404.mp4"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev install has it
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None,
    reason="Chromium (Debian package 'chromium', .ci/install-browser.sh) or playwright is not installed",
)


@contextmanager
def serving(*args: str, timeout: float = 120.0) -> Iterator[str]:
    """``run_stream.py --serve ...`` in a subprocess; yields the URL it prints."""
    # stderr to a file: a pipe nobody reads would fill up and stall the server. With -X
    # faulthandler, a stop that hangs (SIGABRT below) leaves every thread's stack in that log.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", str(ROOT / "run_stream.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        deadline = time.monotonic() + timeout
        match = None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            # The first run exports the models to ONNX, and the exporter talks on stdout.
            while match is None:
                if not sel.select(max(deadline - time.monotonic(), 0)):
                    raise AssertionError("the server printed no URL in time")
                line = proc.stdout.readline()
                if not line:
                    raise AssertionError(f"the server exited: {_tail(log)}")
                match = re.search(r"serving on (\S+)", line)
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait()
    assert proc.returncode == 0, _tail(log)


def _tail(log) -> str:
    log.seek(0)
    return log.read()[-3000:]


def _status(url: str, data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_token_required_off_loopback_and_bad_requests(tiny_weights):
    det, gen = tiny_weights
    port = _free_port()
    with serving("--serve", f"0.0.0.0:{port}", "--detector-weights", str(det), "--generator-weights", str(gen),
                 "--no-progress") as url:
        token = re.search(r"token=([\w-]+)", url).group(1)
        base = f"http://127.0.0.1:{port}"
        assert _status(base + "/")[0] == 403
        assert _status(base + "/offer", b"{}")[0] == 403
        assert _status(f"{base}/?token=wrong")[0] == 403
        code, page = _status(f"{base}/?token={token}")
        assert code == 200 and f"app.js?token={token}" in page
        assert _status(f"{base}/nothing-here?token={token}")[0] == 404
        code, reason = _status(f"{base}/offer?token={token}", b"not json")
        assert code == 400 and reason.startswith("malformed offer") and reason.count("\n") == 1
        code, reason = _status(f"{base}/offer?token={token}", json.dumps({"sdp": "v=0 garbage", "type": "offer"}).encode())
        assert code == 400 and reason.count("\n") == 1
        code, reason = _status(f"{base}/offer?token={token}", json.dumps({"sdp": "", "type": "answer"}).encode())
        assert code == 400 and "offer" in reason
        # The server is still up after all that.
        assert _status(f"{base}/?token={token}")[0] == 200


def test_port_in_use_is_a_one_line_error(tiny_weights):
    det, gen = tiny_weights
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, str(ROOT / "run_stream.py"), "--serve", f"127.0.0.1:{port}",
                               "--detector-weights", str(det), "--generator-weights", str(gen)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(port) in errors[0] and "Traceback" not in proc.stderr


def make_y4m(path: Path, *, frames: int = 60, size: tuple[int, int] = (640, 480)) -> Path:
    """The sample clip, centre-cropped to ``size``, as the raw y4m Chromium's fake camera plays."""
    w, h = size
    with av.open(str(CLIP)) as src, av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i >= frames:
                break
            rgb = frame.to_ndarray(format="rgb24")
            fh, fw = rgb.shape[:2]
            scale = max(w / fw, h / fh)
            big = cv2.resize(rgb, (round(fw * scale), round(fh * scale)), interpolation=cv2.INTER_AREA)
            y0, x0 = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[y0:y0 + h, x0:x0 + w]), format="rgb24")
            for packet in stream.encode(vf.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _png(data_url: str) -> np.ndarray:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def web_server() -> Iterator[str]:
    """The page with the shipped models, the sample clip as its server-side input."""
    with serving("--serve", "127.0.0.1:0", "--input", str(CLIP), "--no-progress") as url:
        yield url


@contextmanager
def chromium(*args: str) -> Iterator[object]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required", *args])
        try:
            yield browser
        finally:
            browser.close()


def _server_status(url: str) -> dict:
    return json.loads(_status(url.split("?")[0] + "status")[1])


@needs_browser
def test_browser_camera_comes_back_unmasked(tmp_path, web_server):
    from engines.registry import load_model
    from stream.detect import FaceDetector

    y4m = make_y4m(tmp_path / "camera.y4m")
    with chromium("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-video-capture={y4m}") as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 560})
        page.goto(web_server)
        page.evaluate("window.unmask.keep = true")
        page.click("#start-camera")
        page.wait_for_function("window.unmask.outputFrames > 50 && window.unmask.latencyMs !== null",
                               timeout=120_000)
        page.wait_for_function("window.unmask.pair() !== null", timeout=30_000)
        pair = page.evaluate("window.unmask.pair()")
        assert re.fullmatch(r"\d+(\.\d)? FPS", page.inner_text("#fps"))
        assert re.fullmatch(r"\d+ ms", page.inner_text("#latency"))
        shot = os.environ.get("UNMASK_WEB_SCREENSHOT")
        page.screenshot(path=shot or str(tmp_path / "page.png"))
        with page.expect_download() as download:
            page.click("#snapshot")
        snapshot = tmp_path / "snapshot.png"
        download.value.save_as(snapshot)
        assert cv2.imread(str(snapshot)).shape[:2] == (480, 640)
        # The controls answer and the stream goes on.
        page.click("#use-reference")
        page.click("#smoothing")
        seen = page.evaluate("window.unmask.outputFrames")
        page.wait_for_function(f"window.unmask.outputFrames > {seen + 10}", timeout=30_000)
        assert page.inner_text("#status") == ""
        assert _server_status(web_server) == {"sessions": 1, "pipelines": 1}
        page.close()  # the tab goes away: its pipeline is freed
        _wait_status(web_server, {"sessions": 0, "pipelines": 0})
    original, processed = _png(pair["input"]), _png(pair["output"])
    assert original.shape == processed.shape
    loaded = load_model("detector", backend="torch", device="cpu")
    faces = FaceDetector(loaded.engine, loaded.config)(original)
    assert len(faces) >= 1
    x1, y1, x2, y2 = faces.boxes[0].astype(int)
    diff = np.abs(original.astype(np.int16) - processed.astype(np.int16)).mean(axis=2)
    lower_face = diff[(y1 + y2) // 2:y2, x1:x2].mean()
    outside = np.ones(diff.shape, bool)
    pad = (x2 - x1) // 2
    outside[max(y1 - pad, 0):y2 + pad, max(x1 - pad, 0):x2 + pad] = False
    outside[-20:, :20 * 16] = False  # the latency stamp and grey blocks, redrawn on every frame
    # Two video encodings (browser -> server -> browser) leave a few levels of noise everywhere.
    assert diff[outside].mean() < 6.0, diff[outside].mean()
    assert lower_face > 3 * diff[outside].mean() + 4, (lower_face, diff[outside].mean())


def _wait_status(url: str, expected: dict, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (status := _server_status(url)) != expected:
        assert time.monotonic() < deadline, f"server status {status}, expected {expected}"
        time.sleep(0.5)


@needs_browser
def test_viewers_of_the_input_share_one_pipeline_and_leaving_frees_it(web_server):
    _wait_status(web_server, {"sessions": 0, "pipelines": 0})
    with chromium() as browser:
        pages = [browser.new_page() for _ in range(2)]
        for page in pages:
            page.goto(web_server)
            page.click("#watch-input")
        for page in pages:
            page.wait_for_function("window.unmask.outputFrames > 10", timeout=120_000)
        # Only the unmasked stream comes back: no empty "original" pane beside it.
        assert not pages[0].is_visible("#original") and pages[0].is_visible("#processed")
        assert _server_status(web_server) == {"sessions": 2, "pipelines": 1}
        pages[0].close()
        _wait_status(web_server, {"sessions": 1, "pipelines": 1})
        seen = pages[1].evaluate("window.unmask.outputFrames")
        pages[1].wait_for_function(f"window.unmask.outputFrames > {seen + 5}", timeout=30_000)
        pages[1].close()
        _wait_status(web_server, {"sessions": 0, "pipelines": 0})
