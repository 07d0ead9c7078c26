"""The streaming pipeline end to end: real files made with PyAV, real threads, small real networks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import run_stream
from stream.pipeline import Pipeline, PipelineConfig, Stage
from stream.records import Frame
from stream.sink import VideoSink
from stream.source import PacedSource, Source, SourceInfo, VideoFileSource, _HandleGuard
from tests.media import audio_packets, make_video, video_timestamps

REPO = Path(__file__).resolve().parents[1]


def cli(tiny_weights, *args: str) -> int:
    det, gen = tiny_weights
    return run_stream.main(
        [*args, "--detector-weights", str(det), "--generator-weights", str(gen), "--no-progress", "--log-level", "WARNING"]
    )


@pytest.mark.parametrize("sequential", [False, True])
def test_file_keeps_every_frame_timestamps_and_audio(tmp_path, tiny_weights, sequential, caplog):
    src = make_video(tmp_path / "in.mp4", frames=40)
    out = tmp_path / "out.mp4"
    args = ["--input", str(src), "--output", str(out), "--report", str(tmp_path / "r.json")]
    assert cli(tiny_weights, *args, *(["--sequential"] if sequential else [])) == 0
    # Untrained weights find no face: the report says so, and so does the log, not only the bare output.
    assert json.loads((tmp_path / "r.json").read_text())["run"]["frames_filled"] == 0
    assert "no masked face found on any frame" in caplog.text
    assert video_timestamps(out) == pytest.approx(video_timestamps(src), abs=1e-6)
    assert audio_packets(out) == pytest.approx(audio_packets(src))
    assert not list(tmp_path.glob("*.partial*"))


def test_audio_the_output_container_cannot_hold_is_encoded_again(tmp_path, tiny_weights):
    src = make_video(tmp_path / "in.mp4", frames=40)  # AAC, which WebM does not take
    out = tmp_path / "out.webm"
    assert cli(tiny_weights, "--input", str(src), "--output", str(out)) == 0
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "opus"
        seconds = sum(f.samples for f in container.decode(audio)) / audio.rate
    assert seconds == pytest.approx(40 / 25, abs=0.03)


def test_a_recorded_video_over_http_keeps_its_sound(tmp_path, tiny_weights):
    import functools
    import http.server

    src = make_video(tmp_path / "in.mp4", frames=20)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "out.mp4"
        assert cli(tiny_weights, "--input", f"http://127.0.0.1:{server.server_port}/in.mp4", "--output", str(out)) == 0
    finally:
        server.shutdown()
    assert len(video_timestamps(out)) == 20
    assert audio_packets(out) == pytest.approx(audio_packets(src))


def test_an_odd_frame_size_is_written_as_4_2_0_that_players_show(tmp_path, tiny_weights):
    src = tmp_path / "odd.mkv"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("ffv1", rate=25)  # takes odd sizes, as phone and editor exports come
        stream.width, stream.height, stream.pix_fmt = 97, 65, "yuv444p"
        for i in range(5):
            image = np.full((65, 97, 3), 40, np.uint8)
            image[:, -1] = 250
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    written = tmp_path / "out.mp4"
    assert cli(tiny_weights, "--input", str(src), "--output", str(written)) == 0
    with av.open(str(written)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.pix_fmt, video.width, video.height) == ("yuv420p", 98, 66)
        first = next(container.decode(video)).to_ndarray(format="rgb24")
    assert first[30, -2:, 0].min() > 200 and first[30, -4, 0] < 80  # the last column, repeated


def test_sound_is_encoded_again_at_a_rate_its_codec_takes():
    from stream.sink import _encoder_rate

    assert _encoder_rate("aac", 8000) == 8000  # a camera's G.711 rate, which AAC takes
    assert _encoder_rate("ac3", 8000) == 32000 and _encoder_rate("libopus", 44100) == 48000
    assert _encoder_rate("ac3", 96000) == 48000


def test_mkv_output_and_variable_timestamps_survive(tmp_path, tiny_weights):
    src = tmp_path / "in.mkv"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, pts in enumerate([0, 40, 80, 200, 240, 300]):  # irregular spacing, as from a webcam
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 30, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    dst = tmp_path / "out.mkv"
    assert cli(tiny_weights, "--input", str(src), "--output", str(dst)) == 0
    assert video_timestamps(dst) == pytest.approx(video_timestamps(src), abs=1e-3)


class _Boom(Stage):
    name = "boom"

    def __init__(self, at: int) -> None:
        self.at = at

    def process(self, frame: Frame) -> None:
        if frame.index == self.at:
            raise ValueError("stage failed on purpose")


@pytest.mark.parametrize("sequential", [False, True])
def test_stage_exception_stops_closes_output_and_reraises(tmp_path, sequential):
    src = make_video(tmp_path / "in.mp4", frames=60)
    source = VideoFileSource(src)
    out = tmp_path / "out.mp4"
    sink = VideoSink(str(out), source.info)
    pipeline = Pipeline(source, [_Boom(at=30)], [sink], config=PipelineConfig(sequential=sequential))
    done = threading.Event()
    errors = []

    def target():
        try:
            pipeline.run()
        except ValueError as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=target, daemon=True).start()
    assert done.wait(30), "pipeline hung after a stage error"
    assert errors and "on purpose" in str(errors[0])
    written = video_timestamps(out)
    assert 0 < len(written) <= 30
    count, seconds = audio_packets(out)
    assert count > 0 and seconds <= len(written) / 25 + 0.1  # audio cut where the video stopped


@contextlib.contextmanager
def _busy_cpus(count: int) -> Iterator[None]:
    """Processes that keep ``count`` cores busy, as on a loaded CI machine."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for b in burners:
            b.kill()
            b.wait()


