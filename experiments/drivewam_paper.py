"""DriveWAM as the paper (arXiv 2605.28544) trains it: Wan2.2-TI2V-5B fully fine-tuned on real driving clips.

Model: Wan2.2-TI2V-5B (30 layers, 3072 wide), 256×448 frames → Wan 2.2 VAE latents 16×28 → 112 tokens per latent
frame; video at 1 Hz, 4-s chunks (4 frames → 1 latent frame per chunk); inverse-dynamics layout, ego-state
branch, actions as normalised ego-frame increments with MLP encoder/decoder (models/wam.py, docs/MODEL.md).
Benchmarks (`:bench=`):
  physicalai  12-s training segments (3 chunks) cropped from 20-s clips, actions at 10 Hz (40 per chunk),
              50k iterations
  navsim      the current frame is the condition and one 4-s chunk is predicted (8 poses at 2 Hz), 100k
              iterations with the lr halved at 50k, 70k and 90k
Objective: L = ‖v̂_z − v_z‖² + β_a‖v̂_a − v_a‖², β_a = 1, video/action timesteps drawn separately with shifts 5
and 1, noisy video history with p = 0.5. Optimiser: AdamW lr 1e-5, β (0.9, 0.95), weight decay 0.1 (code base:
grad clip 2.0, 10 warmup steps); the paper uses 48 GPUs at batch 1. Sampler: Euler, video 3 steps τ 1 → 0.6,
actions 10 steps 1 → 0. Memory: selective, 448 video and 160 action tokens, λ = 0.07.
Guidance: a Qwen3-VL-class VLM from a local path writes two sentences (road context, then navigation; under 50
words, no numbers) per chunk from the route command, the front frame and the recent ego path; umT5 embeds them.

Ablations (the paper's tables): guidance=scene|fixed, video_supervision=on|off, init=wan|scratch,
clips=4k|20k|100k, memory=selective|fifo|full. Prepare data and checkpoints as in experiments/drivewam_wan22_5b.py
(import-wan, import-vae, `data_pipelines build --source navsim|physicalai`); paths are arguments.
"""

import ml_collections

from wam_jax import experiment as base
from wam_jax.config import ConfigError, parse_arg
from wam_jax.models.presets import wan_model_config

FIXED_GUIDANCE = "Drive safely and follow the road."
PAPER_PROMPT = ("You see the front camera at the end of the latest 4-second chunk and a bird's-eye plot of the ego "
                "path over the previous 4 seconds. Write exactly two sentences "
                "under 50 words: first the road context, then navigation guidance. Use no numbers, units, "
                "distances or coordinates.")
BENCHES = {
    # waypoints per chunk, chunks per example, steps, lr halvings
    "physicalai": dict(waypoints=40, chunks=3, steps=50_000, halve=()),
    "navsim": dict(waypoints=8, chunks=2, steps=100_000, halve=(50_000, 70_000, 90_000)),
}


def get_config(arg=None):
    arg = parse_arg(arg, bench="physicalai", guidance="scene", video_supervision="on", init="wan", clips="100k",
                    memory="selective", data_root="data", batch=48, wan_checkpoint="ckpt/wan22_5b",
                    vae_checkpoint="ckpt/wan22_vae", text_encoder="/models/Wan2.2-TI2V-5B-Diffusers",
                    vlm="/models/Qwen3-VL-8B-Instruct")
    choices = dict(bench=tuple(BENCHES), guidance=("scene", "fixed"), video_supervision=("on", "off"),
                   init=("wan", "scratch"), clips=("4k", "20k", "100k"), memory=("selective", "fifo", "full"))
    for key, allowed in choices.items():
        if getattr(arg, key) not in allowed:
            raise ConfigError(f"{key}={getattr(arg, key)!r}: choose one of {allowed}")
    bench = BENCHES[arg.bench]
    k = bench["waypoints"]
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = wan_model_config("wan2.2-ti2v-5b", dtype="bfloat16", remat="dots", attention="auto")
    c.wam = dict(latent_frames_per_chunk=1, latent_height=256 // 16, latent_width=448 // 16, waypoints_per_chunk=k,
                 action_dim=3, guidance_tokens=32, action_rope_hw=None)
    c.chunks = bench["chunks"]
    c.init = arg.init
    c.init_checkpoint = arg.wan_checkpoint if arg.init == "wan" else ""
    # Placeholder increment statistics (~10 m/s); refit on the dataset (ActionNorm.fit, representation increments).
    dt = 4.0 / k
    c.action_norm = dict(mean=[10.0 * dt, 0.0, 0.0], std=[4.0 * dt, 0.5 * dt, 0.1 * dt], representation="increments")
    # Without video supervision no chunk video is generated to decode the actions from: they come from the
    # history alone (flow.layout=history_only), as in the demo-scale study (wam_jax/studies/paper.py).
    video_on = arg.video_supervision == "on"
    c.flow = base.flow(video_weight=1.0 if video_on else 0.0, loss_from_chunk=1,
                       layout="inverse_dynamics" if video_on else "history_only")
    c.train = base.train(bench["steps"], arg.batch, lr=1e-5, b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=2.0,
                         warmup_steps=10, lr_halve_at=bench["halve"], ema_decay=0.999, checkpoint_every=2000,
                         log_every=50)
    c.mesh = dict(data=1, fsdp=-1, tensor=1, sequence=1)
    c.data = dict(source="tfds", data_dir=f"{arg.data_root}/{arg.bench}_{arg.clips}", split="train",
                  chunks_per_example=c.chunks, window_stride=1, seed=0, shuffle=True, num_epochs=0,
                  drop_remainder=True, num_workers=8, worker_buffer_size=2, read_threads=8, skip_bad_records=True,
                  inputs="latents", image_size=(), intent_vocab=(), brightness_jitter=0.0, flip_prob=0.0)
    c.guidance = dict(enabled=True, encoder="transformers", encoder_path=arg.text_encoder, encoder_dtype="bfloat16",
                      source="fixed" if arg.guidance == "fixed" else "vlm", fixed_prompt=FIXED_GUIDANCE,
                      vlm_path=arg.vlm, vlm_prompt=PAPER_PROMPT, vlm_frames=1, vlm_max_new_tokens=96, max_words=50)
    c.latent = dict(kind="wan_vae", frame_stride=1, space_to_depth=1, channels=0, pca_path="",
                    vae_checkpoint=arg.vae_checkpoint)
    c.sampler = base.sampler(video_steps=3, video_stop=0.6, action_steps=10, solver="euler")
    c.memory = base.memory(arg.memory, 112, k, video_budget=448, action_budget=160, tradeoff=0.07, max_chunks=80)
    c.rollout = dict(context_chunks=1, chunks=74, video_fps=1.0)
    return c
