"""scripts/resize_clip.py: benchmark inputs at a chosen resolution."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import av

from tests.media import make_video

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "resize_clip.py"


def _module():
    spec = importlib.util.spec_from_file_location("resize_clip", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resize_clip_crops_to_the_aspect_and_keeps_every_frame(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=12, width=96, height=64, audio=False)
    assert _module().main(["--input", str(src), "--output", str(tmp_path / "out.mp4"), "--size", "48x48"]) == 0
    with av.open(str(tmp_path / "out.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape == (48, 48, 3)


def test_resize_clip_reports_a_missing_input(tmp_path, capsys):
    assert _module().main(["--input", str(tmp_path / "nope.mp4"), "--output", str(tmp_path / "o.mp4"),
                           "--size", "64x48"]) == 1
    assert capsys.readouterr().err.startswith("error:")


def test_resize_clip_tiles_the_clip_for_several_faces(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=4, width=96, height=64, audio=False)
    assert _module().main(["--input", str(src), "--output", str(tmp_path / "out.mp4"), "--size", "96x64",
                           "--tile", "2"]) == 0
    with av.open(str(tmp_path / "out.mp4")) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    # Each quarter is the whole source frame, scaled down: the quarters look alike.
    quarters = [frame[:32, :48], frame[:32, 48:], frame[32:, :48], frame[32:, 48:]]
    assert all(abs(q - quarters[0]).mean() < 6 for q in quarters[1:])
    assert _module().main(["--input", str(src), "--output", str(tmp_path / "o.mp4"), "--size", "96x64",
                           "--tile", "0"]) == 2