def test_ctrl_c_leaves_playable_file_and_exits(tmp_path, tiny_weights):
    src = make_video(tmp_path / "in.mp4", frames=1500, audio=True)
    out = tmp_path / "out.mp4"
    det, gen = tiny_weights
    partial = tmp_path / "out.partial.mp4"
    # A stop that hangs dumps every thread's stack on SIGABRT, so a failure says where it hung.
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    with _busy_cpus(os.cpu_count() or 2):
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "run_stream.py"), "--input", str(src), "--output", str(out),
             "--detector-weights", str(det), "--generator-weights", str(gen), "--no-progress"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size > 2000):
            time.sleep(0.1)
        assert partial.exists(), "run_stream wrote nothing within 120 s"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, stderr = proc.communicate(timeout=30)
            pytest.fail(f"run_stream did not exit after Ctrl-C; its threads:\n{stderr[-8000:]}")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    frames = video_timestamps(out)
    assert 0 < len(frames) < 1500
    assert audio_packets(out)[0] > 0


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches /proc to time the signal")
def test_ctrl_c_while_starting_up_is_not_lost(tmp_path, tiny_weights):
    """A Ctrl-C while the libraries import used to raise inside their import code, where it was
    swallowed, and the whole file was processed anyway."""
    src = make_video(tmp_path / "in.mp4", frames=30, audio=False)
    out = tmp_path / "out.mp4"
    det, gen = tiny_weights
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run_stream.py"), "--input", str(src), "--output", str(out),
         "--detector-weights", str(det), "--generator-weights", str(gen), "--no-progress"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and "libtorch" not in maps.read_text():
        time.sleep(0.005)  # until torch's libraries are being loaded: the middle of the imports
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and not out.exists() and not list(tmp_path.glob("*.partial*"))


