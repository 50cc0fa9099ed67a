"""Default sections of a DriveWAM experiment config; experiment files start from these and change what differs.

Each function returns a plain dict of every field (the strict dataclasses behind them reject unknown keys), so
an experiment file reads as the list of its deviations.
"""

from __future__ import annotations


def flow(**overrides) -> dict:
    return dict(dict(time_sampler="logit_normal", time_mean=0.0, time_std=1.0, time_shift=1.0, video_weight=1.0,
                     action_weight=1.0, context="teacher_forcing", per_chunk_noise=False,
                     independent_action_time=False, loss_from_chunk=0), **overrides)


def train(steps: int, batch_size: int, **overrides) -> dict:
    return dict(dict(steps=steps, batch_size=batch_size, lr=1e-4, warmup_steps=1000, end_lr_ratio=0.1,
                     weight_decay=0.01, b1=0.9, b2=0.999, clip_norm=1.0, ema_decay=0.999, freeze=(),
                     checkpoint_every=1000, keep_checkpoints=3, async_checkpoints=True, log_every=50), **overrides)


def sampler(**overrides) -> dict:
    return dict(dict(video_steps=10, action_steps=10, solver="euler", shift=1.0, schedule="joint"), **overrides)


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
