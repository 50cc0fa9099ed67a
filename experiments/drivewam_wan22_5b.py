"""DriveWAM on Wan2.2-TI2V-5B at a larger frame size than the paper: real driving clips (NAVSIM or PhysicalAI-AV)
with pre-encoded Wan 2.2 VAE latents (z=48, stride 4×16×16) and umT5 intent embeddings.

How it differs from the paper's run (experiments/drivewam_paper.py): 480×832 frames and 4 latent frames per
chunk instead of 256×448 and 1; 8 waypoints per chunk on both benchmarks; lr 5e-5 with a cosine schedule,
AdamW β2 0.999, weight decay 0.01; memory budgets of 6 chunks instead of 448 / 160 tokens, λ 0.7; the
objective, layout and sampler are the paper's.

Prepare once (local paths; nothing is downloaded):
  python -m wam_jax import-wan --src /models/Wan2.2-TI2V-5B-Diffusers/transformer --out ckpt/wan22_5b
  python -m wam_jax import-vae --src /models/Wan2.2-TI2V-5B-Diffusers/vae --out ckpt/wan22_vae
  python -m data_pipelines build --source navsim --src /data/navsim --out data/clips_100k --clips 100000 \
      --vae-checkpoint ckpt/wan22_vae
Train:
  python -m wam_jax train --config experiments/drivewam_wan22_5b.py:clips=100k

Arguments (the paper's ablations): guidance=on|off, memory=full|fifo|selective, init=wan|scratch,
clips=4k|10k|100k (selects data_root/clips_<n>), train=all|actions, data_root=DIR.
"""

from wam_jax import experiment as base
from wam_jax.config import one_of, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, guidance=one_of("on", "off"), memory=one_of("selective", "full"), init=one_of("wan", "scratch"),
                    clips=one_of("100k", "10k", "4k"), train=one_of("all", "actions"),
                    data_root="data", steps=100_000, batch=32, wan_checkpoint="ckpt/wan22_5b",
                    vae_checkpoint="ckpt/wan22_vae", text_encoder="/models/Wan2.2-TI2V-5B-Diffusers")
    # 480×832 frames → Wan 2.2 VAE latents 30×52; 4 latent frames (16 video frames) per 4-s chunk.
    return base.paper_scale("wan2.2-ti2v-5b", arg, latent_frames=4, latent_height=30, latent_width=52)
