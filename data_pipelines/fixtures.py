"""Tiny on-disk fixtures in the sources' real formats, plus a synthetic clip builder.

Used by tests and by `bench_read` when no data is at hand. Ego motion in the fixtures is a constant-speed,
constant-yaw-rate arc, so tests can check waypoints against the closed form
    x = v/w sin(w dt),  y = v/w (1 - cos(w dt)),  heading = w dt      (in the frame at the start of dt).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import zipfile
from typing import Any, Iterator

import numpy as np

from data_pipelines import builders, schema


def arc_pose(t: np.ndarray, speed: float, yaw_rate: float, x0=0.0, y0=0.0, h0=0.0) -> np.ndarray:
    """Global (x, y, heading) [len(t), 3] along the arc at times t (s)."""
    t = np.asarray(t, np.float64)
    h = h0 + yaw_rate * t
    x = x0 + speed / yaw_rate * (np.sin(h) - np.sin(h0))
    y = y0 - speed / yaw_rate * (np.cos(h) - np.cos(h0))
    return np.stack([x, y, h], -1)


def arc_relative(dt: np.ndarray, speed: float, yaw_rate: float) -> np.ndarray:
    """(x, y, heading) after dt seconds in the frame at the start."""
    dt = np.asarray(dt, np.float64)
    return np.stack([speed / yaw_rate * np.sin(yaw_rate * dt), speed / yaw_rate * (1 - np.cos(yaw_rate * dt)),
                     yaw_rate * dt], -1)


def _jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ NAVSIM / OpenScene

NAVSIM_CAMERAS = ("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0")


def write_navsim_fixture(root: str, split: str = "mini", logs: int = 1, frames_per_log: int = 16,
                         image_hw: tuple[int, int] = (24, 40), speed: float = 8.0, yaw_rate: float = 0.1,
                         no_route_frames: tuple[int, ...] = (), seed: int = 0) -> dict[str, Any]:
    """Writes navsim_logs/<split>/<log>.pkl and sensor_blobs/<split>/<log>/CAM_*/<hex>.jpg.

    Frames are at 2 Hz along an arc; `driving_command` cycles left/straight/right; frames listed in
    `no_route_frames` have empty roadblock_ids. Returns the ground truth (speed, yaw_rate, heading0, logs)."""
    rng = np.random.default_rng(seed)
    log_dir = os.path.join(root, "navsim_logs", split)
    os.makedirs(log_dir, exist_ok=True)
    h, w = image_hw
    truth: dict[str, Any] = {"speed": speed, "yaw_rate": yaw_rate, "logs": {}}
    for li in range(logs):
        log_name = f"2021.06.0{li + 1}.12.00.00_veh-00_00{li}_00{li}"
        h0 = 0.3 + li
        poses = arc_pose(np.arange(frames_per_log) * 0.5, speed, yaw_rate, x0=100.0 * li, y0=-50.0, h0=h0)
        frames = []
        for i in range(frames_per_log):
            token = f"{li:02x}{i:06x}" + "ab" * 4
            cams = {}
            for ci, cam in enumerate(NAVSIM_CAMERAS):
                rel = f"{log_name}/{cam}/{rng.integers(1 << 60):016x}.jpg"
                path = os.path.join(root, "sensor_blobs", split, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                image[:, : w // 4] = (i * 12) % 256  # a per-frame band, easy to recognise
                with open(path, "wb") as f:
                    f.write(_jpeg(image))
                yaw_c = (ci - 1) * 0.8
                cams[cam] = {
                    "data_path": rel,
                    "sensor2lidar_rotation": np.array([[np.cos(yaw_c), -np.sin(yaw_c), 0], [np.sin(yaw_c), np.cos(yaw_c), 0],
                                                       [0, 0, 1]]),
                    "sensor2lidar_translation": np.array([0.5 + ci, 0.1 * ci, 1.5]),
                    "cam_intrinsic": np.array([[w * 0.8, 0, w / 2], [0, w * 0.8, h / 2], [0, 0, 1.0]]),
                    "distortion": np.zeros(5),
                }
            yaw = poses[i, 2]
            quat = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
            command = np.zeros(4)
            command[i % 3] = 1
            frames.append({
                "token": token, "frame_idx": i, "timestamp": 1_623_000_000_000_000 + i * 500_000,
                "log_name": log_name, "log_token": f"log{li}", "scene_name": f"scene-{li}",
                "scene_token": f"scene{li}{i // 8}", "map_location": "us-nv-las-vegas-strip",
                "roadblock_ids": [] if i in no_route_frames else [f"rb{i}"], "vehicle_name": "veh-00",
                "can_bus": np.zeros(18), "lidar_path": f"{log_name}/MergedPointCloud/{token}.pcd",
                "lidar2ego_translation": [1.5, 0.0, 1.8], "lidar2ego_rotation": [1.0, 0.0, 0.0, 0.0],
                "ego2global_translation": [poses[i, 0], poses[i, 1], 0.0], "ego2global_rotation": quat,
                "ego_dynamic_state": [speed, 0.0, 0.0, speed * yaw_rate],
                "traffic_lights": [], "driving_command": command, "cams": cams,
                "sample_prev": frames[-1]["token"] if frames else None, "sample_next": None,
                "ego2global": np.eye(4), "lidar2ego": np.eye(4), "lidar2global": np.eye(4),
                "anns": {"gt_boxes": np.zeros((0, 7)), "gt_names": [], "gt_velocity_3d": np.zeros((0, 3)),
                         "instance_tokens": [], "track_tokens": []},
                "occ_gt_final_path": None, "flow_gt_final_path": None,
            })
            frames[-1]["lidar2ego"][:3, 3] = [1.5, 0.0, 1.8]
        for a, b in zip(frames, frames[1:]):
            a["sample_next"] = b["token"]
        with open(os.path.join(log_dir, f"{log_name}.pkl"), "wb") as f:
            pickle.dump(frames, f)
        truth["logs"][log_name] = {"heading0": h0, "num_frames": frames_per_log}
    return truth


# ------------------------------------------------------------------------------------------------ PhysicalAI-AV

PAI_FRONT = "camera_front_wide_120fov"


def write_physicalai_fixture(root: str, clips: tuple[tuple[str, float], ...] = (
        ("0a1b2c3d-0000-4000-8000-000000000001", 0.05), ("0a1b2c3d-0000-4000-8000-000000000002", -0.05)),
        speed: float = 10.0, duration_s: float = 20.0, video_start_s: float = 4.0, video_s: float = 2.0,
        fps: int = 30, image_hw: tuple[int, int] = (36, 64)) -> dict[str, Any]:
    """A fake local repo of nvidia/PhysicalAI-Autonomous-Vehicles: features.csv, clip_index.parquet,
    metadata/feature_presence.parquet, labels/egomotion chunk zip (20 s @100 Hz arc per clip), the front
    camera chunk zip (a `video_s` mp4 written by PyAV, starting at `video_start_s`, + timestamps parquet),
    calibration parquets. Frame i of a video has red = (8 i) mod 256, green = 128 (i // 32).
    `clips` = (uuid, yaw_rate) pairs. Returns the ground truth."""
    import av
    import pandas as pd

    os.makedirs(os.path.join(root, "metadata"), exist_ok=True)
    features = pd.DataFrame([
        {"feature": "egomotion", "directory": "labels",
         "chunk_path": "labels/egomotion/egomotion.chunk_{chunk_id:04d}.zip",
         "clip_files_in_zip": json.dumps({"egomotion": "{clip_id}.egomotion.parquet"})},
        {"feature": PAI_FRONT, "directory": "camera",
         "chunk_path": f"camera/{PAI_FRONT}/{PAI_FRONT}.chunk_{{chunk_id:04d}}.zip",
         "clip_files_in_zip": json.dumps({"video": f"{{clip_id}}.{PAI_FRONT}.mp4",
                                          "frame_timestamps": f"{{clip_id}}.{PAI_FRONT}.timestamps.parquet"})},
        {"feature": "camera_intrinsics", "directory": "calibration",
         "chunk_path": "calibration/camera_intrinsics/camera_intrinsics.chunk_{chunk_id:04d}.parquet",
         "clip_files_in_zip": None},
        {"feature": "sensor_extrinsics", "directory": "calibration",
         "chunk_path": "calibration/sensor_extrinsics/sensor_extrinsics.chunk_{chunk_id:04d}.parquet",
         "clip_files_in_zip": None},
    ]).set_index("feature")
    features.to_csv(os.path.join(root, "features.csv"))
    ids = [c for c, _ in clips]
    end_us = int(duration_s * 1e6)
    pd.DataFrame({"chunk": [0] * len(ids), "event_t0s": [[5_100_000, 9_000_000]] * len(ids),
                  "end_timestamp": [end_us] * len(ids)}, index=pd.Index(ids, name="clip_id")
                 ).to_parquet(os.path.join(root, "clip_index.parquet"))
    pd.DataFrame({"egomotion": [True] * len(ids), PAI_FRONT: [True] * len(ids)},
                 index=pd.Index(ids, name="clip_id")).to_parquet(os.path.join(root, "metadata", "feature_presence.parquet"))

    ego_zip = os.path.join(root, "labels", "egomotion", "egomotion.chunk_0000.zip")
    cam_zip = os.path.join(root, "camera", PAI_FRONT, f"{PAI_FRONT}.chunk_0000.zip")
    os.makedirs(os.path.dirname(ego_zip), exist_ok=True)
    os.makedirs(os.path.dirname(cam_zip), exist_ok=True)
    h, w = image_hw
    n_frames = int(round(video_s * fps))
    frame_ts = (video_start_s * 1e6 + np.arange(n_frames) * 1e6 / fps).astype(np.int64)
    truth: dict[str, Any] = {"speed": speed, "clips": {}, "frame_timestamps": frame_ts, "videos": {}}
    with zipfile.ZipFile(ego_zip, "w") as ez, zipfile.ZipFile(cam_zip, "w") as cz:
        for clip_id, yaw_rate in clips:
            t_us = np.arange(0, end_us + 1, 10_000, dtype=np.int64)  # 100 Hz
            pose = arc_pose(t_us * 1e-6, speed, yaw_rate, x0=3.0, y0=-2.0, h0=0.4)
            half = pose[:, 2] / 2
            df = pd.DataFrame({
                "timestamp": t_us, "qx": 0.0, "qy": 0.0, "qz": np.sin(half), "qw": np.cos(half),
                "x": pose[:, 0], "y": pose[:, 1], "z": 0.0,
                "vx": speed * np.cos(pose[:, 2]), "vy": speed * np.sin(pose[:, 2]), "vz": 0.0,
                "ax": 0.0, "ay": 0.0, "az": 0.0, "curvature": yaw_rate / speed})
            buf = io.BytesIO()
            df.to_parquet(buf)
            ez.writestr(f"{clip_id}.egomotion.parquet", buf.getvalue())

            video = io.BytesIO()
            with av.open(video, mode="w", format="mp4") as container:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                for i in range(n_frames):
                    img = np.zeros((h, w, 3), np.uint8)
                    img[..., 0] = (8 * i) % 256
                    img[..., 1] = 128 * (i // 32)
                    for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            cz.writestr(f"{clip_id}.{PAI_FRONT}.mp4", video.getvalue())
            buf = io.BytesIO()
            pd.DataFrame({"timestamp": frame_ts}).to_parquet(buf)
            cz.writestr(f"{clip_id}.{PAI_FRONT}.timestamps.parquet", buf.getvalue())
            truth["clips"][clip_id] = {"yaw_rate": yaw_rate}
            truth["videos"][clip_id] = video.getvalue()

    calib_dir = os.path.join(root, "calibration")
    os.makedirs(os.path.join(calib_dir, "camera_intrinsics"), exist_ok=True)
    os.makedirs(os.path.join(calib_dir, "sensor_extrinsics"), exist_ok=True)
    idx = pd.MultiIndex.from_tuples([(c, PAI_FRONT) for c in ids], names=["clip_id", "camera_name"])
    pd.DataFrame({"width": w, "height": h, "cx": w / 2 + 0.5, "cy": h / 2 - 0.5,
                  **{f"fw_poly_{k}": [0.0, 30.0, 0.01, 0.0, 0.0][k] for k in range(5)},
                  **{f"bw_poly_{k}": [0.0, 1 / 30.0, 0.0, 0.0, 0.0][k] for k in range(5)}}, index=idx
                 ).to_parquet(os.path.join(calib_dir, "camera_intrinsics", "camera_intrinsics.chunk_0000.parquet"))
    idx = pd.MultiIndex.from_tuples([(c, PAI_FRONT) for c in ids], names=["clip_id", "sensor_name"])
    pd.DataFrame({"qx": 0.0, "qy": 0.0, "qz": 0.0, "qw": 1.0, "x": 1.7, "y": 0.0, "z": 1.4}, index=idx
                 ).to_parquet(os.path.join(calib_dir, "sensor_extrinsics", "sensor_extrinsics.chunk_0000.parquet"))
    return truth


# ------------------------------------------------------------------------------------------------ synthetic clips

def synthetic_clip(index: int, num_chunks: int = 3, frames_per_chunk: int = 2, head_frames: int = 1,
                   image_hw: tuple[int, int] = (8, 12), n_wp: int = 4, intents: tuple[str, ...] = (),
                   guidance_shape: tuple[int, int] = (0, 0), latent_shape: tuple[int, int, int] = (0, 0, 0)
                   ) -> schema.ClipRecord:
    """A small deterministic clip whose values encode (clip index, chunk, frame), for pipeline tests."""
    rng = np.random.default_rng(index)
    t = head_frames + num_chunks * frames_per_chunk
    frames = rng.integers(0, 255, (t, *image_hw, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = index % 256
    frames[:, 0, 0, 1] = np.arange(t)
    chunk_start = (head_frames + np.arange(num_chunks) * frames_per_chunk).astype(np.int32)
    waypoints = rng.standard_normal((num_chunks, n_wp, 3)).astype(np.float32)
    waypoints[:, 0, 0] = index
    waypoints[:, 0, 1] = np.arange(num_chunks)
    clip = schema.ClipRecord(
        source="synthetic", clip_id=f"synthetic-{index:05d}",
        timestamps_us=np.arange(t, dtype=np.int64) * 250_000,
        ego_pose=np.cumsum(np.ones((t, 3), np.float32), 0) - 1, ego_velocity=np.ones((t, 2), np.float32),
        chunk_start=chunk_start, waypoints=waypoints, waypoint_dt=0.5,
        command=(np.arange(num_chunks, dtype=np.int32) + index) % 4, frames=frames,
        ego_state=np.stack([np.full(num_chunks, 10.0 + index), np.arange(num_chunks) * 0.1,
                            np.full(num_chunks, 0.01)], -1).astype(np.float32),
        meta={"index": index})
    if intents:
        clip.intent = [intents[(index + c) % len(intents)] for c in range(num_chunks)]
    if guidance_shape[0]:
        clip.guidance = rng.standard_normal((num_chunks, *guidance_shape)).astype(np.float32)
    if latent_shape[0]:
        per = latent_shape
        clip.latents = rng.standard_normal((1 + num_chunks * 1, per[0], per[1], per[2])).astype(np.float32)
        clip.latent_chunk_start = np.arange(1, num_chunks + 1, dtype=np.int32)
    return clip


@dataclasses.dataclass(eq=False)
class SyntheticConfig(builders.ClipBuilderConfig):
    num_clips: int = 12
    num_chunks: int = 3
    frames_per_chunk: int = 2
    head_frames: int = 1
    image_hw: tuple[int, int] = (8, 12)
    n_wp: int = 4
    intents: tuple[str, ...] = ()
    guidance_shape: tuple[int, int] = (0, 0)
    latent_shape: tuple[int, int, int] = (0, 0, 0)


class WamSynthetic(builders.ClipDatasetBuilder):
    """Synthetic clips for tests and benchmarks (values encode clip index, chunk and frame)."""


    def _generate_clips(self) -> Iterator[tuple[str, schema.ClipRecord]]:
        c = self.builder_config
        for i in range(c.num_clips):
            yield f"{i:06d}", synthetic_clip(i, c.num_chunks, c.frames_per_chunk, c.head_frames, tuple(c.image_hw),
                                             c.n_wp, tuple(c.intents), tuple(c.guidance_shape), tuple(c.latent_shape))


def build_synthetic(out_dir: str, num_shards: int | None = None, **config: Any) -> str:
    """Builds a synthetic dataset (fields of `SyntheticConfig`); returns its directory."""
    vocab = tuple(config["intents"]) if config.get("intents") else None
    return builders.build(WamSynthetic, SyntheticConfig(name=config.pop("name", "default"), **config), out_dir,
                          intent_vocab=vocab, num_shards=num_shards)
