"""Tiny DriveWAM for CPU: tests and smoke runs on generated clips.

Ablations as arguments, e.g. `experiments/drivewam_tiny.py:guidance=off,init=scratch,context=diffusion_forcing`.
"""

import ml_collections

from wam_jax import experiment as base
from wam_jax.config import one_of, parse_arg
from wam_jax.models.presets import wan_model_config


def get_config(arg=None):
    arg = parse_arg(arg, guidance=one_of("off", "on"), init=one_of("scratch", "wan"),
                    context=one_of("teacher_forcing", "diffusion_forcing"), steps=300, chunks=3,
                    train=one_of("all", "actions"), data=one_of("synthetic", "tfds"), memory=one_of("full", "selective"))
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = wan_model_config("tiny", num_attention_heads=2, attention_head_dim=24, num_layers=2, ffn_dim=128,
                               in_channels=8, out_channels=8, text_dim=32, freq_dim=64)
    c.wam = dict(latent_frames_per_chunk=2, latent_height=4, latent_width=4, waypoints_per_chunk=8, action_dim=3,
                 guidance_tokens=1, action_rope_hw=None)
    c.chunks = arg.chunks
    c.init = arg.init
    c.init_checkpoint = ""
    # Per-step ego-frame increments (2 Hz) of the synthetic arcs: 2.5-7.5 m forward, small lateral and yaw.
    c.action_norm = dict(mean=[5.0, 0.0, 0.0], std=[2.5, 0.3, 0.05], representation="increments")
    c.flow = base.flow(context=arg.context)
    c.train = base.train(arg.steps, 4, lr=2e-3, warmup_steps=20, weight_decay=0.0, b2=0.99, ema_decay=0.99,
                         freeze=base.freeze_groups(arg.train), checkpoint_every=100, keep_checkpoints=2, log_every=25)
    c.mesh = dict(data=1, fsdp=1, tensor=1, sequence=1)
    c.data = dict(source=arg.data, num_clips=4, chunk_seconds=4.0, seed=0, shuffle=True)
    c.guidance = dict(enabled=arg.guidance == "on")
    c.latent = dict(kind="none", frame_stride=5, space_to_depth=8, channels=0, pca_path="", vae_checkpoint="")
    c.sampler = base.sampler()
    c.memory = base.memory(arg.memory, video_tokens_per_chunk=2 * 2 * 2, action_tokens_per_chunk=8, budget_chunks=4,
                           max_chunks=80)
    c.rollout = dict(context_chunks=1, chunks=2, video_fps=1.0)
    return c
