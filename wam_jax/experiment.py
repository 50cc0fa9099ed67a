"""An experiment: the default config sections experiment files start from, and `Experiment(config)`, which
builds the runtime objects of a config once (model, objective, sampler, memory, guidance, simulator).

Section helpers (`flow`, `train`, `sampler`, `memory`) return every field of the dataclass that reads the
section, so a default is written once, in that dataclass; experiment files list only their deviations.
"""

from __future__ import annotations

import dataclasses
import functools

from wam_jax.config import ConfigError, dataclass_from_config


def _section(cls, **fields) -> dict:
    """Every field of the dataclass behind a config section, its defaults overridden by `fields` (so a section
    default is written once: in the dataclass that reads it)."""
    return dataclasses.asdict(cls(**fields))


def flow(**overrides) -> dict:
    from wam_jax.training.objective import FlowConfig
    return _section(FlowConfig, **overrides)


def train(steps: int, batch_size: int, **overrides) -> dict:
    from wam_jax.training.trainer import TrainConfig
    return _section(TrainConfig, steps=steps, batch_size=batch_size, **overrides)


def sampler(**overrides) -> dict:
    from wam_jax.rollout.engine import SamplerConfig
    return _section(SamplerConfig, **overrides)


def memory(mode: str, video_tokens_per_chunk: int, action_tokens_per_chunk: int, budget_chunks: int = 4,
           **overrides) -> dict:
    """`full` (every token, sized for `max_chunks`), or `fifo` / `selective` pools of `budget_chunks` chunks of
    tokens per layer (λ and the rest from MemoryConfig). The paper keeps 448 video + 160 action tokens: 4 chunks
    of its 112 video (one 8×14 latent frame) + 40 action (4 s at 10 Hz) tokens, so 4 chunks is the paper's
    budget at any token layout."""
    from wam_jax.rollout.kv_memory import MODES, MemoryConfig
    if mode not in MODES:
        raise ConfigError(f"memory={mode!r}: choose one of {MODES}")
    return _section(MemoryConfig, **dict(dict(mode=mode, video_budget=budget_chunks * video_tokens_per_chunk,
                                              action_budget=budget_chunks * action_tokens_per_chunk), **overrides))


def freeze_groups(train_what: str) -> tuple[str, ...]:
    """`all` trains everything; `actions` freezes the pretrained video DiT and trains the action parts only."""
    from wam_jax.models.wam import WAN_PARAM_GROUPS
    if train_what not in ("all", "actions"):
        raise ConfigError(f"train={train_what!r}: choose 'all' or 'actions'")
    return WAN_PARAM_GROUPS if train_what == "actions" else ()


def paper_scale(preset: str, arg, latent_frames: int, latent_height: int, latent_width: int, waypoints: int = 8):
    """A DriveWAM run on real clips with pre-encoded Wan VAE latents and text-encoder intents; `arg` holds the
    ablation arguments (guidance, memory, init, clips, train, data_root, steps, batch, checkpoints)."""
    import ml_collections
    from wam_jax.models.presets import wan_model_config
    if arg.clips not in ("4k", "10k", "100k"):
        raise ConfigError(f"clips={arg.clips!r}: choose 4k, 10k or 100k")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = wan_model_config(preset, dtype="bfloat16", remat="dots", attention="auto")
    c.wam = dict(latent_frames_per_chunk=latent_frames, latent_height=latent_height, latent_width=latent_width,
                 waypoints_per_chunk=waypoints, action_dim=3, guidance_tokens=32, action_rope_hw=None)
    c.chunks = 3
    c.init = arg.init
    c.init_checkpoint = arg.wan_checkpoint if arg.init == "wan" else ""
    # Placeholder increment statistics (~NAVSIM speeds, 2 Hz); refit on the dataset with ActionNorm.fit.
    c.action_norm = dict(mean=[4.0, 0.0, 0.0], std=[2.0, 0.3, 0.03], representation="increments")
    c.flow = flow(loss_from_chunk=1)
    c.train = train(arg.steps, arg.batch, lr=5e-5, warmup_steps=1000, log_every=50, freeze=freeze_groups(arg.train))
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
    c.sampler = sampler()
    c.memory = memory(arg.memory, video_tokens, waypoints, max_chunks=80)      # the paper's 4-chunk budget
    c.rollout = dict(context_chunks=1, chunks=74, video_fps=4.0)
    return c


