"""NAVSIM/OpenScene and PhysicalAI-AV sources: fixtures in the real on-disk formats → TFDS ArrayRecord →
read back, compared with values computed independently (closed-form arc, direct image/video decoding)."""

import io
import os
import pickle

import numpy as np
import pytest

from data_pipelines import builders, fixtures, pipeline, schema
from data_pipelines.sources import navsim, physicalai


def _clips(data_dir):
    return {c.clip_id: c for c in pipeline.iter_clips(data_dir)}


def _rot_z(a):
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


@pytest.fixture(scope="module")
def navsim_src(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("navsim_src"))
    truth = fixtures.write_navsim_fixture(root, frames_per_log=16, image_hw=(24, 40), no_route_frames=(5,))
    return root, truth


def test_navsim_round_trip(navsim_src, tmp_path):
    from PIL import Image

    src, truth = navsim_src
    config = navsim.NavsimConfig(name="front", src_dir=src, image_size=None, frame_codec="png")
    out = builders.build(navsim.WamNavsim, config, str(tmp_path))
    clips = _clips(out)
    (log_name,) = truth["logs"]
    frames = pickle.load(open(os.path.join(src, "navsim_logs", "mini", f"{log_name}.pkl"), "rb"))
    # 16 frames, windows of 4 history + 8 future: current frames 3..7, frame 5 has no route.
    expected_current = [3, 4, 6, 7]
    assert sorted(clips) == sorted(frames[i]["token"] for i in expected_current)
    v, w = truth["speed"], truth["yaw_rate"]
    for cur in expected_current:
        clip = clips[frames[cur]["token"]]
        assert clip.source == "navsim" and clip.num_frames == 4 and clip.num_chunks == 1
        np.testing.assert_array_equal(clip.chunk_start, [3])
        np.testing.assert_allclose(clip.waypoints[0], fixtures.arc_relative(0.5 * np.arange(1, 9), v, w), atol=1e-4)
        np.testing.assert_allclose(clip.history_waypoints[0], fixtures.arc_relative(0.5 * np.arange(-3, 1), v, w),
                                   atol=1e-4)
        np.testing.assert_allclose(clip.ego_pose, fixtures.arc_relative(0.5 * np.arange(4), v, w), atol=1e-4)
        np.testing.assert_allclose(clip.ego_velocity, np.tile([v, 0.0], (4, 1)))
        np.testing.assert_allclose(clip.ego_state, [[v, 0.0, w / v]], rtol=1e-5, atol=1e-6)
        assert clip.waypoint_dt == 0.5
        assert clip.command.tolist() == [cur % 3]  # one-hot index: left/straight/right cycle in the fixture
        np.testing.assert_array_equal(clip.timestamps_us, [frames[i]["timestamp"] for i in range(cur - 3, cur + 1)])
        for t, i in enumerate(range(cur - 3, cur + 1)):
            path = os.path.join(src, "sensor_blobs", "mini", frames[i]["cams"]["CAM_F0"]["data_path"])
            np.testing.assert_array_equal(clip.frames[t], np.asarray(Image.open(path).convert("RGB")))
        np.testing.assert_allclose(clip.intrinsics[0], [[32, 0, 20], [0, 32, 12], [0, 0, 1]])
        ext = np.eye(4)
        ext[:3, :3] = _rot_z(-0.8)
        ext[:3, 3] = [0.5 + 1.5, 0.0, 1.5 + 1.8]  # camera in lidar frame, lidar 1.5 m ahead / 1.8 m above the axle
        np.testing.assert_allclose(clip.extrinsics[0], ext, atol=1e-6)
        assert clip.meta["log_name"] == log_name

    # The TFDS read path gives the same bytes the pipeline decodes.
    import tensorflow_datasets as tfds

    source = tfds.builder_from_directory(out).as_data_source("train")
    assert schema.deserialize_clip(source[0]["clip"]).clip_id in clips