class _LiveSource(Source):
    """Frames as fast as a camera at 200 FPS would deliver them."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.info = SourceInfo(width=64, height=48, rate=Fraction(200), time_base=Fraction(1, 1000),
                               frame_count=None, live=True)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.count):
            time.sleep(0.005)
            yield Frame(index=i, image=np.zeros((48, 64, 3), np.uint8), pts=i * 5, time_base=Fraction(1, 1000))


class _Slow(Stage):
    name = "slow"

    def process(self, frame: Frame) -> None:
        time.sleep(0.02)


class _Collect:
    def __init__(self) -> None:
        self.indices: list[int] = []

    def write(self, frame: Frame) -> None:
        self.indices.append(frame.index)

    def close(self, *, complete: bool = True) -> None:
        pass


def test_live_source_drops_oldest_and_counts():
    sink = _Collect()
    stats = Pipeline(_LiveSource(200), [_Slow()], [sink], config=PipelineConfig(queue_size=2)).run()
    assert stats.frames_dropped > 50
    assert stats.frames_written + stats.frames_dropped == stats.frames_read == 200
    assert sink.indices == sorted(sink.indices)
    assert sink.indices[-1] == 199  # the newest frames survive, not the oldest


class _InFlight(Stage):
    """Records how many frames were read but neither written nor dropped while it works."""

    name = "in_flight"

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.most = 0

    def process(self, frame: Frame) -> None:
        s = self.pipeline.stats
        self.most = max(self.most, s.frames_read - s.frames_written - s.frames_dropped)
        time.sleep(0.02)


def _max_in_flight(config: PipelineConfig) -> tuple[int, list[int]]:
    stage, sink = _InFlight(), _Collect()
    stage.pipeline = Pipeline(_LiveSource(150), [stage], [sink], config=config)
    stage.pipeline.run()
    return stage.most, sink.indices


def test_live_mode_queues_hold_one_frame_and_the_newest_wins():
    most, indices = _max_in_flight(PipelineConfig(queue_size=4, live=True))
    # At most: the frame in the stage, one waiting before it, one the decoder is handing over.
    assert most <= 3
    assert indices[-1] == 149 and indices == sorted(indices)  # the last frame is never dropped
    # The same source with file-style queues lets frames pile up (and so delay).
    backlog, _ = _max_in_flight(PipelineConfig(queue_size=4))
    assert backlog >= 5


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_video_stored_turned_is_read_and_written_upright(tmp_path, tiny_weights, rotation):
    src = make_video(tmp_path / "in.mp4", frames=6, width=96, height=64, audio=False, display_rotation=rotation)
    with VideoFileSource(src) as source:
        assert (source.info.width, source.info.height) == (96, 64)
        images = [f.image for f in source]
    for i, image in enumerate(images):
        assert image.shape == (64, 96, 3)
        assert int(np.argmax(image[32, :, 0])) == i * 3  # the bar stands where the upright clip has it
    out = tmp_path / "out.mp4"
    assert cli(tiny_weights, "--input", str(src), "--output", str(out)) == 0
    with av.open(str(out)) as container:
        first = next(container.decode(video=0))
        assert (first.width, first.height, first.rotation) == (96, 64, 0)


def test_a_photo_is_read_by_its_exif_orientation(tmp_path):
    from PIL import Image

    from stream.source import ImageSource

    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :10] = 255  # a bar at the stored picture's left: the upright photo's top
    photo = Image.fromarray(stored)
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to show"
    photo.save(tmp_path / "p.jpg", exif=exif)
    (frame,) = list(ImageSource(tmp_path / "p.jpg"))
    assert frame.image.shape == (80, 40, 3) and frame.image[:10].mean() > 200 and frame.image[20:].mean() < 30


def test_file_source_never_drops(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=50, audio=False)
    sink = _Collect()
    stats = Pipeline(VideoFileSource(src), [_Slow()], [sink], config=PipelineConfig(queue_size=2)).run()
    assert stats.frames_dropped == 0
    assert sink.indices == list(range(50))


def test_photo_directory_in_photo_directory_out(tmp_path, tiny_weights):
    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.png"):
        cv2.imwrite(str(photos / name), np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    out = tmp_path / "out"
    det = tmp_path / "faces.jsonl"
    assert cli(tiny_weights, "--input", str(photos), "--output", str(out), "--detections", str(det)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.png"]
    lines = det.read_text().splitlines()
    assert [__import__("json").loads(line)["file"] for line in lines] == ["a.jpg", "b.png"]
    single = tmp_path / "single.png"
    assert cli(tiny_weights, "--input", str(photos / "b.png"), "--output", str(single)) == 0
    assert cv2.imread(str(single)).shape == (60, 80, 3)


class _FaceOnFirstPhoto:
    """A detector that finds a masked face on the first photo only."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray):
        from stream.records import Detections

        self.calls += 1
        h, w = image.shape[:2]
        if self.calls > 1:
            return Detections(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                              masks=np.zeros((0, h, w), bool))
        masks = np.zeros((1, h, w), bool)
        masks[0, 40:60, 10:40] = True
        return Detections(boxes=np.array([[10, 10, 40, 60]], np.float32), scores=np.array([0.99], np.float32),
                          masks=masks)


class _TracksSeen(Stage):
    name = "tracks"

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def process(self, frame: Frame) -> None:
        self.seen.append([t.track_id for t in frame.tracks])


def test_a_face_on_one_photo_is_never_carried_onto_the_next(tmp_path):
    import cv2
    from types import SimpleNamespace

    from stream.source import ImageSource
    from stream.stages import DetectSchedule, DetectStage, TrackStage
    from stream.track import FaceTracker

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, size in (("a.jpg", (80, 60)), ("b.jpg", (200, 120))):
        cv2.imwrite(str(photos / name), np.full((size[1], size[0], 3), 200, np.uint8))
    tracks = _TracksSeen()
    config = run_stream.tracker_config_for(SimpleNamespace(verifier=None), still=True)
    stages = [DetectStage(_FaceOnFirstPhoto(), schedule=DetectSchedule()), TrackStage(FaceTracker(config)), tracks]
    Pipeline(ImageSource(photos), stages, [_Collect()]).run()
    # Photos are unrelated: the first photo's face is not looked for, let alone painted, on the second.
    assert len(tracks.seen[0]) == 1 and tracks.seen[1] == []


