"""Default sections of a DriveWAM experiment config; experiment files start from these and change what differs.

Each function returns a plain dict of every field (the strict dataclasses behind them reject unknown keys), so
an experiment file reads as the list of its deviations.
"""

from __future__ import annotations


def flow(**overrides) -> dict:
    """The paper's objective: separate video/action timesteps with shifts 5 and 1, β_a = 1, noisy history
    with p = 0.5 at τ ~ U(0.5, 0.7) (covers the sampler's video stop level 0.6), inverse-dynamics layout."""
    return dict(dict(time_sampler="logit_normal", time_mean=0.0, time_std=1.0, time_shift=5.0,
                     action_time_shift=1.0, video_weight=1.0, action_weight=1.0, context="teacher_forcing",
                     per_chunk_noise=True, independent_action_time=True, loss_from_chunk=0,
                     layout="inverse_dynamics", history_noise_prob=0.5, history_noise_range=(0.5, 0.7)),
                **overrides)


def train(steps: int, batch_size: int, **overrides) -> dict:
    return dict(dict(steps=steps, batch_size=batch_size, lr=1e-4, warmup_steps=1000, end_lr_ratio=0.1,
                     weight_decay=0.01, b1=0.9, b2=0.999, clip_norm=1.0, ema_decay=0.999, freeze=(),
                     checkpoint_every=1000, keep_checkpoints=3, async_checkpoints=True, log_every=50), **overrides)


def sampler(**overrides) -> dict:
    """The paper's sampler: Euler, video 3 steps from τ = 1 to 0.6, then actions 10 steps from 1 to 0."""
    return dict(dict(video_steps=3, action_steps=10, solver="euler", shift=1.0, schedule="video_then_action",
                     video_stop=0.6), **overrides)


def memory(mode: str, video_tokens_per_chunk: int, action_tokens_per_chunk: int, budget_chunks: int = 6,
           **overrides) -> dict:
    """`full`, or `selective` with pools worth `budget_chunks` chunks of tokens."""
    if mode not in ("full", "selective"):
        raise ValueError(f"memory={mode!r}: choose 'full' or 'selective'")
    return dict(dict(mode=mode, max_chunks=80, video_budget=budget_chunks * video_tokens_per_chunk,
                     action_budget=budget_chunks * action_tokens_per_chunk, recent_chunks=1, tradeoff=0.7),
                **overrides)


def freeze_groups(train_what: str) -> tuple[str, ...]:
    """`all` trains everything; `actions` freezes the pretrained video DiT and trains the action parts only."""
    from wam_jax.models.wam import WAN_PARAM_GROUPS
    if train_what not in ("all", "actions"):
        raise ValueError(f"train={train_what!r}: choose 'all' or 'actions'")
    return WAN_PARAM_GROUPS if train_what == "actions" else ()


def paper_scale(preset: str, arg, latent_frames: int, latent_height: int, latent_width: int, waypoints: int = 8):
    """A DriveWAM run on real clips with pre-encoded Wan VAE latents and text-encoder intents; `arg` holds the
    ablation arguments (guidance, memory, init, clips, train, data_root, steps, batch, checkpoints)."""
    import ml_collections
    from wam_jax.models.presets import wan_model_config
    if arg.clips not in ("4k", "10k", "100k"):
        raise ValueError(f"clips={arg.clips!r}: choose 4k, 10k or 100k")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = wan_model_config(preset, dtype="bfloat16", remat="dots", attention="auto")
    c.wam = dict(latent_frames_per_chunk=latent_frames, latent_height=latent_height, latent_width=latent_width,
                 waypoints_per_chunk=waypoints, action_dim=3, guidance_tokens=32, action_rope_hw=None)
    c.chunks = 3
    c.init = arg.init
    c.init_checkpoint = arg.wan_checkpoint if arg.init == "wan" else ""
    # Placeholder statistics (~NAVSIM speeds); refit on the dataset with data.ActionNorm.fit before training.
    c.action_norm = dict(mean=[[4.0 * (k + 1), 0.0, 0.0] for k in range(waypoints)],
                         std=[[2.0 * (k + 1), 0.3 * (k + 1), 0.03 * (k + 1)] for k in range(waypoints)])
    c.flow = flow(time_shift=3.0, loss_from_chunk=1)
    c.train = train(arg.steps, arg.batch, lr=5e-5, freeze=freeze_groups(arg.train))
    c.mesh = dict(data=1, fsdp=-1, tensor=1, sequence=1)
    c.data = dict(source="tfds", data_dir=f"{arg.data_root}/clips_{arg.clips}", split="train",
                  chunks_per_example=0, window_stride=1, seed=0, shuffle=True, num_epochs=0, drop_remainder=True,
                  num_workers=8, worker_buffer_size=2, read_threads=8, skip_bad_records=True, inputs="latents",
                  image_size=(), intent_vocab=(), brightness_jitter=0.0, flip_prob=0.0)
    c.guidance = dict(enabled=arg.guidance == "on", encoder="transformers", encoder_path=arg.text_encoder,
                      encoder_dtype="bfloat16", source="vlm")
    c.latent = dict(kind="wan_vae", frame_stride=1, space_to_depth=1, channels=0, pca_path="",
                    vae_checkpoint=arg.vae_checkpoint)
    video_tokens = latent_frames * (latent_height // 2) * (latent_width // 2)
    c.sampler = sampler(video_steps=10, action_steps=10)
    c.memory = memory(arg.memory, video_tokens, waypoints, budget_chunks=6)
    c.rollout = dict(context_chunks=1, chunks=74, video_fps=4.0)
    return c
