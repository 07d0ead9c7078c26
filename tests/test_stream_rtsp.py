"""The pipeline against a real RTSP server on loopback: read, survive a restart, end cleanly."""

from __future__ import annotations

import json
import threading

import av
import pytest

import run_stream
from stream.pipeline import Pipeline, PipelineConfig
from stream.source import NetworkSource, ReconnectPolicy
from tests.media import video_timestamps
from tests.rtsp_server import RtspTestServer, rtsp_server_available

pytestmark = pytest.mark.skipif(not rtsp_server_available(), reason="GStreamer RTSP server not installed")


class _Collect:
    def __init__(self) -> None:
        self.count = 0
        self.reached = threading.Event()
        self.target = 0

    def write(self, frame) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()

    def close(self, *, complete: bool = True) -> None:
        pass


def test_rtsp_source_reconnects_after_server_restart():
    with RtspTestServer(width=160, height=120, fps=25) as server:
        source = NetworkSource(server.url, policy=ReconnectPolicy(open_timeout=10, give_up_after=20, read_timeout=3))
        assert source.live and (source.info.width, source.info.height) == (160, 120)
        sink = _Collect()
        sink.target = 25
        pipeline = Pipeline(source, [], [sink], config=PipelineConfig(max_frames=100))
        result = {}
        runner = threading.Thread(target=lambda: result.setdefault("stats", pipeline.run()), daemon=True)
        runner.start()
        assert sink.reached.wait(20), "no frames from the RTSP server"
        server.restart(down_seconds=1.0)
        runner.join(60)
        assert not runner.is_alive(), "pipeline did not end after max_frames"
    stats = result["stats"]
    assert source.reconnects >= 1
    assert stats.frames_written == stats.frames_read - stats.frames_dropped
    assert stats.frames_read == 100


def test_rtsp_to_file_with_cli(tmp_path, tiny_weights):
    out, report = tmp_path / "live.mp4", tmp_path / "report.json"
    det, gen = tiny_weights
    with RtspTestServer(width=160, height=120, fps=25) as server:
        code = run_stream.main([
            "--input", server.url, "--output", str(out), "--max-frames", "40", "--no-progress",
            "--detector-weights", str(det), "--generator-weights", str(gen), "--report", str(report),
        ])
    assert code == 0
    stamps = video_timestamps(out)
    assert 1 <= len(stamps) <= 40
    assert stamps == sorted(stamps)
    # A network stream runs live by default: the detector beside the frames, its results late.
    run = json.loads(report.read_text())
    assert run["mode"] == "live"
    assert run["run"]["detection_staleness_frames"]["max"] >= 0


@pytest.mark.parametrize("codec,written", [("opus", "opus"), ("pcma", "aac")])
def test_a_live_cameras_sound_is_recorded_beside_its_pictures(tmp_path, tiny_weights, codec, written):
    # Opus is copied as it comes; an IP camera's G.711 a-law, which MP4 cannot hold, is encoded as AAC.
    out = tmp_path / "live.mp4"
    det, gen = tiny_weights
    with RtspTestServer(width=160, height=120, fps=25, audio=codec) as server:
        assert run_stream.main([
            "--input", server.url, "--output", str(out), "--max-frames", "50", "--no-progress",
            "--detector-weights", str(det), "--generator-weights", str(gen),
        ]) == 0
    stamps = video_timestamps(out)
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        codec_name, rate, tb = audio.codec_context.name, audio.rate, audio.time_base
        frames = list(container.decode(audio))
    start, end = float(frames[0].pts * tb), float(frames[-1].pts * tb)
    assert codec_name == written
    # On the pictures' clock: the sound runs from when reading began to the last picture.
    assert start <= stamps[0] + 0.05 and abs(end - stamps[-1]) < 0.3
    assert sum(f.samples for f in frames) / rate == pytest.approx(end - start, abs=0.3)


def test_a_live_cameras_sound_is_not_hoarded_without_a_file_to_record_it():
    with RtspTestServer(width=160, height=120, fps=25, audio="opus") as server:
        source = NetworkSource(server.url, policy=ReconnectPolicy(open_timeout=10, read_timeout=3))
        sink = _Collect()
        Pipeline(source, [], [sink], config=PipelineConfig(max_frames=25)).run()
    assert sink.count == 25 and source.info.live_audio is not None and source.info.live_audio.packets.empty()
