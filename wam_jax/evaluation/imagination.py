"""Open-loop imagination quality: does the world model predict the next chunk better than copying the last frame?

Every consecutive chunk pair (c → c + 1) of held-out clips, exactly as trained: chunk c is the clean context
(its latents, actions, ego state), chunk c + 1's recorded intent guides, and the model imagines chunk c + 1's
video from noise. Scored per latent frame of the imagined chunk, by how far ahead of the last context frame it
lies (1 s … 4 s at the demo's frame stride):

  latent MSE   against the encoded true frame (the space the model is trained in);
  pixel PSNR   of the decoded frame against the true rendered frame (uint8, peak 255).

Beside three references:
  copy_last    the last context frame, repeated (latent: its latent; pixels: the real frame);
  codec        PSNR of decode(encode(truth)): the ceiling any latent prediction can reach through the codec;
  model_mean   the model's one-step estimate x̂0 = x1 − v(x1, τ=1): the conditional mean it has learned
               (MSE-optimal, blurry), next to `model`, a full sample (`video_steps` Euler steps τ 1 → 0: sharp,
               so it pays for every detail it gets wrong twice).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from wam_jax import cli as wam_cli

PEAK = 255.0


def psnr(a: np.ndarray, b: np.ndarray, axis=None) -> np.ndarray:
    """PSNR in dB between uint8 images, float64; mean squared error over `axis` (all by default)."""
    err = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=axis)
    return 10.0 * np.log10(PEAK ** 2 / np.maximum(err, 1e-12))


def chunk_pairs(clips, frames_per_chunk: int):
    """(frames [N, 2, T, H, W, 3] uint8, actions [N, 2, K, 3], ego [N, 2, 3] | None, intents [N] | None) of every
    consecutive chunk pair of the clips."""
    frames, waypoints, ego, intents = [], [], [], []
    for clip in clips:
        for c in range(len(clip.waypoints) - 1):
            frames.append(clip.frames[c * frames_per_chunk:(c + 2) * frames_per_chunk].reshape(
                2, frames_per_chunk, *clip.frames.shape[1:]))
            waypoints.append(clip.waypoints[c:c + 2])
            ego.append(None if clip.ego_state is None else clip.ego_state[c:c + 2])
            intents.append(None if clip.intent is None else clip.intent[c + 1])
    if not frames:
        raise ValueError("imagination needs clips of at least 2 chunks")
    ego_arr = None if any(e is None for e in ego) else np.stack(ego).astype(np.float32)
    intent_list = None if any(i is None for i in intents) else intents
    return np.stack(frames), np.stack(waypoints).astype(np.float32), ego_arr, intent_list


def evaluate(config, params, clips, video_steps: int = 10, seed: int = 0) -> dict:
    """Scores imagination on every chunk pair of `clips` (ClipRecords with frames); returns a dict with per-offset
    means (`offsets_s`, and per predictor `latent_mse`, `psnr_db`), the pair count, and the first pair's
    real / imagined / copy frames for figures."""
    import jax
    import jax.numpy as jnp
    from wam_jax.experiment import Experiment
    from wam_jax.metrics import trajectory
    from wam_jax.models import latents as codec
    from wam_jax.rollout.engine import run_rollout

    exp = Experiment(config)
    wam, lc = exp.wam, config.latent
    stride = int(lc.frame_stride)
    per_chunk = wam.latent_frames_per_chunk * stride
    frames, waypoints, ego, intents = chunk_pairs(clips, per_chunk)
    n = len(frames)
    lat = codec.encode_frames(frames.reshape(n, 2 * per_chunk, *frames.shape[3:]), config)
    lat = lat.reshape(n, 2, wam.latent_frames_per_chunk, *lat.shape[2:])
    actions = exp.action_norm.normalize(waypoints)
    guidance = None
    if exp.guidance is not None and intents is not None:
        g = jnp.asarray(exp.guidance.embed(None, {"intent": intents})[:, None])
        guidance = lambda c, _: g
    ego_fn = None if ego is None else (lambda c, _: jnp.asarray(ego[:, c:c + 1]))

    def imagine(steps: int) -> np.ndarray:
        sampler = dataclasses.replace(exp.sampler, video_steps=steps, video_stop=0.0)
        engine = exp.engine(chunks=2, sampler=sampler)
        out = run_rollout(engine, params, lat[:, :1], actions[:, :1], 1, jax.random.key(seed), guidance,
                          ego_fn=ego_fn)
        return np.asarray(out.video[:, 1], np.float32)

    # Open-loop plan of chunk c + 1 with the paper's sampler (video partially denoised, then the actions),
    # against the recorded expert waypoints and constant velocity at the chunk's start speed.
    paper = run_rollout(exp.engine(chunks=2), params, lat[:, :1], actions[:, :1], 1, jax.random.key(seed), guidance,
                        ego_fn=ego_fn)
    planned = exp.action_norm.denormalize(np.asarray(paper.actions[:, 1]))
    expert = waypoints[:, 1]
    plan_result = {"model": trajectory.ade(planned[:, None, :, :2], expert[..., :2]),
                   "model_fde": trajectory.fde(planned[:, None, :, :2], expert[..., :2])}
    if ego is not None:
        t = np.arange(1, wam.waypoints_per_chunk + 1) * float(clips[0].waypoint_dt)
        cv = np.stack([ego[:, 1, :1] * t, np.zeros((n, len(t)))], axis=-1)
        plan_result.update(constant_velocity=trajectory.ade(cv[:, None], expert[..., :2]),
                           constant_velocity_fde=trajectory.fde(cv[:, None], expert[..., :2]))

    predictions = {"model": imagine(video_steps), "model_mean": imagine(1),
                   "copy_last": np.repeat(lat[:, 0, -1:], wam.latent_frames_per_chunk, axis=1)}
    truth = lat[:, 1]
    true_px = frames[:, 1, stride - 1::stride]                        # the frames the latents encode
    pixels = {name: codec.decode_latents(p, config) for name, p in predictions.items() if name != "copy_last"}
    pixels["copy_last"] = np.repeat(frames[:, 0, -1:], wam.latent_frames_per_chunk, axis=1)
    pixels["codec"] = codec.decode_latents(truth, config)
    frame_axes = tuple(range(2, truth.ndim))
    result = {
        "pairs": n, "video_steps": video_steps,
        "offsets_s": [(i + 1) * stride / float(exp.sim.frame_hz) for i in range(wam.latent_frames_per_chunk)],
        "latent_mse": {name: np.mean((p - truth) ** 2, axis=(0,) + frame_axes).tolist()
                       for name, p in predictions.items()},
        "psnr_db": {name: np.mean(psnr(p, true_px, axis=(2, 3, 4)), axis=0).tolist() for name, p in pixels.items()},
        "truth_variance": float(np.var(truth)),
        "plan_horizon_s": wam.waypoints_per_chunk * float(clips[0].waypoint_dt),
        "plan_ade_m": {k: float(np.mean(v)) for k, v in plan_result.items()},
    }
    result["example"] = {"real": true_px[0], **{name: p[0] for name, p in pixels.items()}}
    return result


def format_table(result: dict, offsets=(1.0, 4.0)) -> str:
    """Rows: predictors; columns: latent MSE and PSNR at the requested offsets (those the chunk has)."""
    from wam_jax.tools.tables import format_table as table
    have = [o for o in offsets if any(abs(o - s) < 1e-6 for s in result["offsets_s"])] or result["offsets_s"]
    idx = [min(range(len(result["offsets_s"])), key=lambda i: abs(result["offsets_s"][i] - o)) for o in have]
    header = ["predictor"] + [f"latent MSE @{o:g}s" for o in have] + [f"PSNR dB @{o:g}s" for o in have]
    rows = []
    for name in ("model", "model_mean", "copy_last", "codec"):
        mse = result["latent_mse"].get(name)
        row = [name] + ([f"{mse[i]:.4f}" for i in idx] if mse else ["-"] * len(idx))
        row += [f"{result['psnr_db'][name][i]:.2f}" for i in idx]
        rows.append(row)
    return table(header, rows)


def plan_line(result: dict) -> str:
    plan = result["plan_ade_m"]
    line = (f"Open-loop plan of the next chunk ({result['plan_horizon_s']:g} s): ADE {plan['model']:.2f} m, "
            f"FDE {plan['model_fde']:.2f} m")
    if "constant_velocity" in plan:
        line += (f"; constant velocity ADE {plan['constant_velocity']:.2f} m, "
                 f"FDE {plan['constant_velocity_fde']:.2f} m")
    return line


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    """python -m wam_jax eval-imagination --checkpoint RUN --data HELDOUT_DATASET [--video-steps 10] [--json P]"""
    import argparse

    from data_pipelines import pipeline
    from wam_jax.rollout.engine import load_trained_params
    from wam_jax.tools import tables

    parser = argparse.ArgumentParser(prog="python -m wam_jax eval-imagination", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    wam_cli.add_config_args(parser, checkpoint_arg=True)
    parser.add_argument("--data", required=True, help="a built dataset of held-out clips (with frames)")
    parser.add_argument("--video-steps", type=int, default=10, help="Euler steps of the full video sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every number as JSON")
    args = parser.parse_args(argv)
    if not args.checkpoint:
        raise SystemExit("--checkpoint is required (the workdir of a `train` run)")
    if args.video_steps < 1:
        raise SystemExit("--video-steps must be >= 1")
    config = wam_cli.config_from_args(args, args.checkpoint)
    params, step = load_trained_params(args.checkpoint, config)
    clips = list(pipeline.iter_clips(args.data))
    result = evaluate(config, params, clips, video_steps=args.video_steps, seed=args.seed)
    result.pop("example")
    print(f"checkpoint step {step}; {result['pairs']} chunk pairs of {len(clips)} clips from {args.data}")
    print(format_table(result, offsets=tuple(result["offsets_s"])))
    print(plan_line(result))
    if args.json:
        tables.write_json(args.json, result)
    return 0
