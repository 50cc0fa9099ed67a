"""The clip record: one driving clip as the trainer sees it, versioned and validated.

Every source (highway-env, NAVSIM/OpenScene, PhysicalAI-AV) writes the same record, so the Grain pipeline and
the trainer never look at source formats. A record is one clip of `T` frames split into `N` chunks; each chunk
starts at a frame (`chunk_start[n]`) and carries the ego's future waypoints expressed in the ego frame at that
frame, the driving command and, optionally, an intent sentence and a guidance embedding.

Schema version 1 (`SCHEMA_VERSION`) — fields of `ClipRecord`:

| field                 | dtype    | shape            | meaning                                                        |
|-----------------------|----------|------------------|----------------------------------------------------------------|
| `source`              | str      |                  | source id: "highway", "navsim", "physicalai", ...              |
| `clip_id`             | str      |                  | unique id within the source (scene token, clip uuid, seed...)  |
| `timestamps_us`       | int64    | [T]              | frame timestamps in microseconds                               |
| `ego_pose`            | float32  | [T, 3]           | (x, y, heading) in the clip's first-frame ego frame            |
| `ego_velocity`        | float32  | [T, 2]           | (v_forward, v_left) in m/s, in each frame's own ego frame      |
| `chunk_start`         | int32    | [N]              | frame index where chunk n starts; increasing, evenly spaced    |
| `waypoints`           | float32  | [N, n_wp, 3]     | future (x fwd, y left, heading) in the ego frame at chunk start |
| `waypoint_dt`         | float    |                  | seconds between consecutive waypoints                          |
| `command`             | int32    | [N]              | 0 left, 1 straight, 2 right, 3 unknown (`COMMANDS`)            |
| `frames`              | uint8    | [T, H, W, 3]     | RGB, front camera or a stitched view (optional if latents)     |
| `latents`             | float32  | [T', h, w, z]    | pre-encoded VAE latents of `frames` (optional)                 |
| `latent_chunk_start`  | int32    | [N]              | latent-frame index of each chunk start (with `latents`)        |
| `intent`              | str list | [N]              | intent sentence per chunk (optional)                           |
| `guidance`            | float32  | [N, L, D]        | guidance (text) embedding per chunk (optional)                 |
| `history_waypoints`   | float32  | [N, n_hist, 3]   | past poses in the chunk-start frame, oldest first (optional)   |
| `actions`             | float32  | [T, A]           | low-level actions per frame, e.g. (accel, steer) (optional)    |
| `camera_names`        | str list | [C]              | cameras composing `frames`, left to right (optional)           |
| `intrinsics`          | float32  | [C, 3, 3]        | pinhole K in pixels of the stored `frames` (optional)          |
| `extrinsics`          | float32  | [C, 4, 4]        | camera-to-ego transform (optional)                             |
| `ego_state`           | float32  | [N, 3]           | (speed m/s, acceleration m/s², curvature 1/m) at chunk n's start |
|                       |          |                  | frame, the last one observed before its waypoints (optional)   |
| `meta`                | dict     |                  | JSON-able free-form provenance (sim config, t0, log name...)   |

Serialised form (`serialize_clip` / `deserialize_clip`): the bytes `MAGIC` followed by one msgpack map
    {"schema_version": int, "source": str, "clip_id": str,
     "arrays":  {name: [dtype_str, shape_list, raw_little_endian_bytes]},
     "frames":  {"codec": "raw"|"png"|"jpeg", "shape": [T, H, W, 3], "data": [bytes per frame] or bytes},
     "strings": {name: [str, ...]}, "scalars": {"waypoint_dt": float}, "meta": json_str}
Frames are compressed per frame (PNG is lossless, JPEG lossy); decoding happens in the data-loading workers.
The TFDS builders store these bytes in the `clip` feature of their ArrayRecord files (see `builders.py`).

A record of another schema version, or with a wrong shape or dtype, is rejected with `RecordError`, whose
message names the file and record index when the caller knows them.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np

SCHEMA_VERSION = 1
MAGIC = b"WAMCLIP"
COMMANDS = ("left", "straight", "right", "unknown")
COMMAND_UNKNOWN = 3
FRAME_CODECS = ("raw", "png", "jpeg")

# Array fields with their dtype; `frames` is handled separately (it may be compressed).
_ARRAY_DTYPES = {
    "timestamps_us": np.int64,
    "ego_pose": np.float32,
    "ego_velocity": np.float32,
    "chunk_start": np.int32,
    "waypoints": np.float32,
    "command": np.int32,
    "latents": np.float32,
    "latent_chunk_start": np.int32,
    "guidance": np.float32,
    "history_waypoints": np.float32,
    "actions": np.float32,
    "intrinsics": np.float32,
    "extrinsics": np.float32,
    "ego_state": np.float32,
}
_STRING_LISTS = ("intent", "camera_names")


class RecordError(ValueError):
    """A clip record is malformed; the message names the file and record index when known."""

    def __init__(self, problem: str, file: str | None = None, index: int | None = None):
        self.problem = problem
        self.file = file
        self.index = index
        where = ""
        if file is not None:
            where = f"{file}, record {index}: " if index is not None else f"{file}: "
        super().__init__(where + problem)

    def __reduce__(self):  # keeps file and index when the error crosses a process boundary
        return (RecordError, (self.problem, self.file, self.index))

    def at(self, file: str, index: int) -> "RecordError":
        """The same problem, located at `file` record `index`."""
        return RecordError(self.problem, file, index)


@dataclasses.dataclass
class ClipRecord:
    """One clip; see the module docstring for the meaning, dtype and shape of each field."""

    source: str
    clip_id: str
    timestamps_us: np.ndarray
    ego_pose: np.ndarray
    ego_velocity: np.ndarray
    chunk_start: np.ndarray
    waypoints: np.ndarray
    waypoint_dt: float
    command: np.ndarray
    frames: np.ndarray | None = None
    latents: np.ndarray | None = None
    latent_chunk_start: np.ndarray | None = None
    intent: list[str] | None = None
    guidance: np.ndarray | None = None
    history_waypoints: np.ndarray | None = None
    actions: np.ndarray | None = None
    camera_names: list[str] | None = None
    intrinsics: np.ndarray | None = None
    extrinsics: np.ndarray | None = None
    ego_state: np.ndarray | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_frames(self) -> int:
        return int(self.timestamps_us.shape[0])

    @property
    def num_chunks(self) -> int:
        return int(self.chunk_start.shape[0])

    def spec(self) -> dict[str, Any]:
        """The shape signature every clip of one dataset shares (stored in the dataset's metadata)."""
        shapes = {name: list(getattr(self, name).shape) for name in list(_ARRAY_DTYPES) + ["frames"]
                  if getattr(self, name) is not None}
        return {
            "schema_version": self.schema_version,
            "source": self.source,
            "shapes": shapes,
            "has_intent": self.intent is not None,
            "waypoint_dt": float(self.waypoint_dt),
            "chunk_start": self.chunk_start.tolist(),
            "latent_chunk_start": None if self.latent_chunk_start is None else self.latent_chunk_start.tolist(),
        }


def _shape_error(name: str, got: Sequence[int], want: str) -> RecordError:
    return RecordError(f"field {name!r} has shape {tuple(got)}, expected {want}")


def _check_finite(name: str, value: np.ndarray) -> None:
    bad = ~np.isfinite(value)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RecordError(f"field {name!r} has {int(bad.sum())} non-finite value(s) (NaN/inf), the first "
                          f"{value[first]} at index {list(first)}")


def validate_clip(clip: ClipRecord, spec: Mapping[str, Any] | None = None) -> ClipRecord:
    """Checks version, dtypes, shapes and their mutual consistency; with `spec`, also the dataset's shapes.

    Raises `RecordError` (without a location; callers add it with `.at(file, index)`).
    """
    if clip.schema_version != SCHEMA_VERSION:
        raise RecordError(f"schema version {clip.schema_version}, this reader understands version {SCHEMA_VERSION}; "
                          "rebuild the dataset with `python -m data_pipelines build`")
    for name, dtype in _ARRAY_DTYPES.items():
        value = getattr(clip, name)
        if value is None:
            continue
        if not isinstance(value, np.ndarray):
            raise RecordError(f"field {name!r} is a {type(value).__name__}, expected a numpy array")
        if value.dtype != dtype:
            raise RecordError(f"field {name!r} has dtype {value.dtype}, expected {np.dtype(dtype)}")
    if clip.frames is not None and (not isinstance(clip.frames, np.ndarray) or clip.frames.dtype != np.uint8):
        raise RecordError(f"field 'frames' must be a uint8 array, got {getattr(clip.frames, 'dtype', type(clip.frames))}")
    if clip.frames is None and clip.latents is None:
        raise RecordError("clip has neither 'frames' nor 'latents'")
    for name, dtype in _ARRAY_DTYPES.items():
        value = getattr(clip, name)
        if value is not None and np.issubdtype(dtype, np.floating):
            _check_finite(name, value)

    t = clip.timestamps_us.shape[0] if clip.timestamps_us.ndim == 1 else -1
    if t < 1:
        raise _shape_error("timestamps_us", clip.timestamps_us.shape, "[T] with T >= 1")
    if clip.ego_pose.shape != (t, 3):
        raise _shape_error("ego_pose", clip.ego_pose.shape, f"[T={t}, 3]")
    if clip.ego_velocity.shape != (t, 2):
        raise _shape_error("ego_velocity", clip.ego_velocity.shape, f"[T={t}, 2]")
    if clip.frames is not None and (clip.frames.ndim != 4 or clip.frames.shape[0] != t or clip.frames.shape[3] != 3):
        raise _shape_error("frames", clip.frames.shape, f"[T={t}, H, W, 3]")
    n = clip.chunk_start.shape[0] if clip.chunk_start.ndim == 1 else -1
    if n < 1:
        raise _shape_error("chunk_start", clip.chunk_start.shape, "[N] with N >= 1")
    if np.any(clip.chunk_start < 0) or np.any(clip.chunk_start >= t) or np.any(np.diff(clip.chunk_start) <= 0):
        raise RecordError(f"chunk_start {clip.chunk_start.tolist()} must increase within [0, T={t})")
    if n > 2 and len(set(np.diff(clip.chunk_start).tolist())) != 1:
        raise RecordError(f"chunk_start {clip.chunk_start.tolist()} must be evenly spaced")
    if clip.waypoints.ndim != 3 or clip.waypoints.shape[0] != n or clip.waypoints.shape[2] != 3:
        raise _shape_error("waypoints", clip.waypoints.shape, f"[N={n}, n_wp, 3]")
    if clip.command.shape != (n,):
        raise _shape_error("command", clip.command.shape, f"[N={n}]")
    if np.any((clip.command < 0) | (clip.command >= len(COMMANDS))):
        raise RecordError(f"command values {clip.command.tolist()} outside 0..{len(COMMANDS) - 1} {COMMANDS}")
    if not np.isfinite(clip.waypoint_dt) or clip.waypoint_dt <= 0:
        raise RecordError(f"waypoint_dt must be a positive number of seconds, got {clip.waypoint_dt}")
    if clip.latents is not None:
        if clip.latents.ndim != 4:
            raise _shape_error("latents", clip.latents.shape, "[T', h, w, z]")
        if clip.latent_chunk_start is None or clip.latent_chunk_start.shape != (n,):
            got = None if clip.latent_chunk_start is None else clip.latent_chunk_start.shape
            raise RecordError(f"'latents' needs 'latent_chunk_start' of shape [N={n}], got {got}")
        if np.any(clip.latent_chunk_start >= clip.latents.shape[0]) or np.any(np.diff(clip.latent_chunk_start) <= 0):
            raise RecordError(f"latent_chunk_start {clip.latent_chunk_start.tolist()} must increase within "
                              f"[0, T'={clip.latents.shape[0]})")
    if clip.intent is not None and (len(clip.intent) != n or not all(isinstance(s, str) for s in clip.intent)):
        raise RecordError(f"'intent' must be {n} strings, got {clip.intent!r}")
    if clip.guidance is not None and (clip.guidance.ndim != 3 or clip.guidance.shape[0] != n):
        raise _shape_error("guidance", clip.guidance.shape, f"[N={n}, L, D]")
    if clip.history_waypoints is not None and (clip.history_waypoints.ndim != 3 or
                                               clip.history_waypoints.shape[0] != n or
                                               clip.history_waypoints.shape[2] != 3):
        raise _shape_error("history_waypoints", clip.history_waypoints.shape, f"[N={n}, n_hist, 3]")
    if clip.actions is not None and (clip.actions.ndim != 2 or clip.actions.shape[0] != t):
        raise _shape_error("actions", clip.actions.shape, f"[T={t}, A]")
    c = None if clip.camera_names is None else len(clip.camera_names)
    if clip.intrinsics is not None and (clip.intrinsics.shape[1:] != (3, 3) or (c is not None and clip.intrinsics.shape[0] != c)):
        raise _shape_error("intrinsics", clip.intrinsics.shape, f"[C={c}, 3, 3]")
    if clip.extrinsics is not None and (clip.extrinsics.shape[1:] != (4, 4) or (c is not None and clip.extrinsics.shape[0] != c)):
        raise _shape_error("extrinsics", clip.extrinsics.shape, f"[C={c}, 4, 4]")
    if clip.ego_state is not None and clip.ego_state.shape != (n, 3):
        raise _shape_error("ego_state", clip.ego_state.shape, f"[N={n}, 3] (speed, acceleration, curvature)")

    if spec is not None:
        want_shapes = spec.get("shapes", {})
        got = clip.spec()
        if spec.get("schema_version") != clip.schema_version:
            raise RecordError(f"schema version {clip.schema_version}, the dataset says {spec.get('schema_version')}")
        for name in sorted(set(want_shapes) | set(got["shapes"])):
            want = want_shapes.get(name)
            have = got["shapes"].get(name)
            if want is None or have is None:
                state = "missing" if have is None else "unexpected"
                raise RecordError(f"field {name!r} is {state}; every clip of this dataset must have the same fields "
                                  f"(dataset spec: {sorted(want_shapes)})")
            if list(want) != list(have):
                raise _shape_error(name, have, f"{list(want)} like the rest of this dataset")
        for name in ("chunk_start", "latent_chunk_start"):
            if name in spec and spec[name] != got[name]:
                raise RecordError(f"{name} {got[name]} differs from the dataset's {spec[name]}")
        if bool(spec.get("has_intent")) != got["has_intent"]:
            raise RecordError(f"'intent' presence {got['has_intent']} differs from the dataset's {spec.get('has_intent')}")
    return clip


# ------------------------------------------------------------------------------------------------ frame codecs

def encode_frame(frame: np.ndarray, codec: str, jpeg_quality: int = 95) -> bytes:
    """One [H, W, 3] uint8 frame to PNG/JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(frame))
    if codec == "png":
        image.save(buf, format="PNG", compress_level=1)
    elif codec == "jpeg":
        image.save(buf, format="JPEG", quality=jpeg_quality)
    else:
        raise ValueError(f"unknown frame codec {codec!r}; known: {FRAME_CODECS}")
    return buf.getvalue()


def decode_frame(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes to an [H, W, 3] uint8 frame."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# ------------------------------------------------------------------------------------------------ (de)serialise

def _pack_array(a: np.ndarray) -> list:
    a = np.ascontiguousarray(a)
    little = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return [little.dtype.str, list(a.shape), little.tobytes()]


def _unpack_array(name: str, packed: Any) -> np.ndarray:
    try:
        dtype_str, shape, data = packed
        dtype = np.dtype(dtype_str)
        count = int(np.prod(shape)) if len(shape) else 1
        if count * dtype.itemsize != len(data):
            raise ValueError(f"{len(data)} bytes for shape {shape} of {dtype_str}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)
    except (TypeError, ValueError) as e:
        raise RecordError(f"field {name!r} cannot be decoded ({e})") from None


def serialize_clip(clip: ClipRecord, frame_codec: str = "png", jpeg_quality: int = 95,
                   validate: bool = True) -> bytes:
    """Encodes a clip to bytes (see the module docstring for the layout). Validates first unless told not to."""
    if validate:
        validate_clip(clip)
    if frame_codec not in FRAME_CODECS:
        raise ValueError(f"unknown frame codec {frame_codec!r}; known: {FRAME_CODECS}")
    arrays = {name: _pack_array(getattr(clip, name)) for name in _ARRAY_DTYPES if getattr(clip, name) is not None}
    payload: dict[str, Any] = {
        "schema_version": int(clip.schema_version),
        "source": clip.source,
        "clip_id": clip.clip_id,
        "arrays": arrays,
        "strings": {name: list(getattr(clip, name)) for name in _STRING_LISTS if getattr(clip, name) is not None},
        "scalars": {"waypoint_dt": float(clip.waypoint_dt)},
        "meta": json.dumps(clip.meta, sort_keys=True),
    }
    if clip.frames is not None:
        frames = np.asarray(clip.frames)
        if frame_codec == "raw":
            data: Any = np.ascontiguousarray(frames).tobytes()
        else:
            data = [encode_frame(f, frame_codec, jpeg_quality) for f in frames]
        payload["frames"] = {"codec": frame_codec, "shape": list(frames.shape), "data": data}
    return MAGIC + msgpack.packb(payload, use_bin_type=True)


def peek_header(data: bytes) -> dict[str, Any]:
    """schema_version, source and clip_id of serialised bytes, without decoding arrays or frames."""
    payload = _unpack_payload(data)
    return {k: payload.get(k) for k in ("schema_version", "source", "clip_id")}


def _unpack_payload(data: bytes) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)) or not bytes(data[:len(MAGIC)]) == MAGIC:
        head = bytes(data[:16]) if isinstance(data, (bytes, bytearray, memoryview)) else type(data).__name__
        raise RecordError(f"not a clip record (starts with {head!r}, expected {MAGIC!r}); the file is corrupted, "
                          "truncated, or was not written by data_pipelines")
    try:
        payload = msgpack.unpackb(bytes(data[len(MAGIC):]), raw=False)
    except Exception as e:  # msgpack raises several unrelated types on garbage.
        raise RecordError(f"clip record bytes are corrupted ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict):
        raise RecordError("clip record payload is not a map")
    return payload


def deserialize_clip(data: bytes, decode_frames: bool = True, spec: Mapping[str, Any] | None = None) -> ClipRecord:
    """Bytes to a validated `ClipRecord`. With `decode_frames=False`, `frames` is left as None (cheap peek)."""
    payload = _unpack_payload(data)
    version = payload.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(f"schema version {version}, this reader understands version {SCHEMA_VERSION}; "
                          "rebuild the dataset with `python -m data_pipelines build`")
    try:
        arrays = {name: _unpack_array(name, value) for name, value in payload["arrays"].items()}
        unknown = sorted(set(arrays) - set(_ARRAY_DTYPES))
        if unknown:
            raise RecordError(f"unknown field(s) {unknown} for schema version {SCHEMA_VERSION}")
        frames = None
        if "frames" in payload and decode_frames:
            frames = _decode_frames(payload["frames"])
        clip = ClipRecord(
            source=payload["source"], clip_id=payload["clip_id"],
            waypoint_dt=float(payload["scalars"]["waypoint_dt"]),
            frames=frames,
            meta=json.loads(payload.get("meta") or "{}"),
            schema_version=version,
            **{name: list(v) for name, v in payload.get("strings", {}).items()},
            **arrays,
        )
    except KeyError as e:
        raise RecordError(f"required field {e.args[0]!r} is missing") from None
    except TypeError as e:  # a required array absent from the payload
        raise RecordError(f"clip record is incomplete ({e})") from None
    if not decode_frames and "frames" in payload:
        # Validate the rest against a stand-in of the right shape so shape checks still apply.
        shape = tuple(payload["frames"]["shape"])
        clip.frames = np.broadcast_to(np.zeros((), np.uint8), shape)
        validate_clip(clip, spec)
        clip.frames = None
        return clip
    return validate_clip(clip, spec)


def decode_frames_at(data: bytes, indices: Sequence[int]) -> np.ndarray:
    """uint8 [len(indices), H, W, 3]: only frames `indices` of a serialized record (a training window uses a few
    of a long clip's frames; decoding the rest would be most of the reading time). Same checks per frame as a
    full decode."""
    payload = _unpack_payload(data)
    if "frames" not in payload:
        raise RecordError("field 'frames' is missing")
    return _decode_frames(payload["frames"], indices)


def _decode_frames(packed: Mapping[str, Any], indices: Sequence[int] | None = None) -> np.ndarray:
    codec, shape, data = packed.get("codec"), tuple(packed.get("shape", ())), packed.get("data")
    if len(shape) != 4:
        raise RecordError(f"field 'frames' has shape {shape}, expected [T, H, W, 3]")
    if codec == "raw":
        if not isinstance(data, bytes) or len(data) != int(np.prod(shape)):
            raise RecordError(f"field 'frames' holds {len(data) if isinstance(data, bytes) else '?'} bytes, "
                              f"shape {list(shape)} needs {int(np.prod(shape))}")
        frames = np.frombuffer(data, np.uint8).reshape(shape)
        return (frames if indices is None else frames[np.asarray(indices, np.int64)]).copy()
    if codec not in FRAME_CODECS:
        raise RecordError(f"unknown frame codec {codec!r}; known: {FRAME_CODECS}")
    if not isinstance(data, list) or len(data) != shape[0]:
        raise RecordError(f"field 'frames' holds {len(data) if isinstance(data, list) else '?'} images, "
                          f"shape says T={shape[0]}")
    indices = range(shape[0]) if indices is None else [int(i) for i in indices]
    if any(not 0 <= i < shape[0] for i in indices):
        raise RecordError(f"frame indices {list(indices)} outside the record's {shape[0]} frames")
    out = np.empty((len(indices),) + shape[1:], np.uint8)
    for j, i in enumerate(indices):
        blob = data[i]
        try:
            frame = decode_frame(blob)
        except Exception as e:  # PIL raises various errors on broken images.
            raise RecordError(f"frame {i} cannot be decoded as {codec} ({type(e).__name__}: {e})") from None
        if frame.shape != shape[1:]:
            raise RecordError(f"frame {i} decodes to shape {frame.shape}, the record says {list(shape[1:])}")
        out[j] = frame
    return out


# ------------------------------------------------------------------------------------------------ geometry helpers

def ego_state(speed, acceleration, yaw_rate, min_speed: float = 0.5) -> np.ndarray:
    """(speed, acceleration, curvature) [..., 3] float32 from speed m/s, longitudinal acceleration m/s² and yaw
    rate rad/s; curvature = yaw rate / speed, 0 below `min_speed` (standing still has no defined curvature)."""
    speed, acceleration, yaw_rate = (np.asarray(a, np.float64) for a in (speed, acceleration, yaw_rate))
    moving = np.abs(speed) >= min_speed
    curvature = np.where(moving, yaw_rate / np.where(moving, speed, 1.0), 0.0)
    return np.stack(np.broadcast_arrays(speed, acceleration, curvature), -1).astype(np.float32)


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Angles to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def to_local_frame(poses: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Global (x, y, heading) poses [..., 3] to the frame of `origin` (x, y, heading): x forward, y left."""
    poses = np.asarray(poses, np.float64)
    origin = np.asarray(origin, np.float64)
    dx, dy = poses[..., 0] - origin[0], poses[..., 1] - origin[1]
    c, s = np.cos(origin[2]), np.sin(origin[2])
    return np.stack([c * dx + s * dy, -s * dx + c * dy, wrap_angle(poses[..., 2] - origin[2])], axis=-1)


def command_from_waypoints(waypoints: np.ndarray, lateral_threshold: float = 2.0) -> int:
    """A route-free driving command from a future path [n_wp, 3]: left/right when it ends more than
    `lateral_threshold` metres to the side, straight otherwise (for sources that have no command)."""
    y = float(waypoints[-1, 1])
    if y > lateral_threshold:
        return 0
    if y < -lateral_threshold:
        return 2
    return 1
