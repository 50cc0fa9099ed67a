"""DriveWAM on highway-env: the embedded default that `make demo` runs end to end on a CPU.

Data: 160 expert (IDM + MOBIL) clips of 20 s (closed-loop PDMS 0.88 against 0.71 with 40, docs/RESULTS.md),
rendered as 32×128 heading-up ego-centred frames at 5 Hz (`:camera=square`: the earlier 64×64), 4-s chunks
with 8 waypoints at 2 Hz; pixel blocks (space-to-depth 8, one frame a second), scene-rule intents embedded by
the word_hash text encoder. Latents: space-to-depth pixel blocks projected on their principal components (a
linear autoencoder fit on the training frames, scaled to unit variance). Model: a small Wan-architecture DiT
(3 layers, width 128, 1.3M parameters) trained from scratch.

Ablations as arguments, e.g. `:guidance=off`, `:memory=selective` (or fifo, full), `:steps=4000`, `:clips=200`,
`:camera=square`, `:recovery=0.15` (a recovery burst per clip).
"""

import ml_collections

from data_pipelines import pipeline
from wam_jax import experiment as base
from wam_jax.config import one_of, parse_arg
from wam_jax.models.presets import wan_model_config


def get_config(arg=None):
    arg = parse_arg(arg, guidance=one_of("on", "off"), memory=one_of("full", "selective"), steps=2000, clips=160,
                    data_dir="out/demo/data", seed=0, init=one_of("scratch", "wan"), layers=3,
                    camera=one_of("wide", "square"), recovery=0.0)
    c = ml_collections.ConfigDict()
    c.seed = arg.seed
    s2d, stride = 8, 5
    # wide: 32 x 128 px at 1.5 px/m, 11 m to each side and 72 m ahead; square: 64 x 64 px, 43 m ahead and across
    # (mostly off-road). Both give 64 video tokens per chunk. In the wide frame the road fills the image and a
    # heading error of 3 degrees shifts the lane lines by 6 px across it instead of 3: closed-loop off-road
    # fell from 0.81 to 0.31 (docs/RESULTS.md).
    (height, width), centering = ((64, 64), (0.3, 0.5)) if arg.camera == "square" else ((32, 128), (0.15, 0.5))
    z = 16       # latent channels: 8×8×3 pixel blocks projected on their top 16 principal components
    # Width 128 (4 heads × 32): at width 64 the video loss stalls and imagination ignores its context
    # (docs/RESULTS.md, demo model choice).
    c.model = wan_model_config("tiny", num_attention_heads=4, attention_head_dim=32, num_layers=arg.layers,
                               ffn_dim=512, in_channels=z, out_channels=z, text_dim=32, freq_dim=64)
    # 20 frames per 4-s chunk / stride 5 → 4 latent frames of (H/8)×(W/8): one per second ahead.
    c.wam = dict(latent_frames_per_chunk=20 // stride, latent_height=height // s2d, latent_width=width // s2d,
                 waypoints_per_chunk=8, action_dim=3, guidance_tokens=4, action_rope_hw=None)
    c.chunks = 2                     # one context chunk + one predicted chunk per training example
    c.init = arg.init
    c.init_checkpoint = ""
    # Per-step increment statistics: placeholders that `train` (data_pipelines/prepare.py) replaces by the built
    # dataset's (from_data=True); the run's saved config.json holds the fitted values.
    c.action_norm = dict(mean=[[12.0, 0.0, 0.0]] * 8, std=[[3.0, 0.5, 0.02]] * 8, representation="increments",
                         from_data=True)
    # The paper's objective, β_a = 2 (paper: 1), video time shift 1 (paper's code base: 5, made for Wan's
    # 480p+ latents; 64 video tokens per chunk need no shift towards high noise, as SD3's resolution rule says).
    c.flow = base.flow(action_weight=2.0, loss_from_chunk=1, time_shift=1.0)
    c.train = base.train(arg.steps, 8, lr=1e-3, warmup_steps=100, end_lr_ratio=0.05, b2=0.99, ema_decay=0.995,
                         keep_checkpoints=2, log_every=250)
    c.mesh = dict(data=1, fsdp=1, tensor=1, sequence=1)
    data = pipeline.default_config(arg.data_dir).to_dict()
    for key in ("batch_size", "shard_index", "shard_count"):   # set by the trainer (global batch, process shard)
        data.pop(key)
    # Only the frames the latent codec encodes (one a second) are decoded from the records.
    c.data = dict(data, source="tfds", read_threads=1, frame_stride=stride)
    c.guidance = dict(enabled=arg.guidance == "on", encoder="word_hash", source="scene_rules")
    # `make demo` fits the PCA basis on the training frames and stores it next to the dataset.
    c.latent = dict(kind="pca", frame_stride=stride, space_to_depth=s2d, channels=z, pca_path="",
                    vae_checkpoint="")
    # The paper's sampler (video 3 Euler steps 1 → 0.6, then actions 10 steps 1 → 0), the actions' starting noise
    # at a quarter scale: chosen with 40 / 80 / 160 training clips on 32 closed-loop seeds, the demo's 16 and 16
    # others (PDMS 0.884 against 0.864 at half scale with 160 clips, docs/RESULTS.md).
    c.sampler = base.sampler(action_noise=0.25)
    video_tokens = (20 // stride) * (height // s2d // 2) * (width // s2d // 2)
    c.memory = base.memory(arg.memory, video_tokens_per_chunk=video_tokens, action_tokens_per_chunk=8,
                           budget_chunks=3, max_chunks=80)
    c.rollout = dict(context_chunks=1, chunks=1, video_fps=1.0)
    # Simulator and closed-loop settings shared by dataset building and evaluation (same camera and traffic).
    # heading_up: frames rotate with the ego like a car-mounted camera, so image and waypoints share one frame.
    c.sim = dict(vehicles=30, image_size=(height, width), centering=centering, scaling=1.5,
                 supersample=4 if arg.camera == "square" else 2, frame_hz=5.0, chunk_s=4.0, waypoints_per_chunk=8,
                 waypoint_hz=2.0, heading_up=True)
    # The open-loop plan error is scored on held-out clips (evaluation/imagination.py); rolling the expert out
    # from every replan state for a closed-loop ADE would triple the simulation time of the demo's evaluation.
    c.closed_loop = dict(episode_s=20.0, warmup_s=4.0, replan_s=1.0, history_frames=21, history_poses=8,
                         intent_source="scene", expert_ade=False, video=True, plots=True, video_episodes=2,
                         workers=0)
    # Expert demonstrations with small steering bursts (noise injection) so the data shows lane recovery.
    # `:recovery=0.15` adds one stronger burst per clip at the end of its first chunk (heading errors of about
    # 3-10 degrees at the chunk boundary, the expert's recovery after it): it made closed-loop driving worse
    # (off-road 0.62 against 0.19, docs/RESULTS.md), so it is off.
    c.dataset = dict(num_clips=arg.clips, num_chunks=5, seed=0, heldout_seed=100000, heldout_clips=4,
                     perturb_steering=0.05, perturb_rate_hz=0.3, perturb_s=0.6, perturb_window_s=0.0,
                     recovery_steering=arg.recovery)
    return c
