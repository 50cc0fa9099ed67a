"""Scene-evolving guidance: intent sources (`intents.py`) → text encoders (`text.py`) → per-chunk embeddings
(`core.py`). Import from here."""

from wam_jax.guidance.core import (DEFAULT_VLM_PROMPT, Guidance, GuidanceConfig, chunk_context_frames,
                                   clear_caches, embed_records, intent_table, make_encoder, make_guidance,
                                   make_source, model_dims, record_hook)
from wam_jax.guidance.intents import (SOURCES, FixedPromptSource, IntentSource, SceneRulesSource, VLMSource,
                                      clean_phrase, snap_to_vocabulary)
from wam_jax.guidance.text import ENCODERS, TextEncoder, TransformersTextEncoder, WordHashEncoder, words
