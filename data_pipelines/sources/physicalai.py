"""NVIDIA PhysicalAI-Autonomous-Vehicles (local copy of the HF dataset repo) → clip records.

Reads the repo layout the dev kit (`physical_ai_av`) reads:
    features.csv          index `feature`; `chunk_path` (format string with {chunk_id}); `clip_files_in_zip`
                          (JSON alias → member template with {clip_id}) for zipped features
    clip_index.parquet    index clip_id; column `chunk` (optional `event_t0s`)
    labels/egomotion/egomotion.chunk_NNNN.zip → {clip}.egomotion.parquet: timestamp (µs), qx qy qz qw, x y z, ...
    camera/<cam>/<cam>.chunk_NNNN.zip → {clip}.<cam>.mp4 + {clip}.<cam>.timestamps.parquet (`timestamp`, µs)
    calibration/camera_intrinsics|sensor_extrinsics/*.chunk_NNNN.parquet (optional; indexed clip_id, sensor)

Sampling follows Alpamayo's protocol: t0 = 5.1 s into the clip (or each of the clip's `event_t0s` with
`use_event_t0s`); chunk 0 starts at t0 and its waypoints are the 64 future poses at 0.1 s (6.4 s),
`history_waypoints` the 16 poses ending at t0, all in the t0 rig frame: p' = R_t0⁻¹ (p − p_t0), heading =
yaw(R_t0⁻¹ R_t). Poses are interpolated (linear position, slerp rotation) from the ~100 Hz egomotion.
Frames: `num_frames` per chunk start at 0.1 s (t0−0.3 … t0 by default); each camera's frame at or before the
requested time (`searchsorted(side="right") − 1`), cameras side by side in `cameras` order. With
`num_chunks > 1`, chunks follow every `chunk_steps` steps and frames are kept at 10 Hz in between.
The source has no route command: `command` is derived from the chunk's path (`schema.command_from_waypoints`).
Intrinsics are the pinhole approximation of the f-theta model (`fw_poly_1` as focal length); the raw model
parameters are kept in `meta["camera_intrinsics_raw"]`. Extrinsics are camera→rig.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import zipfile
from typing import Any, Iterator

import numpy as np
import pandas as pd

from data_pipelines import builders, schema

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class PhysicalAIConfig(builders.ClipBuilderConfig):
    src_dir: str = ""
    cameras: tuple[str, ...] = ("camera_front_wide_120fov",)
    t0_us: int = 5_100_000
    use_event_t0s: bool = False
    history_steps: int = 16
    future_steps: int = 64
    step_us: int = 100_000
    num_frames: int = 4
    num_chunks: int = 1
    chunk_steps: int = 64
    image_size: tuple[int, int] | None = (288, 512)   # (H, W) per camera; None keeps the source size
    lateral_threshold: float = 2.0
    clip_ids: tuple[str, ...] = ()                    # restrict to these clips (default: all, sorted)
    frame_codec: str = "jpeg"


class PaiRepo:
    """Random access to features of a local PhysicalAI-AV repo copy."""

    def __init__(self, root: str):
        self.root = root
        path = os.path.join(root, "features.csv")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; --src must be a local copy of nvidia/PhysicalAI-Autonomous-Vehicles")
        self.features = pd.read_csv(path, index_col="feature")
        self.features["clip_files_in_zip"] = self.features["clip_files_in_zip"].map(json.loads, na_action="ignore")
        self.clip_index = pd.read_parquet(os.path.join(root, "clip_index.parquet"))
        self._zips: dict[str, zipfile.ZipFile] = {}

    def has_feature(self, feature: str) -> bool:
        return feature in self.features.index

    def chunk_file(self, feature: str, chunk: int) -> str:
        if feature not in self.features.index:
            raise KeyError(f"feature {feature!r} is not in features.csv; known: {sorted(self.features.index)}")
        return os.path.join(self.root, self.features.at[feature, "chunk_path"].format(chunk_id=int(chunk)))

    def clip_chunk(self, clip_id: str) -> int:
        return int(self.clip_index.at[clip_id, "chunk"])

    def member(self, clip_id: str, feature: str, alias: str) -> bytes:
        path = self.chunk_file(feature, self.clip_chunk(clip_id))
        templates = self.features.at[feature, "clip_files_in_zip"]
        if not isinstance(templates, dict) or alias not in templates:
            raise KeyError(f"feature {feature!r} has no zipped member {alias!r} ({templates!r})")
        if path not in self._zips:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing (feature {feature}, clip {clip_id})")
            self._zips[path] = zipfile.ZipFile(path)
        return self._zips[path].read(templates[alias].format(clip_id=clip_id))

    def calibration(self, clip_id: str, feature: str) -> pd.DataFrame | None:
        if not self.has_feature(feature):
            return None
        path = self.chunk_file(feature, self.clip_chunk(clip_id))
        if not os.path.exists(path):
            return None
        df = pd.read_parquet(path)
        return df.loc[clip_id] if clip_id in df.index.get_level_values(0) else None

    def close(self):
        for z in self._zips.values():
            z.close()
        self._zips.clear()


class Egomotion:
    """Pose interpolator over an egomotion table: linear translation, slerp rotation, at µs timestamps."""

    def __init__(self, df: pd.DataFrame):
        from scipy.spatial.transform import Rotation, Slerp

        df = df.sort_values("timestamp")
        self.t = df["timestamp"].to_numpy(np.int64)
        self.xyz = df[["x", "y", "z"]].to_numpy(np.float64)
        self._slerp = Slerp(self.t.astype(np.float64), Rotation.from_quat(df[["qx", "qy", "qz", "qw"]].to_numpy(np.float64)))

    def covers(self, t_min: int, t_max: int) -> bool:
        return self.t[0] <= t_min and t_max <= self.t[-1]

    def __call__(self, ts: np.ndarray):
        ts = np.asarray(ts, np.float64)
        xyz = np.stack([np.interp(ts, self.t, self.xyz[:, i]) for i in range(3)], axis=-1)
        return xyz, self._slerp(ts)


def relative_poses(ego: Egomotion, ts: np.ndarray, t_ref: int) -> np.ndarray:
    """(x, y, heading) at `ts` in the rig frame at `t_ref`."""
    xyz, rot = ego(ts)
    xyz0, rot0 = ego(np.array([t_ref]))
    inv = rot0[0].inv()
    local = inv.apply(xyz - xyz0[0])
    m = (inv * rot).as_matrix()
    return np.concatenate([local[:, :2], np.arctan2(m[:, 1, 0], m[:, 0, 0])[:, None]], axis=-1)


def ego_velocity(ego: Egomotion, ts: np.ndarray, half_us: int = 50_000) -> np.ndarray:
    """(v_forward, v_left) at `ts` by central differences, in each time's own rig frame."""
    lo = np.clip(ts - half_us, ego.t[0], ego.t[-1])
    hi = np.clip(ts + half_us, ego.t[0], ego.t[-1])
    p_lo, _ = ego(lo)
    p_hi, _ = ego(hi)
    _, rot = ego(ts)
    v = (p_hi - p_lo) / ((hi - lo)[:, None] * 1e-6)
    return rot.inv().apply(v)[:, :2]


