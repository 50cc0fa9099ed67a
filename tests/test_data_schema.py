"""Clip record schema: serialisation round trip and the errors for bad records (no TFDS, no files)."""

import dataclasses

import msgpack
import numpy as np
import pytest

from data_pipelines import fixtures, schema


def _full_clip():
    clip = fixtures.synthetic_clip(7, num_chunks=3, intents=("keep lane", "slow down"), guidance_shape=(2, 5),
                                   latent_shape=(2, 3, 4))
    clip.history_waypoints = np.arange(3 * 4 * 3, dtype=np.float32).reshape(3, 4, 3)
    clip.actions = np.linspace(-1, 1, clip.num_frames * 2, dtype=np.float32).reshape(-1, 2)
    clip.camera_names = ["CAM_F0"]
    clip.intrinsics = np.eye(3, dtype=np.float32)[None]
    clip.extrinsics = np.eye(4, dtype=np.float32)[None]
    return clip


def _assert_equal(a: schema.ClipRecord, b: schema.ClipRecord):
    for f in dataclasses.fields(schema.ClipRecord):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


@pytest.mark.parametrize("codec", ["raw", "png"])
def test_round_trip_is_exact(codec):
    clip = _full_clip()
    back = schema.deserialize_clip(schema.serialize_clip(clip, frame_codec=codec))
    _assert_equal(clip, back)


def test_jpeg_round_trip_is_close_and_smaller():
    clip = fixtures.synthetic_clip(1, image_hw=(32, 48))
    clip.frames[:] = np.linspace(0, 255, 48, dtype=np.uint8)[None, None, :, None]  # smooth: JPEG-friendly
    data = schema.serialize_clip(clip, frame_codec="jpeg", jpeg_quality=95)
    back = schema.deserialize_clip(data)
    assert np.abs(back.frames.astype(int) - clip.frames.astype(int)).mean() < 3
    assert len(data) < len(schema.serialize_clip(clip, frame_codec="raw"))
    np.testing.assert_array_equal(back.waypoints, clip.waypoints)


def test_peek_without_frames_still_checks_shapes():
    clip = _full_clip()
    data = schema.serialize_clip(clip)
    light = schema.deserialize_clip(data, decode_frames=False)
    assert light.frames is None and light.clip_id == clip.clip_id
    assert schema.peek_header(data) == {"schema_version": 1, "source": "synthetic", "clip_id": clip.clip_id}


def _tamper(data: bytes, fn) -> bytes:
    payload = msgpack.unpackb(data[len(schema.MAGIC):], raw=False)
    fn(payload)
    return schema.MAGIC + msgpack.packb(payload, use_bin_type=True)


def test_other_schema_version_is_rejected():
    data = _tamper(schema.serialize_clip(_full_clip()), lambda p: p.update(schema_version=2))
    with pytest.raises(schema.RecordError, match="schema version 2"):
        schema.deserialize_clip(data)


def test_wrong_shape_and_dtype_are_rejected():
    clip = _full_clip()
    bad = dataclasses.replace(clip, waypoints=clip.waypoints[:, :, :2].copy())
    with pytest.raises(schema.RecordError, match="'waypoints' has shape"):
        schema.serialize_clip(bad)
    data = schema.serialize_clip(bad, validate=False)
    with pytest.raises(schema.RecordError, match="'waypoints' has shape"):
        schema.deserialize_clip(data)
    bad = dataclasses.replace(clip, command=clip.command.astype(np.int64))
    with pytest.raises(schema.RecordError, match="'command' has dtype int64"):
        schema.deserialize_clip(schema.serialize_clip(bad, validate=False))
    bad = dataclasses.replace(clip, command=np.array([0, 1, 7], np.int32))
    with pytest.raises(schema.RecordError, match="command values"):
        schema.validate_clip(bad)


def test_spec_mismatch_and_garbage_are_rejected_with_location():
    clip = _full_clip()
    spec = clip.spec()
    other = fixtures.synthetic_clip(2, num_chunks=3, image_hw=(8, 10), intents=("keep lane",),
                                    guidance_shape=(2, 5), latent_shape=(2, 3, 4))
    other.history_waypoints, other.actions = clip.history_waypoints, clip.actions
    other.camera_names, other.intrinsics, other.extrinsics = clip.camera_names, clip.intrinsics, clip.extrinsics
    with pytest.raises(schema.RecordError, match=r"'frames' has shape \(7, 8, 10, 3\)"):
        schema.validate_clip(other, spec)
    with pytest.raises(schema.RecordError) as info:
        schema.deserialize_clip(b"\x00garbage")
    located = info.value.at("/data/x.array_record-00000-of-00001", 12)
    assert "/data/x.array_record-00000-of-00001, record 12: not a clip record" in str(located)


def test_local_frame_and_command_helpers():
    origin = np.array([10.0, 5.0, np.pi / 2])
    local = schema.to_local_frame(np.array([[10.0, 7.0, np.pi / 2 + 0.1], [8.0, 5.0, 0.0]]), origin)
    np.testing.assert_allclose(local, [[2.0, 0.0, 0.1], [0.0, 2.0, -np.pi / 2]], atol=1e-12)
    wp = np.zeros((4, 3))
    wp[-1, 1] = 3.0
    assert schema.command_from_waypoints(wp) == 0
    wp[-1, 1] = -3.0
    assert schema.command_from_waypoints(wp) == 2
    wp[-1, 1] = 0.5
    assert schema.command_from_waypoints(wp) == 1
