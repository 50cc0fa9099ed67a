import imageio.v3 as iio
import numpy as np
import pytest

from wam_jax.tools import video_io


def _clip(t, h, w, seed=0):
    """A smooth moving gradient (compresses well, so a lossy round trip stays close)."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 4 + 9 * i) % 256, (y * 4 + 5 * i) % 256, np.full_like(x, 40 * i % 256)], -1)
              for i in range(t)]
    return np.asarray(frames, np.uint8)


def test_roundtrip_even_size(tmp_path):
    frames = _clip(7, 32, 48)
    path = str(tmp_path / "clip.mp4")
    assert video_io.write_video(path, frames, fps=8) == (32, 48)
    back = video_io.read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 6
    # A standard reader (imageio's pyav plugin) agrees on frame count and size.
    assert iio.imread(path, plugin="pyav").shape == frames.shape


def test_odd_size_is_padded_to_even(tmp_path):
    frames = _clip(3, 17, 31)
    path = str(tmp_path / "sub" / "odd.mp4")
    assert video_io.write_video(path, frames) == (18, 32)
    back = video_io.read_video(path)
    assert back.shape == (3, 18, 32, 3)
    assert np.abs(back[:, :17, :31].astype(int) - frames).mean() < 8


def test_to_uint8_range():
    v = video_io.to_uint8(np.array([-1.5, -1.0, 0.0, 1.0, 2.0]))
    assert v.tolist() == [0, 0, 128, 255, 255]


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(video_io.VideoIOError, match="uint8"):
        video_io.write_video(str(tmp_path / "a.mp4"), np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(video_io.VideoIOError, match=r"\(2, 8, 8\)"):
        video_io.write_video(str(tmp_path / "a.mp4"), np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(video_io.VideoIOError, match="no video"):
        video_io.read_video(str(tmp_path / "missing.mp4"))
