"""Tiny real media files for the multimodal tests: PNGs (PIL), WAVs (soundfile), MP4/WebM clips (PyAV)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np


def png_bytes(colour: tuple[int, int, int] = (255, 0, 0), size: int = 8) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(frequency: float = 440.0, sampling_rate: int = 16_000, seconds: float = 0.1) -> bytes:
    import soundfile

    t = np.arange(int(sampling_rate * seconds)) / sampling_rate
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), sampling_rate, format="WAV")
    return buffer.getvalue()


def video_bytes(frames: int = 10, size: int = 32, fps: int = 10, container: str = "mp4") -> bytes:
    """A clip of a white dot moving left to right: ``mp4`` (H.264/MPEG-4) or ``webm`` (VP8/VP9)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        codec = {"mp4": "mpeg4", "webm": "libvpx"}[container]
        stream = output.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for index in range(frames):
            pixels = np.zeros((size, size, 3), np.uint8)
            x = (index * (size - 4)) // max(frames - 1, 1)
            pixels[size // 2 - 2 : size // 2 + 2, x : x + 4] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()
