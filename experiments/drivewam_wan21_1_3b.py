"""DriveWAM on Wan2.1-T2V-1.3B, a smaller backbone than the paper's Wan2.2-TI2V-5B
(experiments/drivewam_paper.py): real driving clips (NAVSIM or PhysicalAI-AV) with pre-encoded Wan 2.1 VAE
latents (z=16, stride 4×8×8) and umT5 intent embeddings; otherwise as experiments/drivewam_wan22_5b.py (which
lists how that run differs from the paper's).

Prepare once (local paths; nothing is downloaded):
  python -m wam_jax import-wan --src /models/Wan2.1-T2V-1.3B-Diffusers/transformer --out ckpt/wan21_13b
  python -m wam_jax import-vae --src /models/Wan2.1-T2V-1.3B-Diffusers/vae --out ckpt/wan21_vae
  python -m data_pipelines build --source navsim --src /data/navsim --out data/clips_100k --clips 100000 \
      --vae-checkpoint ckpt/wan21_vae
Train:
  python -m wam_jax train --config experiments/drivewam_wan21_1_3b.py:clips=100k

Arguments (the paper's ablations): guidance=on|off, memory=full|fifo|selective, init=wan|scratch,
clips=4k|10k|100k (selects data_root/clips_<n>), train=all|actions, data_root=DIR.
"""

from wam_jax import experiment as base
from wam_jax.config import one_of, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, guidance=one_of("on", "off"), memory=one_of("selective", "full"), init=one_of("wan", "scratch"),
                    clips=one_of("100k", "10k", "4k"), train=one_of("all", "actions"),
                    data_root="data", steps=100_000, batch=64, wan_checkpoint="ckpt/wan21_13b",
                    vae_checkpoint="ckpt/wan21_vae", text_encoder="/models/Wan2.1-T2V-1.3B-Diffusers")
    # 480×832 frames → Wan 2.1 VAE latents 60×104; 4 latent frames (16 video frames) per 4-s chunk.
    return base.paper_scale("wan2.1-t2v-1.3b", arg, latent_frames=4, latent_height=60, latent_width=104)
