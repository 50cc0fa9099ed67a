"""Tiny DriveWAM for CPU: tests, smoke runs and the demo's model size.

Ablations as arguments, e.g. `experiments/drivewam_tiny.py:guidance=off,init=scratch,context=diffusion_forcing`.
"""

import ml_collections

from wam_jax.config import parse_arg
from wam_jax.models.presets import wan_model_config


def get_config(arg=None):
    arg = parse_arg(arg, guidance="off", init="scratch", context="teacher_forcing", steps=300, chunks=3,
                    train="all", data="synthetic", memory="full")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = wan_model_config("tiny", num_attention_heads=2, attention_head_dim=24, num_layers=2, ffn_dim=128,
                               in_channels=8, out_channels=8, text_dim=32, freq_dim=64)
    c.wam = dict(latent_frames_per_chunk=2, latent_height=4, latent_width=4, waypoints_per_chunk=8, action_dim=3,
                 guidance_tokens=1, action_rope_hw=None)
    c.chunks = arg.chunks
    c.init = arg.init
    c.init_checkpoint = ""
    c.action_norm = dict(mean=[20.0, 0.0, 0.0], std=[15.0, 3.0, 0.2])
    c.flow = dict(time_sampler="logit_normal", time_mean=0.0, time_std=1.0, time_shift=1.0, video_weight=1.0,
                  action_weight=1.0, context=arg.context, per_chunk_noise=False, independent_action_time=False,
                  loss_from_chunk=0)
    c.train = dict(steps=arg.steps, batch_size=4, lr=2e-3, warmup_steps=20, end_lr_ratio=0.1, weight_decay=0.0,
                   b1=0.9, b2=0.99, clip_norm=1.0, ema_decay=0.99,
                   freeze=("patch_embed", "condition_embedder", "blocks", "head") if arg.train == "actions" else (),
                   checkpoint_every=100, keep_checkpoints=2, async_checkpoints=True, log_every=25)
    c.mesh = dict(data=1, fsdp=1, tensor=1, sequence=1)
    c.data = dict(source=arg.data, num_clips=4, chunk_seconds=4.0, seed=0, shuffle=True)
    c.guidance = dict(enabled=arg.guidance == "on")
    c.latent = dict(kind="none" if arg.data == "synthetic" else "pixels", frame_stride=5, space_to_depth=8,
                    vae_checkpoint="")
    c.sampler = dict(video_steps=4, action_steps=8, solver="euler", shift=1.0, schedule="joint")
    video_tokens = 2 * 2 * 2   # latent_frames_per_chunk × (h/2) × (w/2)
    c.memory = dict(mode="full" if arg.memory == "full" else "selective", max_chunks=80,
                    video_budget=4 * video_tokens, action_budget=4 * 8, recent_chunks=1, tradeoff=0.7)
    c.rollout = dict(context_chunks=1, chunks=2, video_fps=1.0)
    return c