class Experiment:
    """The runtime objects of one experiment config, each built once from its section (strict keys).

    Every command goes through this instead of building configs by hand:
        exp = Experiment(config)
        exp.wan, exp.wam        model configs            exp.flow, exp.train     objective, optimiser
        exp.sampler, exp.memory rollout configs          exp.action_norm         waypoint normalisation
        exp.guidance            intent source + encoder (None when guidance is off)
        exp.intent_table        [V, Lg, D] embeddings of the intent vocabulary (None when guidance is off)
        exp.engine(chunks)      a RolloutEngine          exp.sim, exp.closed_loop  highway-env settings
    """

    def __init__(self, config):
        self.config = config

    @functools.cached_property
    def _model_configs(self):
        from wam_jax.models import wam as wam_lib
        return wam_lib.build_configs(self.config)

    @property
    def wan(self):
        return self._model_configs[0]

    @property
    def wam(self):
        return self._model_configs[1]

    @functools.cached_property
    def flow(self):
        from wam_jax.training.objective import FlowConfig
        return FlowConfig.from_config(self.config.flow)

    @functools.cached_property
    def train(self):
        from wam_jax.training.trainer import TrainConfig
        return TrainConfig.from_config(self.config.train)

    @functools.cached_property
    def sampler(self):
        from wam_jax.rollout.engine import SamplerConfig
        return SamplerConfig.from_config(self.config.sampler)

    @functools.cached_property
    def memory(self):
        from wam_jax.rollout.kv_memory import MemoryConfig
        return MemoryConfig.from_config(self.config.memory)

    @functools.cached_property
    def action_norm(self):
        from wam_jax.data import ActionNorm
        return ActionNorm.from_config(self.config.action_norm)

    @property
    def guidance_enabled(self) -> bool:
        return bool(self.config.guidance.enabled)

    @functools.cached_property
    def guidance(self):
        """`guidance.Guidance` (scene rules in the demo, a VLM at paper scale), or None when guidance is off."""
        if not self.guidance_enabled:
            return None
        from wam_jax import guidance
        return guidance.make_guidance(self.config.guidance, self.wan.text_dim, self.wam.guidance_tokens)

    @functools.cached_property
    def intent_table(self):
        if not self.guidance_enabled:
            return None
        from wam_jax import guidance
        return guidance.intent_table(self.config)

    def engine(self, chunks: int | None = None, sampler=None):
        """A RolloutEngine with the config's sampler (or `sampler`). `chunks`: the rollout's whole length
        (context + generated) when known; a full cache is then sized to it rather than to memory.max_chunks,
        since every denoising step attends over all of the cache's slots (an 80-chunk cache for a 2-chunk
        rollout costs 40× the attention; the empty slots are masked, so the result is the same)."""
        import dataclasses

        from wam_jax.rollout.engine import RolloutEngine
        memory = self.memory
        if chunks is not None and memory.mode == "full" and chunks < memory.max_chunks:
            memory = dataclasses.replace(memory, max_chunks=max(1, int(chunks)))
        return RolloutEngine(self.wan, self.wam, self.sampler if sampler is None else sampler, memory)

    @functools.cached_property
    def sim(self):
        from wam_jax.sim.highway import HighwaySimConfig
        return dataclass_from_config(HighwaySimConfig, self.config.get("sim", {}), "config.sim")

    @functools.cached_property
    def closed_loop(self):
        from wam_jax.evaluation.closed_loop import ClosedLoopConfig
        return dataclass_from_config(ClosedLoopConfig, self.config.get("closed_loop", {}), "config.closed_loop")
