"""The before/after contact sheet."""

from __future__ import annotations

import av
import numpy as np

from training.evaluation import contact_sheet


def _clip(path, value: int, frames: int = 5) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            image = np.full((48, 64, 3), value + 10 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())


def test_sheet_puts_the_same_frames_side_by_side(tmp_path):
    _clip(tmp_path / "a.mp4", 40)
    _clip(tmp_path / "b.mp4", 140)
    sheet = contact_sheet.contact_sheet([tmp_path / "a.mp4", tmp_path / "b.mp4"], ["a", "b"], [1, 4], height=48)
    assert sheet.shape == (96, 128, 3)
    # Away from the label: the frames' own grey levels (x264 keeps flat colours to a level or two).
    assert abs(int(sheet[40, 40, 0]) - 50) <= 3 and abs(int(sheet[40, 100, 0]) - 150) <= 3
    assert abs(int(sheet[88, 40, 0]) - 80) <= 3


def test_a_frame_past_the_end_is_a_one_line_error(tmp_path, capsys):
    _clip(tmp_path / "a.mp4", 40, frames=3)
    code = contact_sheet.main(["--videos", str(tmp_path / "a.mp4"), "--frames", "7", "--out", str(tmp_path / "s.png")])
    assert code == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'a.mp4'} has no frame 7"
