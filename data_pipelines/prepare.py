"""Fit what training needs from a built dataset: the action statistics and (latent.kind == "pca") the PCA
latent basis. The step between `build` and `train`:

    python -m data_pipelines prepare --data DIR [--config experiments/FILE.py[:args]] [--set key=value ...]

Writes into the dataset directory (the versioned folder `build` printed):
    action_norm.json    {"mean": [K][A], "std": [K][A]}: per-waypoint statistics of every clip's waypoints
                        (action_norm_increments.json: of their increments, for configs that train on increments)
    pca_latents.npz     the PCA basis of the frames' pixel blocks (only for a config with latent.kind == "pca")

`train` calls `complete_config` itself: a config whose `action_norm.from_data` is true gets the dataset's
statistics, and a PCA config with an empty `latent.pca_path` gets the dataset's basis; either is fitted first
if `prepare` has not been run. The run's saved config.json then holds the fitted values, so rollout, eval and
export of that run need nothing else.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

ACTION_NORM_FILE = "action_norm.json"
PCA_FILE = "pca_latents.npz"
PCA_MAX_CLIPS = 20            # clips whose frames fit the basis (more changes little and costs memory)
ACTION_MIN_STD = 0.05


def fit_action_norm(data_dir: str, representation: str = "waypoints"):
    """Per-waypoint (per-step) ActionNorm of every clip's waypoints in the given action representation."""
    from data_pipelines import pipeline
    from wam_jax.data import ActionNorm
    waypoints = np.concatenate([clip.waypoints for clip in pipeline.iter_clips(data_dir, decode_frames=False)])
    return ActionNorm.fit(waypoints, per_waypoint=True, min_std=ACTION_MIN_STD, representation=representation)


def fit_latent_pca(config, data_dir: str, max_clips: int = PCA_MAX_CLIPS) -> float:
    """Fits the PCA latent basis on the frames of the first `max_clips` clips, saved at config.latent.pca_path;
    returns the explained variance fraction."""
    from data_pipelines import pipeline
    from wam_jax.models import latents
    clips = []
    for i, clip in enumerate(pipeline.iter_clips(data_dir)):
        if i >= max_clips:
            break
        clips.append(clip.frames)
    return latents.fit_pca(np.stack(clips), config, config.latent.pca_path)


def dataset_dir(data_dir: str) -> str:
    from data_pipelines import pipeline
    return pipeline.find_dataset_dir(data_dir)


def action_norm_for(data_dir: str, refit: bool = False, log: Callable[[str], None] = print,
                    representation: str = "waypoints") -> dict:
    """The dataset's action statistics ({"mean", "std"}) in `representation`, fitted and stored on first use."""
    name = ACTION_NORM_FILE if representation == "waypoints" else ACTION_NORM_FILE.replace(".json", f"_{representation}.json")
    path = os.path.join(dataset_dir(data_dir), name)
    if os.path.exists(path) and not refit:
        with open(path) as f:
            return json.load(f)
    norm = fit_action_norm(data_dir, representation)
    stats = {"mean": norm.mean.tolist(), "std": norm.std.tolist()}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(stats, f)
    os.replace(tmp, path)
    log(f"[prepare] action statistics of {dataset_dir(data_dir)} → {path}")
    return stats


def pca_for(config, data_dir: str, refit: bool = False, log: Callable[[str], None] = print) -> str:
    """Path of the dataset's PCA basis for `config` (fitted on first use)."""
    path = os.path.join(dataset_dir(data_dir), PCA_FILE)
    if os.path.exists(path) and not refit:
        with np.load(path) as stored:
            if "scale" in stored:
                return path
        log(f"[data] {path} was fitted before latents were normalised (no 'scale'): refitting it")
    with config.unlocked():
        config.latent.pca_path = path
    explained = fit_latent_pca(config, data_dir)
    log(f"[data] PCA latent basis: {config.latent.channels} components explain {explained:.1%} of the "
        f"pixel-block variance → {path}")
    return path


def needs_preparing(config) -> bool:
    return bool(config.action_norm.get("from_data", False)) or (
        config.latent.kind == "pca" and not config.latent.pca_path)


def complete_config(config, data_dir: str | None = None, log: Callable[[str], None] = print):
    """Fills what the config leaves to the dataset (action_norm.from_data, an empty PCA latent.pca_path) from
    the dataset at `data_dir` (default config.data.data_dir); returns the config (same object, relocked)."""
    if not needs_preparing(config):
        return config
    data_dir = data_dir or config.data.get("data_dir", "")
    if not data_dir:
        from data_pipelines.pipeline import PipelineError
        raise PipelineError("the config fits action statistics / a PCA basis on the dataset, but config.data.data_dir "
                            "is empty; set it to a dataset built by `python -m data_pipelines build`")
    with config.unlocked():
        if config.action_norm.get("from_data", False):
            stats = action_norm_for(data_dir, log=log,
                                    representation=config.action_norm.get("representation", "waypoints"))
            config.action_norm.mean, config.action_norm.std = stats["mean"], stats["std"]
            config.action_norm.from_data = False       # the run's saved config holds the fitted values
        if config.latent.kind == "pca" and not config.latent.pca_path:
            config.latent.pca_path = pca_for(config, data_dir, log=log)
    config.lock()
    return config


def prepare_main(args) -> int:
    from wam_jax import cli as wam_cli

    config = wam_cli.config_from_args(args, required=False)
    if config is None:
        config = _default_config()
    with config.unlocked():
        config.data.data_dir = args.data
    stats = action_norm_for(args.data, refit=args.refit,
                            representation=config.action_norm.get("representation", "waypoints"))
    print(f"action statistics: mean[0] {np.round(stats['mean'][0], 3).tolist()} std[0] "
          f"{np.round(stats['std'][0], 3).tolist()} ({len(stats['mean'])} waypoints)")
    if config.latent.kind == "pca":
        print(f"PCA latent basis: {pca_for(config, args.data, refit=args.refit)}")
    print(dataset_dir(args.data))
    return 0


def _default_config():
    from wam_jax.config import load_config
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return load_config(os.path.join(here, "experiments", "drivewam_highway.py"))