def ego_state_at(ego: Egomotion, ts: np.ndarray, half_us: int = 100_000) -> np.ndarray:
    """(speed, acceleration, curvature) [len(ts), 3] from the egomotion: speed from `ego_velocity`,
    acceleration and yaw rate by central differences over ±half_us (one-sided at the table's ends)."""
    ts = np.asarray(ts, np.int64)
    lo = np.clip(ts - half_us, ego.t[0], ego.t[-1])
    hi = np.clip(ts + half_us, ego.t[0], ego.t[-1])
    span = (hi - lo) * 1e-6
    speed = lambda t: np.linalg.norm(ego_velocity(ego, t), axis=-1)
    yaw = lambda t: np.asarray([relative_poses(ego, np.array([x]), int(ts[0]))[0, 2] for x in t])
    accel = (speed(hi) - speed(lo)) / span
    yaw_rate = schema.wrap_angle(yaw(hi) - yaw(lo)) / span
    return schema.ego_state(speed(ts), accel, yaw_rate)


def decode_frames_at(video: bytes, frame_ts: np.ndarray, want_ts: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames at or before each wanted timestamp; returns (frames [k, H, W, 3] uint8, their timestamps)."""
    import av

    idx = np.searchsorted(frame_ts, want_ts, side="right") - 1
    if np.any(idx < 0):
        raise ValueError(f"{where}: requested time {int(want_ts[idx < 0][0])} µs is before the first frame "
                         f"({int(frame_ts[0])} µs)")
    needed = set(idx.tolist())
    last = max(needed)
    got: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in needed:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    if len(got) != len(needed):
        raise ValueError(f"{where}: video has fewer frames than its timestamps table ({len(frame_ts)}) says")
    return np.stack([got[i] for i in idx.tolist()]), frame_ts[idx]


def _resize(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def _quat_matrix(q: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_quat(q).as_matrix()


def clip_t0s(repo: PaiRepo, clip_id: str, config: PhysicalAIConfig) -> list[int]:
    if config.use_event_t0s and "event_t0s" in repo.clip_index.columns:
        value = repo.clip_index.at[clip_id, "event_t0s"]
        if value is None or (np.ndim(value) == 0 and pd.isna(value)):
            return []
        return [int(t) for t in np.atleast_1d(value)]
    return [int(config.t0_us)]


def make_clip(repo: PaiRepo, clip_id: str, t0: int, ego: Egomotion, config: PhysicalAIConfig) -> schema.ClipRecord:
    step = config.step_us
    n = config.num_chunks
    chunk_times = t0 + np.arange(n, dtype=np.int64) * config.chunk_steps * step
    t_frames = t0 + (np.arange(config.num_frames + (n - 1) * config.chunk_steps, dtype=np.int64)
                     - (config.num_frames - 1)) * step
    chunk_start = (np.arange(n) * config.chunk_steps + config.num_frames - 1).astype(np.int32)

    waypoints, history, commands = [], [], []
    for tk in chunk_times:
        future = tk + np.arange(1, config.future_steps + 1, dtype=np.int64) * step
        past = tk + np.arange(-(config.history_steps - 1), 1, dtype=np.int64) * step
        wp = relative_poses(ego, future, int(tk))
        waypoints.append(wp)
        history.append(relative_poses(ego, past, int(tk)))
        commands.append(schema.command_from_waypoints(wp, config.lateral_threshold))

    images, stamps, intrinsics, extrinsics, raw_intrinsics = [], None, [], [], {}
    intr_df = repo.calibration(clip_id, "camera_intrinsics")
    extr_df = repo.calibration(clip_id, "sensor_extrinsics")
    offset = 0
    for cam in config.cameras:
        frame_ts = pd.read_parquet(io.BytesIO(repo.member(clip_id, cam, "frame_timestamps")))["timestamp"].to_numpy(np.int64)
        frames, ts = decode_frames_at(repo.member(clip_id, cam, "video"), frame_ts, t_frames, f"clip {clip_id} {cam}")
        resized = np.stack([_resize(f, config.image_size) for f in frames])
        sx, sy = resized.shape[2] / frames.shape[2], resized.shape[1] / frames.shape[1]
        images.append(resized)
        stamps = ts if stamps is None else stamps
        if intr_df is not None and cam in intr_df.index:
            row = intr_df.loc[cam]
            raw_intrinsics[cam] = {k: float(v) for k, v in row.items()}
            f = float(row.get("fw_poly_1", np.nan))
            intrinsics.append([[f * sx, 0, float(row["cx"]) * sx + offset], [0, f * sy, float(row["cy"]) * sy], [0, 0, 1]])
        if extr_df is not None and cam in extr_df.index:
            row = extr_df.loc[cam]
            m = np.eye(4)
            m[:3, :3] = _quat_matrix(row[["qx", "qy", "qz", "qw"]].to_numpy(np.float64))
            m[:3, 3] = row[["x", "y", "z"]].to_numpy(np.float64)
            extrinsics.append(m)
        offset += resized.shape[2]
    frames = np.concatenate(images, axis=2)
    full_calib = len(intrinsics) == len(config.cameras)
    pose = relative_poses(ego, stamps, int(stamps[0]))
    return schema.ClipRecord(
        source="physicalai",
        clip_id=clip_id if not config.use_event_t0s else f"{clip_id}@{t0}",
        timestamps_us=stamps.astype(np.int64),
        ego_pose=pose.astype(np.float32),
        ego_velocity=ego_velocity(ego, stamps).astype(np.float32),
        chunk_start=chunk_start,
        waypoints=np.stack(waypoints).astype(np.float32),
        waypoint_dt=step / 1e6,
        command=np.asarray(commands, np.int32),
        frames=frames,
        history_waypoints=np.stack(history).astype(np.float32),
        ego_state=ego_state_at(ego, np.asarray(chunk_times, np.int64)),
        camera_names=list(config.cameras),
        intrinsics=np.asarray(intrinsics, np.float32) if full_calib else None,
        extrinsics=np.asarray(extrinsics, np.float32) if len(extrinsics) == len(config.cameras) else None,
        meta={"clip_uuid": clip_id, "t0_us": int(t0), "chunk": repo.clip_chunk(clip_id),
              "command_source": "derived_from_future_path", "camera_intrinsics_raw": raw_intrinsics},
    )


def iter_clips(config: PhysicalAIConfig) -> Iterator[tuple[str, schema.ClipRecord]]:
    repo = PaiRepo(config.src_dir)
    clip_ids = list(config.clip_ids) or sorted(repo.clip_index.index.astype(str))
    step = config.step_us
    back = max(config.history_steps - 1, config.num_frames - 1) * step
    ahead = ((config.num_chunks - 1) * config.chunk_steps + config.future_steps) * step
    try:
        for clip_id in clip_ids:
            ego = Egomotion(pd.read_parquet(io.BytesIO(repo.member(clip_id, "egomotion", "egomotion"))))
            for t0 in clip_t0s(repo, clip_id, config):
                if not ego.covers(t0 - back, t0 + ahead):
                    log.info("skip clip %s t0=%d: egomotion covers %d..%d µs, need %d..%d", clip_id, t0,
                             ego.t[0], ego.t[-1], t0 - back, t0 + ahead)
                    continue
                yield f"{clip_id}@{t0}", make_clip(repo, clip_id, t0, ego, config)
    finally:
        repo.close()


class WamPhysicalai(builders.ClipDatasetBuilder):
    """PhysicalAI-AV clips as clip records (t0 = 5.1 s, 64 waypoints @0.1 s in the t0 rig frame)."""


    def _generate_clips(self):
        return iter_clips(self.builder_config)
