"""The loopback RTSP test server works with PyAV, including across a server restart.

These tests pin down the fixture and the client-side behaviour the streaming pipeline
has to handle; the pipeline's own reconnect logic is tested elsewhere.
"""
import time

import pytest

from tests.rtsp_server import RtspTestServer, rtsp_server_available

av = pytest.importorskip("av")

WIDTH, HEIGHT, FPS = 320, 240, 25
# (open, read) timeouts in seconds for av.open, so a dead server can never hang a test.
AV_TIMEOUT = (5.0, 3.0)
OPTIONS = {"rtsp_transport": "tcp"}


@pytest.fixture
def rtsp_server():
    if not rtsp_server_available():
        pytest.skip("system python3 lacks GstRtspServer; run .ci/install-rtsp-server.sh")
    with RtspTestServer(width=WIDTH, height=HEIGHT, fps=FPS) as server:
        yield server


def read_frames(container, count: int, *, deadline_s: float = 10.0) -> list:
    """Decode ``count`` video frames, failing if the stream ends or stalls past the deadline."""
    frames = []
    deadline = time.monotonic() + deadline_s
    for frame in container.decode(video=0):
        frames.append(frame)
        if len(frames) == count:
            return frames
        assert time.monotonic() < deadline, f"only {len(frames)} frames in {deadline_s} s"
    pytest.fail(f"stream ended after {len(frames)} of {count} frames")


def assert_live_frames(frames) -> None:
    assert all((f.width, f.height) == (WIDTH, HEIGHT) for f in frames)
    pts = [f.pts for f in frames if f.pts is not None]
    assert len(pts) >= len(frames) - 1
    assert pts == sorted(set(pts)), "timestamps must strictly increase"


def test_reads_frames_again_after_restart(rtsp_server):
    before = av.open(rtsp_server.url, options=OPTIONS, timeout=AV_TIMEOUT)
    try:
        assert_live_frames(read_frames(before, 20))
        rtsp_server.restart(down_seconds=1.0)
        # A server that goes away ends the old session promptly: PyAV yields the frames
        # it had buffered and then stops (or raises), it does not block.
        started = time.monotonic()
        drained = 0
        try:
            for _ in before.decode(video=0):
                drained += 1
                assert drained < 5 * FPS, "old session kept producing frames after restart"
        except av.FFmpegError:
            pass
        assert time.monotonic() - started < AV_TIMEOUT[1] + 1.0
    finally:
        before.close()

    after = av.open(rtsp_server.url, options=OPTIONS, timeout=AV_TIMEOUT)
    try:
        assert_live_frames(read_frames(after, 20))
    finally:
        after.close()


def test_open_is_refused_while_server_is_down(rtsp_server):
    rtsp_server.stop()
    with pytest.raises(ConnectionRefusedError):
        av.open(rtsp_server.url, options=OPTIONS, timeout=AV_TIMEOUT)
    rtsp_server.start()
    container = av.open(rtsp_server.url, options=OPTIONS, timeout=AV_TIMEOUT)
    try:
        assert_live_frames(read_frames(container, 5))
    finally:
        container.close()


def test_serves_two_clients_at_once(rtsp_server):
    first = av.open(rtsp_server.url, options=OPTIONS, timeout=AV_TIMEOUT)
    second = av.open(rtsp_server.url, options=OPTIONS, timeout=AV_TIMEOUT)
    try:
        assert_live_frames(read_frames(first, 10))
        assert_live_frames(read_frames(second, 10))
    finally:
        first.close()
        second.close()


def test_missing_mount_fails_fast(rtsp_server):
    with pytest.raises(av.FFmpegError):
        av.open(rtsp_server.url + "-nope", options=OPTIONS, timeout=AV_TIMEOUT)
