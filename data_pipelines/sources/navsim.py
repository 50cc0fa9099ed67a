"""NAVSIM / OpenScene logs → clip records.

On disk (OpenScene = nuPlan resampled to 2 Hz):
    <src>/navsim_logs/<split>/<log_name>.pkl      pickle of a list of frame dicts, in time order
    <src>/sensor_blobs/<split>/<cams[CAM].data_path>   JPEGs, data_path = "<log>/CAM_F0/<hex>.jpg"

A clip is a window of consecutive frames. With the defaults it is one NAVSIM scene: 4 history frames at 2 Hz
(the last one is the current frame, whose token is the scene token and the clip id), and one chunk whose
waypoints are the 8 future rear-axle poses at 0.5 s in the current rear-axle frame, and whose command is the
current frame's `driving_command` (one-hot left/straight/right/unknown). With `num_chunks > 1` the clip
extends by 8 frames (4 s) per extra chunk; `future_frames` appends frames after the last chunk start (for
world-model targets). Windows slide by `frame_interval`; with `require_route`, windows whose current frame
has no `roadblock_ids` are dropped (NAVSIM's `has_route` filter).

Camera: "front" = CAM_F0 (resized to `image_size` when given); "stitched" = CAM_L0 | CAM_F0 | CAM_R0 cropped
like TransFuser (rows `crop_rows` off top and bottom, `crop_side_cols` off the outer sides of L0/R0) then
resized to `image_size`. Intrinsics are adjusted to the stored image; extrinsics are camera→ego (rear axle)
from `sensor2lidar_*` and `lidar2ego_*`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any, Iterator, Sequence

import numpy as np

from data_pipelines import builders, schema

FRONT = ("CAM_F0",)
STITCHED = ("CAM_L0", "CAM_F0", "CAM_R0")
HZ = 2.0


@dataclasses.dataclass(eq=False)
class NavsimConfig(builders.ClipBuilderConfig):
    src_dir: str = ""
    log_split: str = "mini"           # navsim_logs/<log_split>, sensor_blobs/<log_split>
    history_frames: int = 4
    future_poses: int = 8             # waypoints per chunk, 0.5 s apart; also the chunk length in frames
    num_chunks: int = 1
    future_frames: int = 0
    frame_interval: int = 1           # window stride in frames
    camera: str = "front"             # "front" | "stitched"
    image_size: tuple[int, int] | None = (256, 512)   # (H, W); None keeps the source size
    crop_rows: int = 28
    crop_side_cols: int = 416
    require_route: bool = True
    frame_codec: str = "jpeg"


def quaternion_yaw(q: Sequence[float]) -> float:
    """Yaw of a (w, x, y, z) quaternion (pyquaternion's yaw_pitch_roll[0])."""
    w, x, y, z = (float(v) for v in q)
    return float(np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


def quaternion_matrix(q: Sequence[float]) -> np.ndarray:
    """3x3 rotation of a (w, x, y, z) quaternion."""
    w, x, y, z = (float(v) for v in q) if len(q) == 4 else (1.0, 0.0, 0.0, 0.0)
    n = np.sqrt(w * w + x * x + y * y + z * z) or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def global_pose(frame: dict[str, Any]) -> np.ndarray:
    """(x, y, yaw) of the rear axle in the global (map) frame."""
    t = frame["ego2global_translation"]
    return np.array([float(t[0]), float(t[1]), quaternion_yaw(frame["ego2global_rotation"])])


def load_log(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        frames = pickle.load(f)
    if not isinstance(frames, list) or (frames and not isinstance(frames[0], dict)):
        raise ValueError(f"{path}: expected a pickled list of frame dicts (OpenScene log), got {type(frames).__name__}")
    return frames


def list_logs(config: NavsimConfig) -> list[str]:
    log_dir = os.path.join(config.src_dir, "navsim_logs", config.log_split)
    if not os.path.isdir(log_dir):
        raise FileNotFoundError(f"NAVSIM logs not found at {log_dir}; --src must hold navsim_logs/<split>/*.pkl and "
                                "sensor_blobs/<split>/ (set log_split to the split name)")
    return sorted(os.path.join(log_dir, n) for n in os.listdir(log_dir) if n.endswith(".pkl"))


def window_length(config: NavsimConfig) -> tuple[int, int]:
    """(frames stored T, frames read incl. future poses) of one clip."""
    last_start = config.history_frames - 1 + (config.num_chunks - 1) * config.future_poses
    stored = last_start + 1 + config.future_frames
    needed = last_start + 1 + max(config.future_poses, config.future_frames)
    return stored, needed


def iter_windows(frames: list[dict[str, Any]], config: NavsimConfig) -> Iterator[int]:
    """Start indices of valid windows in one log."""
    _, needed = window_length(config)
    for start in range(0, len(frames) - needed + 1, config.frame_interval):
        current = frames[start + config.history_frames - 1]
        if config.require_route and not len(current.get("roadblock_ids") or []):
            continue
        yield start


def _load_image(path: str) -> np.ndarray:
    from PIL import Image

    if not os.path.exists(path):
        raise FileNotFoundError(f"camera image {path} is missing (sensor_blobs must match navsim_logs)")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _resize(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def camera_view(frame: dict[str, Any], sensor_root: str, config: NavsimConfig
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The stored image of one frame and, per camera, the affine pixel map (sx, sy, ox, oy): u' = sx*(u-ox)."""
    if config.camera not in ("front", "stitched"):
        raise ValueError(f"camera must be 'front' or 'stitched', got {config.camera!r}")
    names = FRONT if config.camera == "front" else STITCHED
    parts, maps, offset = [], [], 0
    for name in names:
        cam = frame["cams"][name]
        image = _load_image(os.path.join(sensor_root, cam["data_path"]))
        top = left = 0
        if config.camera == "stitched":
            r, c = config.crop_rows, config.crop_side_cols
            top = r
            image = image[r:image.shape[0] - r]
            if name != "CAM_F0":  # side cameras lose `c` columns on both sides, as in TransFuser
                left = c
                image = image[:, c:image.shape[1] - c]
        parts.append(image)
        maps.append(np.array([left - offset, top], np.float64))  # stitched u = u_raw - left + offset
        offset += image.shape[1]
    heights = {p.shape[0] for p in parts}
    if len(heights) != 1:
        raise ValueError(f"cameras {names} have different heights {sorted(heights)} after cropping")
    stitched = np.concatenate(parts, axis=1)
    out = _resize(stitched, config.image_size)
    sx, sy = out.shape[1] / stitched.shape[1], out.shape[0] / stitched.shape[0]
    return out, [np.array([sx, sy, m[0], m[1]]) for m in maps]


def _calibration(frame: dict[str, Any], maps: list[np.ndarray], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    intrinsics, extrinsics = [], []
    lidar2ego = np.eye(4)
    if "lidar2ego" in frame and np.shape(frame["lidar2ego"]) == (4, 4):
        lidar2ego = np.asarray(frame["lidar2ego"], np.float64)
    elif "lidar2ego_rotation" in frame:
        lidar2ego[:3, :3] = quaternion_matrix(frame["lidar2ego_rotation"])
        lidar2ego[:3, 3] = np.asarray(frame["lidar2ego_translation"], np.float64)
    for name, (sx, sy, ox, oy) in zip(names, maps):
        cam = frame["cams"][name]
        k = np.asarray(cam["cam_intrinsic"], np.float64).copy()
        k[0, :] *= sx
        k[0, 2] -= sx * ox
        k[1, :] *= sy
        k[1, 2] -= sy * oy
        intrinsics.append(k)
        cam2lidar = np.eye(4)
        cam2lidar[:3, :3] = np.asarray(cam["sensor2lidar_rotation"], np.float64)
        cam2lidar[:3, 3] = np.asarray(cam["sensor2lidar_translation"], np.float64)
        extrinsics.append(lidar2ego @ cam2lidar)
    return np.stack(intrinsics).astype(np.float32), np.stack(extrinsics).astype(np.float32)


def command_index(one_hot: Any) -> int:
    v = np.asarray(one_hot if one_hot is not None else [], np.float64).reshape(-1)
    if v.size != 4 or v.max(initial=0) <= 0:
        return schema.COMMAND_UNKNOWN
    return int(np.argmax(v))


def make_clip(frames: list[dict[str, Any]], start: int, sensor_root: str, config: NavsimConfig) -> schema.ClipRecord:
    """One clip from the window of `frames` beginning at `start`."""
    stored, needed = window_length(config)
    window = frames[start:start + needed]
    poses = np.stack([global_pose(f) for f in window])
    chunk_start = np.arange(config.num_chunks, dtype=np.int32) * config.future_poses + config.history_frames - 1
    waypoints, history, commands = [], [], []
    for s in chunk_start:
        waypoints.append(schema.to_local_frame(poses[s + 1:s + 1 + config.future_poses], poses[s]))
        history.append(schema.to_local_frame(poses[s - config.history_frames + 1:s + 1], poses[s]))
        commands.append(command_index(window[s].get("driving_command")))
    images, maps = [], None
    for f in window[:stored]:
        image, maps = camera_view(f, sensor_root, config)
        images.append(image)
    names = FRONT if config.camera == "front" else STITCHED
    intrinsics, extrinsics = _calibration(window[chunk_start[0]], maps, names)
    velocity = np.stack([np.asarray(f.get("ego_dynamic_state", [0, 0, 0, 0]), np.float64)[:2] for f in window[:stored]])
    current = window[chunk_start[0]]
    # ego_dynamic_state = (vx, vy, ax, ay) in the ego frame; curvature = lateral acceleration / speed².
    dyn = np.stack([np.asarray(window[s].get("ego_dynamic_state", [0, 0, 0, 0]), np.float64) for s in chunk_start])
    speed = np.hypot(dyn[:, 0], dyn[:, 1])
    ego_state = schema.ego_state(speed, dyn[:, 2], dyn[:, 3] / np.maximum(speed, 1e-6))
    return schema.ClipRecord(
        source="navsim",
        clip_id=str(current["token"]),
        timestamps_us=np.asarray([int(f["timestamp"]) for f in window[:stored]], np.int64),
        ego_pose=schema.to_local_frame(poses[:stored], poses[0]).astype(np.float32),
        ego_velocity=velocity.astype(np.float32),
        chunk_start=chunk_start,
        waypoints=np.stack(waypoints).astype(np.float32),
        waypoint_dt=1.0 / HZ,
        command=np.asarray(commands, np.int32),
        frames=np.stack(images),
        history_waypoints=np.stack(history).astype(np.float32),
        ego_state=ego_state,
        camera_names=list(names),
        intrinsics=intrinsics,
        extrinsics=extrinsics,
        meta={"log_name": str(current.get("log_name", "")), "map_location": str(current.get("map_location", "")),
              "window_start_token": str(window[0]["token"]), "scene_token": str(current.get("scene_token", ""))},
    )


def iter_clips(config: NavsimConfig) -> Iterator[tuple[str, schema.ClipRecord]]:
    sensor_root = os.path.join(config.src_dir, "sensor_blobs", config.log_split)
    for path in list_logs(config):
        frames = load_log(path)
        for start in iter_windows(frames, config):
            clip = make_clip(frames, start, sensor_root, config)
            yield f"{os.path.basename(path)}:{start}", clip


class WamNavsim(builders.ClipDatasetBuilder):
    """NAVSIM / OpenScene scenes as clip records (history frames, 8 waypoints @0.5 s, driving command)."""


    def _generate_clips(self):
        return iter_clips(self.builder_config)
