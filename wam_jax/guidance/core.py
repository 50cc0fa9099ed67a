"""Scene-evolving guidance (DriveWAM): a chunk-specific driving intent, written from the chunk's context, embedded
as text; chunk n's tokens cross-attend only to chunk n's embedding (`models/wam.py`, guidance [B, N, Lg, D]).

    intent source (scene rules | frozen VLM)  →  intent text per chunk  →  text encoder  →  [Lg, text_dim]

Entry points (see docs/GUIDANCE.md):
  intent_table(config)                 float32 [V, Lg, D]: the intent vocabulary embedded (what the trainer
                                       indexes with a batch's `intent_ids`); cached per config.
  make_guidance(section, text_dim, Lg) `Guidance`: the configured encoder + intent source;
                                       `.embed(context_frames, extra)` → [B, Lg, D] for one chunk.
  embed_records(texts, encoder)        [N, Lg, D] for the N chunk texts of one clip record.
  record_hook(config)                  a `ClipRecord → ClipRecord` transform for `data_pipelines.builders.build(
                                       ..., clip_transform=...)` that stores `guidance` (and with the VLM source,
                                       `intent`) in every record.
Encoders live in `guidance/text.py`, intent sources in `guidance/intents.py`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from wam_jax.config import ConfigError, dataclass_from_config
from wam_jax.guidance.intents import (SOURCES, FixedPromptSource, IntentSource, SceneRulesSource, VLMSource,
                                     clean_phrase, snap_to_vocabulary)
from wam_jax.guidance.text import ENCODERS, TextEncoder, TransformersTextEncoder, WordHashEncoder, words

DEFAULT_VLM_PROMPT = ("You are driving the ego car in the middle of the image. In a few words, what should it do "
                      "next? Answer with one of: {vocabulary}.")


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
    """The `config.guidance` section. Lg = config.wam.guidance_tokens, D = config.model.text_dim."""

    enabled: bool = False
    # text encoder
    encoder: str = "word_hash"          # "word_hash" (frozen lookup, nothing to download) | "transformers"
    encoder_path: str = ""              # transformers: local T5/umT5 dir, or a diffusers Wan root (text_encoder/)
    encoder_dtype: str = "float32"      # transformers: float32 | bfloat16 | float16 (umT5-XXL: bfloat16)
    max_text_tokens: int = 512          # transformers: tokens read per text (Wan: 512); the first Lg are kept
    hash_rms: float = 1.0               # word_hash: per-element RMS of every output token
    device: str = "cpu"                 # torch device of the transformers encoder and the VLM
    # intent source
    source: str = "scene_rules"         # "scene_rules" | "vlm" | "fixed"
    fixed_prompt: str = "drive on along the highway"    # fixed: the one prompt of every chunk
    scene_text: str = "command"         # scene_rules: "command" (vocabulary entry) | "phrase" (Intent.text)
    vocabulary: tuple[str, ...] = ()    # intent vocabulary of `intent_ids`; () → wam_jax.sim.highway.INTENTS
    vlm_path: str = ""                  # vlm: local dir loadable by AutoProcessor + AutoModelForImageTextToText
    vlm_prompt: str = DEFAULT_VLM_PROMPT  # "{vocabulary}" is replaced by the vocabulary joined with ", "
    vlm_frames: int = 1                 # vlm: last context frames shown per chunk
    vlm_max_new_tokens: int = 16        # vlm: greedy decoding budget
    max_words: int = 8                  # vlm: answer cut to this many words
    snap_to_vocabulary: bool = False    # vlm: map the answer to the closest vocabulary entry

    def __post_init__(self):
        def need(ok: bool, field: str, msg: str):
            if not ok:
                raise ConfigError(f"config.guidance.{field}={getattr(self, field)!r}: {msg}")

        need(self.encoder in ENCODERS, "encoder", f"unknown text encoder; choose one of {ENCODERS}")
        need(self.source in SOURCES, "source", f"unknown intent source; choose one of {SOURCES}")
        need(self.scene_text in ("command", "phrase"), "scene_text", "choose 'command' or 'phrase'")
        need(self.max_text_tokens >= 1, "max_text_tokens", "must be >= 1")
        need(self.vlm_frames >= 1, "vlm_frames", "must be >= 1")
        need(self.vlm_max_new_tokens >= 1, "vlm_max_new_tokens", "must be >= 1")
        need(self.max_words >= 1, "max_words", "must be >= 1")
        need(all(isinstance(v, str) and v.strip() for v in self.vocabulary), "vocabulary",
             "entries must be non-empty strings")
        need(len(set(self.vocabulary)) == len(self.vocabulary), "vocabulary", "entries must be unique")

    @classmethod
    def from_config(cls, section: Any) -> "GuidanceConfig":
        """From a ConfigDict/dict section (or a GuidanceConfig); an unknown field fails with its name."""
        if isinstance(section, GuidanceConfig):
            return section
        return dataclass_from_config(cls, section, "config.guidance")

    def intent_vocabulary(self) -> tuple[str, ...]:
        """`vocabulary`, or `sim.highway.INTENTS` when it is empty (the order of `intent_ids`)."""
        if self.vocabulary:
            return tuple(self.vocabulary)
        from wam_jax.sim.highway import INTENTS
        return tuple(INTENTS)


# ----------------------------------------------------------------------------------------------------------------
# Factories


def _encoder_key(gc: GuidanceConfig, text_dim: int, tokens: int) -> tuple:
    if gc.encoder == "word_hash":
        return ("word_hash", int(text_dim), int(tokens), float(gc.hash_rms))
    return ("transformers", gc.encoder_path, int(text_dim), int(tokens), gc.max_text_tokens, gc.encoder_dtype,
            gc.device)


@functools.lru_cache(maxsize=4)
def _cached_encoder(key: tuple) -> TextEncoder:
    if key[0] == "word_hash":
        _, text_dim, tokens, rms = key
        return WordHashEncoder(text_dim, tokens, rms)
    _, path, text_dim, tokens, max_text_tokens, dtype, device = key
    return TransformersTextEncoder(path, text_dim, tokens, max_text_tokens, dtype, device)


def make_encoder(section: Any, text_dim: int, tokens: int) -> TextEncoder:
    """The configured text encoder for [Lg=tokens, D=text_dim] embeddings; loaded once per setting."""
    if text_dim < 1 or tokens < 1:
        raise ConfigError(f"guidance needs text_dim >= 1 and guidance tokens >= 1, got {text_dim} and {tokens}")
    return _cached_encoder(_encoder_key(GuidanceConfig.from_config(section), text_dim, tokens))


def make_source(section: Any) -> IntentSource:
    """The configured intent source (the VLM is loaded here)."""
    gc = GuidanceConfig.from_config(section)
    if gc.source == "scene_rules":
        return SceneRulesSource(gc.scene_text)
    if gc.source == "fixed":
        return FixedPromptSource(gc.fixed_prompt)
    return VLMSource(gc.vlm_path, gc.vlm_prompt, gc.vlm_frames, gc.vlm_max_new_tokens, gc.max_words,
                     gc.intent_vocabulary(), gc.snap_to_vocabulary, gc.device)


@dataclasses.dataclass
class Guidance:
    """An encoder and an intent source, configured together (`make_guidance`)."""

    config: GuidanceConfig
    encoder: TextEncoder
    source: IntentSource

    def intents(self, context_frames: Sequence[np.ndarray] | None, extra: Mapping[str, Any] | None = None
                ) -> list[str]:
        """One intent text per example (see the source's docstring for `extra`)."""
        return self.source.intents(context_frames, dict(extra or {}))

    def embed(self, context_frames: Sequence[np.ndarray] | None, extra: Mapping[str, Any] | None = None
              ) -> np.ndarray:
        """float32 [B, Lg, D]: one chunk's guidance for a batch; stack chunks on axis 1 for the model's
        [B, N, Lg, D]."""
        return self.encoder.encode(self.intents(context_frames, extra))


def make_guidance(section: Any, text_dim: int, tokens: int) -> Guidance:
    """Encoder + intent source from a `config.guidance` section; `text_dim` = config.model.text_dim,
    `tokens` = Lg = config.wam.guidance_tokens."""
    gc = GuidanceConfig.from_config(section)
    return Guidance(gc, make_encoder(gc, text_dim, tokens), make_source(gc))


def model_dims(config) -> tuple[int, int]:
    """(text_dim, Lg) of an experiment config: config.model.text_dim and config.wam.guidance_tokens."""
    from wam_jax.models import wam as wam_lib

    wan, wam = wam_lib.build_configs(config)
    return int(wan.text_dim), int(wam.guidance_tokens)


# ----------------------------------------------------------------------------------------------------------------
# Intent table (trainer) and record hook (data pipeline)


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@functools.lru_cache(maxsize=8)
def _cached_table(gc: GuidanceConfig, text_dim: int, tokens: int) -> np.ndarray:
    vocabulary = list(gc.intent_vocabulary())
    if gc.source == "fixed":           # every intent id embeds the one prompt: the data's ids need no rewriting
        vocabulary = [FixedPromptSource(gc.fixed_prompt).prompt] * len(vocabulary)
    table = make_encoder(gc, text_dim, tokens).encode(vocabulary)
    table.setflags(write=False)
    return table


def intent_table(config) -> np.ndarray:
    """float32 [V, Lg, D], read-only: row v embeds vocabulary entry v (config.guidance.vocabulary, default
    `sim.highway.INTENTS`, the order of the data pipeline's `intent_ids`); with the fixed source every row embeds
    `fixed_prompt`. Cached in memory per config."""
    text_dim, tokens = model_dims(config)
    gc = GuidanceConfig.from_config(config.guidance)
    gc = dataclasses.replace(gc, vocabulary=_freeze(gc.vocabulary))
    return _cached_table(gc, text_dim, tokens)


def clear_caches() -> None:
    """Drops cached encoders and intent tables (e.g. to free an umT5-XXL)."""
    _cached_table.cache_clear()
    _cached_encoder.cache_clear()


def embed_records(texts: Sequence[str], encoder: TextEncoder | Guidance) -> np.ndarray:
    """float32 [N, Lg, D]: the guidance field of one clip record from its N per-chunk intent texts."""
    encoder = encoder.encoder if isinstance(encoder, Guidance) else encoder
    texts = list(texts)
    if not texts:
        raise ValueError("embed_records needs at least one chunk text")
    return encoder.encode(texts)


def chunk_context_frames(frames: np.ndarray, chunk_start: Sequence[int], count: int) -> list[np.ndarray]:
    """Per chunk n, the last `count` frames up to and including its start frame: frames[max(0, s-count+1):s+1]
    (the frames observed when chunk n is planned), uint8 [≤count, H, W, 3]."""
    return [frames[max(0, int(s) - count + 1): int(s) + 1] for s in chunk_start]


def record_hook(config, use: str = "intent") -> Callable[[Any], Any]:
    """A clip transform for `data_pipelines.builders.build(..., clip_transform=...)` that fills `guidance`
    [N, Lg, D] of every `schema.ClipRecord`, with Lg/D taken from the experiment config:

      use="intent"  embed the record's own `intent` texts (highway records: the scene-rule commands)
      use="source"  run the configured intent source on each chunk's context frames (`chunk_context_frames`,
                    `guidance.vlm_frames` of them; scene_rules reuses the recorded intents), store the texts in
                    `intent` and embed them. For the VLM this is the offline "write the intent" pass.

    Embeddings made with the word_hash encoder equal `intent_table(config)` rows for vocabulary texts, so a
    dataset of precomputed guidance and one of intent ids train the same model.
    """
    if use not in ("intent", "source"):
        raise ValueError(f"record_hook(use={use!r}): choose 'intent' or 'source'")
    text_dim, tokens = model_dims(config)
    gc = GuidanceConfig.from_config(config.guidance)
    encoder = make_encoder(gc, text_dim, tokens)
    source = make_source(gc) if use == "source" else None

    def transform(clip):
        texts = clip.intent
        if source is not None and not (gc.source == "scene_rules" and texts is not None):
            if clip.frames is None:
                raise ValueError(f"clip {clip.clip_id!r}: the {gc.source} intent source needs frames in the record")
            texts = source.intents(chunk_context_frames(clip.frames, clip.chunk_start, gc.vlm_frames), {})
        if texts is None:
            raise ValueError(f"clip {clip.clip_id!r} has no per-chunk 'intent' texts to embed; build it with "
                             "intents or use record_hook(config, use='source')")
        return dataclasses.replace(clip, intent=list(texts), guidance=embed_records(texts, encoder))

    return transform


__all__ = [
    "GuidanceConfig", "Guidance", "TextEncoder", "IntentSource", "WordHashEncoder", "TransformersTextEncoder",
    "SceneRulesSource", "VLMSource", "FixedPromptSource", "make_encoder", "make_source", "make_guidance",
    "model_dims", "intent_table", "clear_caches", "embed_records", "chunk_context_frames", "record_hook",
    "clean_phrase", "snap_to_vocabulary",
    "words", "DEFAULT_VLM_PROMPT",
]
