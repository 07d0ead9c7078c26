"""Real media files made with PyAV for the tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_video(
    path: Path,
    *,
    frames: int = 30,
    width: int = 96,
    height: int = 64,
    fps: int = 25,
    audio: bool = True,
    codec: str = "libx264",
    display_rotation: int = 0,
) -> Path:
    """A clip whose frame i shows a bar at x = 3 i (so frames are distinguishable), with a
    48 kHz AAC sine track of the same duration when ``audio``. ``display_rotation`` (a multiple
    of 90): the pictures are stored turned clockwise by it, with a display matrix that turns them
    back, as phones store portrait video; the clip shows ``width`` x ``height`` upright."""
    turns = display_rotation // 90
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height = (height, width) if turns % 2 else (width, height)
        video.pix_fmt = "yuv420p"
        if display_rotation:
            video.set_display_rotation(display_rotation)
        sound = out.add_stream("aac", rate=48000, layout="mono") if audio else None
        samples_done = 0
        for i in range(frames):
            image = np.full((height, width, 3), 40, np.uint8)
            image[:, (i * 3) % width] = 255
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(image, -turns)), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
            if sound is not None:
                end = int((i + 1) * 48000 / fps)
                t = np.arange(samples_done, end) / 48000
                chunk = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
                af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                af.sample_rate, af.pts = 48000, samples_done
                samples_done = end
                for packet in sound.encode(af):
                    out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            for packet in sound.encode(None):
                out.mux(packet)
    return path


def video_timestamps(path: Path) -> list[float]:
    """Presentation time in seconds of every decoded video frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(f.pts * stream.time_base) for f in container.decode(stream)]


def audio_packets(path: Path) -> tuple[int, float]:
    """(packet count, summed duration in seconds) of the first audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        packets = [p for p in container.demux(stream) if p.dts is not None]
        return len(packets), float(sum(p.duration for p in packets) * stream.time_base)