def test_navsim_stitched_view(tmp_path):
    from PIL import Image

    src = str(tmp_path / "src")
    truth = fixtures.write_navsim_fixture(src, frames_per_log=20, image_hw=(24, 40))
    config = navsim.NavsimConfig(name="stitched", src_dir=src, camera="stitched", crop_rows=2, crop_side_cols=4,
                                 image_size=(10, 52), num_chunks=2, frame_codec="png")
    clips = list(pipeline.iter_clips(builders.build(navsim.WamNavsim, config, str(tmp_path / "out"))))
    assert len(clips) == 1  # 20 frames = 4 history + 8 + 8
    clip = clips[0]
    np.testing.assert_array_equal(clip.chunk_start, [3, 11])
    assert clip.frames.shape == (12, 10, 52, 3) and clip.camera_names == ["CAM_L0", "CAM_F0", "CAM_R0"]
    v, w = truth["speed"], truth["yaw_rate"]
    for n in range(2):
        np.testing.assert_allclose(clip.waypoints[n], fixtures.arc_relative(0.5 * np.arange(1, 9), v, w), atol=1e-4)
    (log_name,) = truth["logs"]
    frames = pickle.load(open(os.path.join(src, "navsim_logs", "mini", f"{log_name}.pkl"), "rb"))
    assert clip.command.tolist() == [3 % 3, 11 % 3]
    images = {c: np.asarray(Image.open(os.path.join(src, "sensor_blobs", "mini", frames[0]["cams"][c]["data_path"])))
              for c in ("CAM_L0", "CAM_F0", "CAM_R0")}
    stitched = np.concatenate([images["CAM_L0"][2:-2, 4:-4], images["CAM_F0"][2:-2], images["CAM_R0"][2:-2, 4:-4]], 1)
    assert stitched.shape == (20, 104, 3)
    expected = np.asarray(Image.fromarray(stitched).resize((52, 10), Image.BILINEAR))
    np.testing.assert_array_equal(clip.frames[0], expected)
    # Front camera: fx = 32 px at half scale; its principal point moves right by the left image (32 px).
    np.testing.assert_allclose(clip.intrinsics[1], [[16, 0, (20 + 32) / 2], [0, 16, (12 - 2) / 2], [0, 0, 1]])
    np.testing.assert_allclose(clip.intrinsics[0], [[16, 0, (20 - 4) / 2], [0, 16, 5], [0, 0, 1]])


@pytest.fixture(scope="module")
def pai_src(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pai_src"))
    return root, fixtures.write_physicalai_fixture(root)


def test_physicalai_round_trip(pai_src, tmp_path):
    import av

    src, truth = pai_src
    config = physicalai.PhysicalAIConfig(name="front", src_dir=src, image_size=None, frame_codec="png")
    clips = _clips(builders.build(physicalai.WamPhysicalai, config, str(tmp_path)))
    assert sorted(clips) == sorted(truth["clips"])
    v = truth["speed"]
    frame_ts = truth["frame_timestamps"]
    want = 5_100_000 + np.arange(-3, 1) * 100_000
    idx = np.searchsorted(frame_ts, want, side="right") - 1  # frame at or before
    for clip_id, clip in clips.items():
        w = truth["clips"][clip_id]["yaw_rate"]
        np.testing.assert_allclose(clip.waypoints[0], fixtures.arc_relative(0.1 * np.arange(1, 65), v, w), atol=1e-4)
        np.testing.assert_allclose(clip.history_waypoints[0], fixtures.arc_relative(0.1 * np.arange(-15, 1), v, w),
                                   atol=1e-4)
        assert clip.waypoints.shape == (1, 64, 3) and clip.history_waypoints.shape == (1, 16, 3)
        assert clip.command.tolist() == [0 if w > 0 else 2]  # arcs end ~10 m to the side
        np.testing.assert_array_equal(clip.timestamps_us, frame_ts[idx])
        dt = (frame_ts[idx] - frame_ts[idx[0]]) * 1e-6
        np.testing.assert_allclose(clip.ego_pose, fixtures.arc_relative(dt, v, w), atol=1e-4)
        np.testing.assert_allclose(clip.ego_velocity, np.tile([v, 0.0], (4, 1)), atol=0.02)
        np.testing.assert_allclose(clip.ego_state, [[v, 0.0, w / v]], atol=0.02)
        with av.open(io.BytesIO(truth["videos"][clip_id])) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        np.testing.assert_array_equal(clip.frames, np.stack([decoded[i] for i in idx]))
        np.testing.assert_allclose(clip.frames[..., 0].mean(axis=(1, 2)), (8 * idx) % 256, atol=4)
        np.testing.assert_allclose(clip.intrinsics[0], [[30, 0, 32.5], [0, 30, 17.5], [0, 0, 1]])
        np.testing.assert_allclose(clip.extrinsics[0][:3, 3], [1.7, 0.0, 1.4])
        assert clip.meta["t0_us"] == 5_100_000 and clip.waypoint_dt == pytest.approx(0.1)


def test_physicalai_event_t0s_and_coverage(pai_src, tmp_path):
    src, truth = pai_src
    config = physicalai.PhysicalAIConfig(name="events", src_dir=src, image_size=(18, 32), use_event_t0s=True,
                                         frame_codec="png")
    clips = _clips(builders.build(physicalai.WamPhysicalai, config, str(tmp_path)))
    assert sorted(clips) == sorted(f"{c}@{t}" for c in truth["clips"] for t in (5_100_000, 9_000_000))
    assert all(c.frames.shape == (4, 18, 32, 3) for c in clips.values())
    # A t0 whose future runs past the 20 s of egomotion is left out.
    late = physicalai.PhysicalAIConfig(name="late", src_dir=src, t0_us=15_000_000, image_size=None)
    with pytest.raises(ValueError, match="no clips"):
        builders.build(physicalai.WamPhysicalai, late, str(tmp_path / "late"))
