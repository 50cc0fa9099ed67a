"""What the trainer reads: an iterator of raw batches with a saveable position, and the step that turns a raw
batch into model inputs (latents, normalised actions, guidance embeddings).

Sources (config.data.source):
  synthetic  deterministic generated clips (smooth ego arcs + latents that depend on them); for tests and
             smoke runs, needs nothing on disk.
  tfds       ArrayRecord clips written by `python -m data_pipelines build`, read through Grain
             (data_pipelines.pipeline).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol

import numpy as np

from wam_jax.actions import ActionNorm  # noqa: F401  (wam_jax.data.ActionNorm stays importable)


class BatchIterator(Protocol):
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...
    def __next__(self) -> dict[str, np.ndarray]: ...
    def get_state(self) -> dict[str, Any]: ...
    def set_state(self, state: Mapping[str, Any]) -> None: ...


def synthetic_latent_clip(rng: np.random.Generator, chunks: int, waypoints: int, chunk_seconds: float,
                   latent_shape: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """One clip: an ego arc (speed, yaw rate, both drifting per chunk) and latents derived from it, so video
    and actions carry information about each other. latent_shape = (F, h, w, z) per chunk."""
    f, h, w, z = latent_shape
    speed = rng.uniform(5.0, 15.0)
    yaw_rate = rng.uniform(-0.1, 0.1)
    basis = rng.standard_normal((3, h, w, z)).astype(np.float32)
    wps, lats, intents, ego = [], [], [], []
    dt = chunk_seconds / waypoints
    prev_speed = speed
    for _ in range(chunks):
        ego.append([speed, (speed - prev_speed) / chunk_seconds, yaw_rate / speed])
        prev_speed = speed
        times = np.arange(1, waypoints + 1) * dt
        heading = yaw_rate * times
        if abs(yaw_rate) > 1e-6:
            x = speed / yaw_rate * np.sin(heading)
            y = speed / yaw_rate * (1.0 - np.cos(heading))
        else:
            x, y = speed * times, np.zeros_like(times)
        wps.append(np.stack([x, y, heading], -1))
        # Intent ids in the highway vocabulary (keep lane, change lane left, change lane right, slow down).
        intents.append(1 if y[-1] > 2.0 else 2 if y[-1] < -2.0 else 0)
        phase = np.linspace(0, 1, f)[:, None, None, None]
        lat = (speed / 10.0 - 1.0) * basis[0] + 10.0 * yaw_rate * basis[1] + phase * basis[2]
        lats.append(lat.astype(np.float32) + 0.1 * rng.standard_normal((f, h, w, z)).astype(np.float32))
        speed = float(np.clip(speed + rng.normal(0, 1.0), 2.0, 20.0))
        yaw_rate = float(np.clip(yaw_rate + rng.normal(0, 0.02), -0.15, 0.15))
    return {"latents": np.concatenate(lats, 0), "waypoints": np.stack(wps).astype(np.float32),
            "command": np.ones((chunks,), np.int32), "intent_ids": np.asarray(intents, np.int32),
            "ego_state": np.asarray(ego, np.float32)}


class SyntheticIterator:
    """Cycles deterministically over `num_clips` generated clips in global batches of `batch_size`; position =
    batches consumed. With several processes each one yields its rows [p·B/P, (p+1)·B/P) of the same global
    batch a single-process run sees (every process generates the same clips), so a multi-process run trains
    on exactly the single-process data."""

    def __init__(self, *, num_clips: int, batch_size: int, chunks: int, waypoints: int, chunk_seconds: float,
                 latent_shape, seed: int = 0, shuffle: bool = True, process_index: int = 0, process_count: int = 1):
        if batch_size % process_count or not 0 <= process_index < process_count:
            raise ValueError(f"global batch_size={batch_size} must split evenly over {process_count} processes "
                             f"(process_index={process_index})")
        rng = np.random.default_rng(seed)
        clips = [synthetic_latent_clip(rng, chunks, waypoints, chunk_seconds, tuple(latent_shape)) for _ in range(num_clips)]
        self._clips = {k: np.stack([c[k] for c in clips]) for k in clips[0]}
        self._num, self._batch, self._seed, self._shuffle = num_clips, batch_size, seed, shuffle
        per_process = batch_size // process_count
        self._rows = slice(process_index * per_process, (process_index + 1) * per_process)
        self._position = 0

    def _indices(self, position: int) -> np.ndarray:
        """Clip indices of global batch `position` (all processes' rows)."""
        start = position * self._batch
        epoch, offset = divmod(start, self._num)
        idx = []
        while len(idx) < self._batch:
            order = (np.random.default_rng([self._seed, epoch]).permutation(self._num) if self._shuffle
                     else np.arange(self._num))
            idx.extend(order[offset:offset + self._batch - len(idx)])
            epoch, offset = epoch + 1, 0
        return np.asarray(idx)

    def __iter__(self):
        return self

    def __next__(self):
        idx = self._indices(self._position)[self._rows]
        self._position += 1
        return {k: v[idx] for k, v in self._clips.items()}

    def get_state(self):
        return {"position": self._position}

    def set_state(self, state):
        self._position = int(state["position"])


def make_iterator(config, process_index: int = 0, process_count: int = 1) -> BatchIterator:
    """The training iterator described by config.data (this process's shard of every global batch)."""
    d = config.data
    global_batch = config.train.batch_size
    if global_batch % process_count:
        raise ValueError(f"train.batch_size={global_batch} is not divisible by {process_count} processes")
    if d.source == "synthetic":
        w = config.wam
        return SyntheticIterator(num_clips=d.num_clips, batch_size=global_batch, chunks=config.chunks,
                                 waypoints=w.waypoints_per_chunk, chunk_seconds=d.chunk_seconds,
                                 latent_shape=(w.latent_frames_per_chunk, w.latent_height, w.latent_width,
                                               config.model.in_channels),
                                 seed=d.seed, shuffle=d.shuffle, process_index=process_index,
                                 process_count=process_count)
    if d.source == "tfds":
        from data_pipelines import pipeline  # heavy imports only when used
        return pipeline.make_train_iterator(config, process_index=process_index, process_count=process_count)
    raise ValueError(f"config.data.source={d.source!r} unknown; choose 'synthetic' or 'tfds'")


def prepare_batch(raw: Mapping[str, np.ndarray], config, action_norm: ActionNorm,
                  guidance_table: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Raw data batch → model inputs: latents [B, N·F, h, w, z], actions [B, N, K, A] normalised (in the
    configured representation), ego [B, N, 3] when the data carries `ego_state`, guidance [B, N, Lg, text_dim]
    (precomputed embeddings, or looked up from intent ids; the fixed source: its one prompt) when guidance is on."""
    if "latents" not in raw:
        from wam_jax.models import latents as latent_codecs
        kept_every = int(config.data.get("frame_stride", 1)) if "data" in config else 1   # pipeline-strided frames
        raw = dict(raw, latents=latent_codecs.encode_frames(raw["frames"], config, kept_every))
    out = {"latents": np.asarray(raw["latents"], np.float32),
           "actions": action_norm.normalize(np.asarray(raw["waypoints"], np.float32)).astype(np.float32)}
    if "ego_state" in raw:
        out["ego"] = np.asarray(raw["ego_state"], np.float32)
    if config.guidance.enabled:
        if config.guidance.get("source") == "fixed":
            if guidance_table is None:
                raise ValueError("guidance.source='fixed' needs the intent embedding table (every row is the prompt)")
            shape = out["actions"].shape[:2] + guidance_table.shape[1:]
            out["guidance"] = np.ascontiguousarray(np.broadcast_to(guidance_table[0], shape), np.float32)
        elif "guidance" in raw:
            out["guidance"] = np.asarray(raw["guidance"], np.float32)
        elif "intent_ids" in raw and guidance_table is not None:
            out["guidance"] = guidance_table[np.asarray(raw["intent_ids"])]
        else:
            raise ValueError("guidance is enabled but the batch has neither 'guidance' embeddings nor 'intent_ids' "
                             "with an intent embedding table; set guidance.enabled=False or provide them")
    return out
