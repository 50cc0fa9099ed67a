"""Writing and reading short RGB clips as H.264 mp4 (PyAV), e.g. decoded rollouts.

Frames are uint8 [T, H, W, 3]. H.264 in yuv420p needs even width and height: odd sizes are padded by repeating
the last row / column, so a clip read back has the padded (even) size; `write_video` returns it.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np


class VideoIOError(ValueError):
    """A clip could not be written or read; the message says which file and why."""


def to_uint8(video) -> np.ndarray:
    """Float video in [-1, 1] (the VAE's range; any leading dims, channels last) -> uint8 in [0, 255]."""
    video = np.asarray(video, np.float32)
    return np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def write_video(path: str, frames, fps: float = 10.0, *, codec: str = "libx264", crf: int = 18) -> tuple[int, int]:
    """Writes uint8 frames [T, H, W, 3] to `path` (mp4, yuv420p). Returns the stored (height, width).

    crf: H.264 quality, 0 (lossless luma) .. 51; 18 is visually lossless."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise VideoIOError(f"{path}: frames must be uint8 [T, H, W, 3], got dtype {frames.dtype} "
                           "(convert [-1, 1] floats with video_io.to_uint8)")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise VideoIOError(f"{path}: frames must be [T >= 1, H, W, 3] RGB, got shape {frames.shape}")
    if codec not in av.codecs_available:
        raise VideoIOError(f"{path}: codec {codec!r} is not available in this PyAV build")
    frames = _pad_even(frames)
    _, height, width, _ = frames.shape
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush delayed frames
    return height, width


def read_video(path: str) -> np.ndarray:
    """Reads every frame of a video file as uint8 [T, H, W, 3] RGB."""
    if not os.path.exists(path):
        raise VideoIOError(f"no video at {path!r}")
    try:
        with av.open(path) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as e:
        raise VideoIOError(f"{path}: not a readable video ({e})") from e
    if not frames:
        raise VideoIOError(f"{path}: the file holds no video frames")
    return np.stack(frames)
