"""DriveWAM on Wan2.1-T2V-1.3B: the paper-scale run on real driving clips (NAVSIM or PhysicalAI-AV) with
pre-encoded Wan 2.1 VAE latents (z=16, stride 4×8×8) and umT5 intent embeddings.

Prepare once (local paths; nothing is downloaded):
  python -m wam_jax import-wan --src /models/Wan2.1-T2V-1.3B-Diffusers/transformer --out ckpt/wan21_13b
  python -m wam_jax import-vae --src /models/Wan2.1-T2V-1.3B-Diffusers/vae --out ckpt/wan21_vae
  python -m data_pipelines build --source navsim --src /data/navsim --out data/clips_100k --clips 100000 \
      --vae-checkpoint ckpt/wan21_vae
Train:
  python -m wam_jax train --config experiments/drivewam_wan21_1_3b.py:clips=100k

Arguments (the paper's ablations): guidance=on|off, memory=full|selective, init=wan|scratch,
clips=4k|10k|100k (selects data_root/clips_<n>), train=all|actions, data_root=DIR.
"""

import ml_collections

from wam_jax import experiment_base as base
from wam_jax.config import parse_arg
from wam_jax.models.presets import wan_model_config

# 480×832 frames → Wan 2.1 VAE latents 60×104; 4 latent frames (16 video frames) per 4-s chunk.
LATENT_FRAMES, LATENT_H, LATENT_W, WAYPOINTS = 4, 60, 104, 8


def get_config(arg=None):
    arg = parse_arg(arg, guidance="on", memory="selective", init="wan", clips="100k", train="all",
                    data_root="data", steps=100_000, batch=64, wan_checkpoint="ckpt/wan21_13b",
                    text_encoder="/models/Wan2.1-T2V-1.3B-Diffusers")
    if arg.clips not in ("4k", "10k", "100k"):
        raise ValueError(f"clips={arg.clips!r}: choose 4k, 10k or 100k")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = wan_model_config("wan2.1-t2v-1.3b", dtype="bfloat16", remat="dots", attention="auto")
    c.wam = dict(latent_frames_per_chunk=LATENT_FRAMES, latent_height=LATENT_H, latent_width=LATENT_W,
                 waypoints_per_chunk=WAYPOINTS, action_dim=3, guidance_tokens=32, action_rope_hw=None)
    c.chunks = 3
    c.init = arg.init
    c.init_checkpoint = arg.wan_checkpoint if arg.init == "wan" else ""
    c.action_norm = dict(mean=[[4.0 * (k + 1), 0.0, 0.0] for k in range(WAYPOINTS)],
                         std=[[2.0 * (k + 1), 0.3 * (k + 1), 0.03 * (k + 1)] for k in range(WAYPOINTS)])
    c.flow = base.flow(time_shift=3.0, loss_from_chunk=1)
    c.train = base.train(arg.steps, arg.batch, lr=5e-5, freeze=base.freeze_groups(arg.train))
    c.mesh = dict(data=1, fsdp=-1, tensor=1, sequence=1)
    c.data = dict(source="tfds", data_dir=f"{arg.data_root}/clips_{arg.clips}", split="train",
                  chunks_per_example=0, window_stride=1, seed=0, shuffle=True, num_epochs=0, drop_remainder=True,
                  num_workers=8, worker_buffer_size=2, read_threads=8, skip_bad_records=True, inputs="latents",
                  image_size=(), intent_vocab=(), brightness_jitter=0.0, flip_prob=0.0)
    c.guidance = dict(enabled=arg.guidance == "on", encoder="transformers", encoder_path=arg.text_encoder,
                      encoder_dtype="bfloat16", source="vlm")
    c.latent = dict(kind="wan_vae", frame_stride=1, space_to_depth=1, vae_checkpoint="ckpt/wan21_vae")
    video_tokens = LATENT_FRAMES * (LATENT_H // 2) * (LATENT_W // 2)
    c.sampler = base.sampler(video_steps=10, action_steps=10)
    c.memory = base.memory(arg.memory, video_tokens, WAYPOINTS, budget_chunks=6)
    c.rollout = dict(context_chunks=1, chunks=74, video_fps=4.0)
    return c
