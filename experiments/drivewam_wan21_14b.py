"""DriveWAM on Wan2.1-T2V-14B: a Wan-14B-size DriveWAM (the scaling check of docs/SCALING.md), the same run as
experiments/drivewam_wan21_1_3b.py on real driving clips (NAVSIM or PhysicalAI-AV) with pre-encoded Wan 2.1
VAE latents (z=16, stride 4×8×8) and umT5 intent embeddings.

Prepare once (local paths; nothing is downloaded):
  python -m wam_jax import-wan --src /models/Wan2.1-T2V-14B-Diffusers/transformer --out ckpt/wan21_14b
  python -m wam_jax import-vae --src /models/Wan2.1-T2V-14B-Diffusers/vae --out ckpt/wan21_vae
  python -m data_pipelines build --source navsim --src /data/navsim --out data/clips_100k --clips 100000 \
      --vae-checkpoint ckpt/wan21_vae
Train:
  python -m wam_jax train --config experiments/drivewam_wan21_14b.py:clips=100k

Arguments (the paper's ablations): guidance=on|off, memory=full|selective, init=wan|scratch,
clips=4k|10k|100k (selects data_root/clips_<n>), train=all|actions, data_root=DIR.
"""

from wam_jax import experiment as base
from wam_jax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, guidance="on", memory="selective", init="wan", clips="100k", train="all",
                    data_root="data", steps=100_000, batch=64, wan_checkpoint="ckpt/wan21_14b",
                    vae_checkpoint="ckpt/wan21_vae", text_encoder="/models/Wan2.1-T2V-14B-Diffusers")
    # 480×832 frames → Wan 2.1 VAE latents 60×104; 4 latent frames (16 video frames) per 4-s chunk.
    c = base.paper_scale("wan2.1-t2v-14b", arg, latent_frames=4, latent_height=60, latent_width=104)
    # Each block's input waits in host memory for the backward pass: what fits batch 1 per chip on 8 v5p chips
    # with 16.6% HBM to spare (docs/SCALING.md; `remat=full` needs 108 GiB of the 95.74).
    c.model.remat = "offload"
    return c