def _bad(tmp_path, tiny_weights, capsys, *args: str) -> str:
    code = cli(tiny_weights, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_weights, capsys):
    good = make_video(tmp_path / "good.mp4", frames=5)
    out = tmp_path / "out.mp4"
    assert "no such file" in _bad(tmp_path, tiny_weights, capsys, "--input", str(tmp_path / "nope.mp4"), "--output", str(out))
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    assert "not a readable video" in _bad(tmp_path, tiny_weights, capsys, "--input", str(text), "--output", str(out))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    assert "truncated.mp4" in _bad(tmp_path, tiny_weights, capsys, "--input", str(truncated), "--output", str(out))
    assert "cannot open" in _bad(tmp_path, tiny_weights, capsys, "--input", "rtsp://127.0.0.1:9/none",
                                 "--open-timeout", "1", "--output", str(out))
    assert "webcam 57" in _bad(tmp_path, tiny_weights, capsys, "--input", "57", "--output", str(out))
    assert "does not exist" in _bad(tmp_path, tiny_weights, capsys, "--input", str(good),
                                    "--output", str(tmp_path / "missing" / "out.mp4"))
    assert "no known" in _bad(tmp_path, tiny_weights, capsys, "--input", str(good), "--output", str(tmp_path / "out.xyz"))
    phone = tmp_path / "phone"
    phone.mkdir()
    (phone / "IMG_0001.HEIC").write_bytes(b"\0" * 64)
    assert "no images it can read" in (err := _bad(tmp_path, tiny_weights, capsys, "--input", str(phone),
                                                   "--output", str(tmp_path / "o"))) and "found .heic" in err
    # The input is never overwritten: the video itself, or a folder of photos as its own output.
    before = good.read_bytes()
    assert "is the input" in _bad(tmp_path, tiny_weights, capsys, "--input", str(good), "--output", str(good))
    assert "is the input" in _bad(tmp_path, tiny_weights, capsys, "--input", str(tmp_path), "--output", f"{tmp_path}/")
    assert good.read_bytes() == before
    # A score under the model's own cut-off would silently do nothing; out of [0, 1] is nonsense.
    assert "cut-off 0.3" in _bad(tmp_path, tiny_weights, capsys, "--input", str(good), "--output", str(out),
                                 "--face-score", "0.1")
    assert "mask_score must be in [0, 1]" in _bad(tmp_path, tiny_weights, capsys, "--input", str(good),
                                                  "--output", str(out), "--mask-score", "1.5")
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def test_a_folder_of_videos_is_written_video_by_video_and_a_bad_one_is_skipped(tmp_path, tiny_weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    make_video(folder / "a.mp4", frames=12)
    make_video(folder / "b.mkv", frames=8, audio=False)
    (folder / "c.mp4").write_text("not a video")
    cv2.imwrite(str(folder / "p.jpg"), np.full((48, 64, 3), 90, np.uint8))
    out, faces = tmp_path / "out", tmp_path / "faces"
    assert "1 of 3 videos failed: c.mp4" in _bad(tmp_path, tiny_weights, capsys, "--input", str(folder),
                                                  "--output", str(out), "--detections", str(faces))
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mkv", "p.jpg"]
    assert len(video_timestamps(out / "a.mp4")) == 12 and len(video_timestamps(out / "b.mkv")) == 8
    assert audio_packets(out / "a.mp4") == pytest.approx(audio_packets(folder / "a.mp4"))
    assert sorted(p.name for p in faces.iterdir()) == ["a.jsonl", "b.jsonl", "photos.jsonl"]
    assert len((faces / "a.jsonl").read_text().splitlines()) == 12
    # Several videos go into a folder, not into one file.
    assert "give --output a folder" in _bad(tmp_path, tiny_weights, capsys, "--input", str(folder),
                                            "--output", str(tmp_path / "all.mp4"))


def test_unwritable_output_location(tmp_path, tiny_weights, capsys):
    good = make_video(tmp_path / "good.mp4", frames=5)
    # sysfs refuses new files even for root, so this holds for any user.
    assert "/sys/out.mp4" in _bad(tmp_path, tiny_weights, capsys, "--input", str(good), "--output", "/sys/out.mp4")


def test_corrupt_packet_in_the_middle_is_skipped_and_counted(tmp_path):
    src = make_video(tmp_path / "in.ts", frames=60, audio=False, codec="mpeg4")
    data = bytearray(src.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = bytes(4000)
    broken = tmp_path / "broken.ts"
    broken.write_bytes(bytes(data))
    source = VideoFileSource(broken)
    sink = _Collect()
    stats = Pipeline(source, [], [sink]).run()
    assert 40 <= stats.frames_written < 60
    assert stats.frames_corrupt >= 1


def test_benchmark_writes_json_and_chart(tmp_path, tiny_weights, capsys):
    src = make_video(tmp_path / "in.mp4", frames=12, audio=False)
    out = tmp_path / "bench"
    assert cli(tiny_weights, "--input", str(src), "--benchmark", str(out), "--max-frames", "10") == 0
    printed = capsys.readouterr().out
    assert "pipeline gain over sequential" in printed and "detect" in printed
    report = __import__("json").loads((out / "benchmark.json").read_text())
    assert report["threaded"]["frames_written"] == report["sequential"]["frames_written"] == 10
    assert report["gain"] > 0 and "detector" in report["models"]
    # The limit: the same input decoded and encoded with no stage between.
    assert "decode -> encode alone" in printed
    assert report["decode_encode_fps"] > 0 and report["share_of_decode_encode"] > 0
    assert (out / "benchmark.png").stat().st_size > 10_000


def test_restream_to_udp_is_received(tmp_path, tiny_weights):
    from tests.rtsp_server import free_loopback_port

    src = make_video(tmp_path / "in.mp4", frames=150, audio=True)
    url = f"udp://127.0.0.1:{free_loopback_port()}"
    received = {"video": 0, "audio": 0}

    def receive():
        with av.open(url + "?timeout=20000000", format="mpegts", timeout=20) as container:
            for packet in container.demux():
                if packet.dts is not None:
                    received[packet.stream.type] += 1
                if received["video"] >= 20:
                    return

    listener = threading.Thread(target=receive, daemon=True)
    listener.start()
    time.sleep(0.5)
    assert cli(tiny_weights, "--input", str(src), "--output", url) == 0
    listener.join(20)
    assert received["video"] >= 20 and received["audio"] > 0  # the sound is streamed with the pictures


def test_show_without_gui_is_a_clear_error(tmp_path, tiny_weights, capsys):
    import cv2

    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
        pytest.skip("this OpenCV has a GUI")
    except cv2.error:
        pass
    src = make_video(tmp_path / "in.mp4", frames=3, audio=False)
    assert "--show needs OpenCV with GUI" in _bad(tmp_path, tiny_weights, capsys, "--input", str(src), "--show")


def test_source_handle_is_released_by_its_reader_not_under_it():
    """close() from another thread must not free a container a reader is inside (it crashed
    FFmpeg); the reader frees it when it lets go, exactly once."""
    released_on: list[str] = []
    guard = _HandleGuard(lambda: released_on.append(threading.current_thread().name))
    inside, leave = threading.Event(), threading.Event()

    def read() -> None:
        with guard.reading():
            inside.set()
            leave.wait(5)

    reader = threading.Thread(target=read, name="reader")
    reader.start()
    assert inside.wait(5)
    guard.close()
    assert guard.closed.is_set() and released_on == []
    leave.set()
    reader.join(5)
    guard.close()
    assert released_on == ["reader"]

    idle = _HandleGuard(lambda: released_on.append("idle"))
    idle.close()
    assert released_on[-1] == "idle"


def test_closing_a_file_source_mid_read_stops_its_reader(tmp_path):
    source = VideoFileSource(make_video(tmp_path / "in.mp4", frames=50, audio=False))
    got: list[int] = []
    first = threading.Event()

    def consume() -> None:
        for frame in source:
            got.append(frame.index)
            first.set()
            time.sleep(0.01)

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(5)
    source.close()
    reader.join(5)
    assert not reader.is_alive()
    assert 1 <= len(got) < 50


def test_bad_weights_give_one_line_errors(tmp_path, tiny_weights, capsys):
    clip = make_video(tmp_path / "clip.mp4", frames=3)
    out = tmp_path / "out.mp4"
    det, gen = tiny_weights
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(det.read_bytes()[: det.stat().st_size // 2])
    cases = [
        ("--detector-weights", notes, "not a readable weights file"),
        ("--detector-weights", truncated, "not a readable weights file"),
        ("--detector-weights", gen, "detector"),  # another model's file
        ("--generator-weights", det, "generator"),
        ("--generator-weights", tmp_path / "missing.pt", "not found"),
    ]
    for flag, path, message in cases:
        code = run_stream.main(["--input", str(clip), "--output", str(out), "--backend", "torch",
                                "--detector-weights", str(det), "--generator-weights", str(gen), flag, str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and err[-1].startswith("error: ") and message in err[-1], (flag, path, err[-1:])
        assert "Traceback" not in "\n".join(err)
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def test_queue_size_zero_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_stream.main(["--input", "x.mp4", "--output", "y.mp4", "--queue-size", "0"])
    assert exit_info.value.code == 2 and "--queue-size: must be at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError):
        PipelineConfig(queue_size=0)


def test_threads_cap_numpy_blas_as_well_as_the_models(tmp_path, capsys):
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(2, user_api="blas"):
        # Fails at the input, after the process-wide settings are made.
        assert run_stream.main(["--input", str(tmp_path / "missing.mp4"), "--output", str(tmp_path / "o.mp4"),
                                "--threads", "1"]) == 1
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and set(blas) == {1}


def test_int8_by_default_only_where_its_card_measured_it(monkeypatch, tmp_path):
    parse = run_stream.get_args_parser().parse_args
    assert parse(["--input", "a.mp4"]).int8 == "auto" and parse(["--input", "a.mp4", "--int8"]).int8 == "on"
    asked = []
    monkeypatch.setattr(run_stream, "cached_int8", lambda name, weights: asked.append((name, weights.name)) or tmp_path)
    choice = run_stream.ModelChoice(device="cpu")
    assert run_stream._int8_artifacts("generator_noref", choice, None) == tmp_path
    assert asked == [("generator_noref", "generator_128.pt")]
    for name, changed in [("generator", {}), ("detector", {}), ("generator_noref", {"int8": "off"}),
                          ("generator_noref", {"int8": "on"}), ("generator_noref", {"backend": "torch"})]:
        assert run_stream._int8_artifacts(name, run_stream.ModelChoice(device="cpu", **changed), None) is None
    # Other weights than the shipped ones, which the card's measure does not cover: fp32.
    assert run_stream._int8_artifacts("generator_noref", choice, tmp_path / "mine.pt") is None
    assert len(asked) == 1


def test_paced_source_plays_at_its_rate_and_loops(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=10, audio=False)
    paced = PacedSource(lambda: VideoFileSource(src), loop=True)
    assert paced.live and paced.info.frame_count is None
    start, frames = time.monotonic(), []
    for frame in paced:
        frames.append(frame)
        if len(frames) == 25:
            paced.close()
            break
    elapsed = time.monotonic() - start
    rate = float(paced.info.rate)
    assert [f.index for f in frames] == list(range(25))  # on into the second and third pass
    stamps = [f.pts for f in frames]
    assert stamps == sorted(set(stamps))
    assert elapsed >= 24 / rate * 0.9  # not faster than the recording


def test_command_line_becomes_one_frozen_run_config():
    import dataclasses

    args = run_stream.get_args_parser().parse_args([
        "--input", "in.mp4", "--output", "out.mp4", "--face-score", "0.8", "--temporal", "off", "--live", "on",
        "--queue-size", "2", "--verifier", "on", "--face-verifier", "on", "--crf", "30",
    ])
    config = run_stream.config_from_args(args)
    assert config.detector.face_score == 0.8 and not config.temporal.enabled and config.live == "on"
    assert config.pipeline.queue_size == 2 and config.models.verifier and config.encoder.crf == 30
    assert config.models.face_verifier
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.output = "elsewhere.mp4"


def test_source_and_sink_close_as_context_managers(tmp_path):
    from stream.sink import Sink

    class Recording(Sink):
        def __init__(self) -> None:
            self.closed_with: list[bool] = []

        def write(self, frame: Frame) -> None:
            pass

        def close(self, *, complete: bool = True) -> None:
            self.closed_with.append(complete)

    with Recording() as finished:
        pass
    failed = Recording()
    with pytest.raises(RuntimeError), failed:
        raise RuntimeError("stage failed")
    assert finished.closed_with == [True] and failed.closed_with == [False]

    src = make_video(tmp_path / "in.mp4", frames=5, audio=False)
    with VideoFileSource(src) as source:
        assert len(list(source)) == 5
    assert source._guard.closed.is_set()
