"""Intent sources for scene-evolving guidance: a chunk's context → a short driving-intent text per example.

One interface (`IntentSource.intents(context_frames, extra) -> list[str]`), three sources:

  scene_rules  highway-env scene rules (`wam_jax.sim.highway`): from a live env (`intent_from_scene`, or
               `scene_intent` with the expert's future poses), or the intent already recorded/observed for
               the chunk. Frames are not looked at.
  vlm          a frozen vision-language model from a LOCAL directory (`AutoProcessor` +
               `AutoModelForImageTextToText`: LLaVA, Qwen2-VL, SmolVLM, PaliGemma, ...), shown the chunk's last
               context frames and prompted for the intent; greedy decoding, a short phrase comes out.
  fixed        one prompt for every chunk of every clip (the paper's "fixed prompt" baseline of Table 3).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from wam_jax.config import ConfigError


class IntentSource(Protocol):
    def intents(self, context_frames: Sequence[np.ndarray] | None, extra: Mapping[str, Any]) -> list[str]:
        """One intent text per example. context_frames: per example uint8 [T, H, W, 3] (oldest first)."""
        ...


# ----------------------------------------------------------------------------------------------------------------
# Phrases


def clean_phrase(text: str, max_words: int) -> str:
    """A generated answer → a short lower-case phrase: the first line and sentence, letters/digits/commas/
    apostrophes/hyphens only, at most `max_words` words, no leading or trailing punctuation."""
    text = text.strip().lower()
    text = re.split(r"[\n.!?;:]", text, maxsplit=1)[0]
    text = re.sub(r"[^a-z0-9,'\- ]+", " ", text)
    text = re.sub(r"\s*,\s*", ", ", text)
    kept = " ".join(text.split()[:max_words])
    return kept.strip(" ,'-")


def snap_to_vocabulary(phrase: str, vocabulary: Sequence[str]) -> str:
    """The vocabulary entry sharing the most words with `phrase` (ties: fewer extra words, then vocabulary
    order); `vocabulary[0]` (the default intent) when no entry shares a word."""
    have = set(re.findall(r"[a-z0-9']+", phrase.lower()))
    best, best_key = vocabulary[0], (0, 0)
    for entry in vocabulary:
        want = set(re.findall(r"[a-z0-9']+", entry.lower()))
        key = (len(have & want), -len(want - have))
        if key[0] > 0 and key > best_key:
            best, best_key = entry, key
    return best


def _check_frames(context_frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    if context_frames is None:
        raise ValueError("the vlm intent source needs context_frames: a list with one uint8 [T, H, W, 3] per example")
    out = []
    for i, f in enumerate(context_frames):
        f = np.asarray(f)
        if f.ndim == 3:
            f = f[None]
        if f.ndim != 4 or f.shape[-1] != 3 or f.shape[0] < 1 or f.dtype != np.uint8:
            raise ValueError(f"context_frames[{i}] must be uint8 [T, H, W, 3] with T >= 1, got {f.dtype} "
                             f"{list(f.shape)}")
        out.append(f)
    return out


# ----------------------------------------------------------------------------------------------------------------
# scene_rules


class SceneRulesSource:
    """highway-env scene rules. `text`: "command" (the vocabulary entry, e.g. "keep lane": what `intent_ids`
    index) or "phrase" (`Intent.text`, e.g. "keep lane, follow the car ahead").

    extra, one of:
      "intent"        recorded/observed intents, one per example: `sim.highway.Intent`s or texts (returned as is)
      "env"           live highway envs, one per example (a single env stands for a batch of one); with
                      "future_poses" (one world-pose array [K, 3] at `sim_config.waypoint_times` per example, or
                      None) and "sim_config" (`HighwaySimConfig`) the intent comes from that future
                      (`scene_intent`), else from the scene alone (`intent_from_scene`).
    """

    def __init__(self, text: str = "command"):
        if text not in ("command", "phrase"):
            raise ConfigError(f"guidance.scene_text={text!r} unknown; choose 'command' or 'phrase'")
        self.text = text

    def _pick(self, intent) -> str:
        if isinstance(intent, str):
            return intent
        return intent.command if self.text == "command" else intent.text

    def intents(self, context_frames, extra: Mapping[str, Any]) -> list[str]:
        n = None if context_frames is None else len(context_frames)
        if "intent" in extra:
            recorded = list(extra["intent"])
            if n is not None and len(recorded) != n:
                raise ValueError(f"extra['intent'] has {len(recorded)} entries for {n} examples")
            return [self._pick(i) for i in recorded]
        if "env" not in extra:
            raise ValueError("the scene_rules intent source needs extra['intent'] (recorded intents) or "
                             f"extra['env'] (live highway envs); got keys {sorted(extra)}")
        from wam_jax.sim import highway as hw

        envs = extra["env"] if isinstance(extra["env"], (list, tuple)) else [extra["env"]]
        if n is not None and len(envs) != n:
            raise ValueError(f"extra['env'] has {len(envs)} envs for {n} examples")
        futures = extra.get("future_poses")
        futures = [None] * len(envs) if futures is None else list(futures)
        if len(futures) != len(envs):
            raise ValueError(f"extra['future_poses'] has {len(futures)} entries for {len(envs)} envs")
        cfg = extra.get("sim_config")
        if cfg is None and any(f is not None for f in futures):
            raise ValueError("extra['future_poses'] needs extra['sim_config'] (the env's HighwaySimConfig)")
        return [self._pick(hw.scene_intent(env, cfg, fut) if fut is not None else hw.intent_from_scene(env))
                for env, fut in zip(envs, futures)]


# ----------------------------------------------------------------------------------------------------------------
# vlm


class VLMSource:
    """A frozen VLM from a local directory, prompted with the last `frames` context frames of each example.

    The prompt goes through the processor's chat template when it has one (one image entry per frame, then
    the text), else it is prefixed with the processor's image token per frame. `{vocabulary}` in the prompt is
    replaced by the vocabulary joined with ", ". Decoding is greedy (`do_sample=False, num_beams=1`) for at
    most `max_new_tokens`; the answer is cut to a short phrase (`clean_phrase`) and, with `snap`, mapped to the
    closest vocabulary entry (`snap_to_vocabulary`), so a model trained on the intent table sees known texts.
    """

    def __init__(self, path: str, prompt: str, frames: int = 1, max_new_tokens: int = 16, max_words: int = 8,
                 vocabulary: Sequence[str] = (), snap: bool = False, device: str = "cpu"):
        import os

        import torch  # noqa: F401  (fail here, not mid-run, if PyTorch is missing)
        import transformers

        if not path:
            raise ConfigError("guidance.source='vlm' needs guidance.vlm_path: a local directory with a "
                              "vision-language model and its processor; nothing is downloaded")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"guidance.vlm_path={path!r} has no config.json")
        if frames < 1 or max_new_tokens < 1 or max_words < 1:
            raise ConfigError(f"guidance.vlm_frames, vlm_max_new_tokens and max_words must be >= 1, got "
                              f"{frames}, {max_new_tokens}, {max_words}")
        if snap and not vocabulary:
            raise ConfigError("guidance.snap_to_vocabulary needs a non-empty vocabulary")
        self.processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
        self.model = self.model.to(device).eval()
        self.prompt = prompt.replace("{vocabulary}", ", ".join(vocabulary))
        self.frames, self.max_new_tokens, self.max_words = int(frames), int(max_new_tokens), int(max_words)
        self.vocabulary, self.snap, self.device = tuple(vocabulary), bool(snap), device

    def prompt_text(self, num_images: int) -> str:
        """The text fed to the processor for `num_images` frames."""
        p = self.processor
        if getattr(p, "chat_template", None):
            content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": self.prompt}]
            return p.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        token = getattr(p, "image_token", None)
        return (token * num_images + "\n" if token else "") + self.prompt

    def raw_answer(self, frames: np.ndarray) -> str:
        """The decoded greedy answer for one example's context frames uint8 [T, H, W, 3] (uses the last
        `self.frames`)."""
        import torch
        from PIL import Image

        images = [Image.fromarray(f) for f in frames[-self.frames:]]
        inputs = self.processor(images=images, text=self.prompt_text(len(images)), return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        if not self.model.config.is_encoder_decoder:
            out = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(out, skip_special_tokens=True)[0]

    def intents(self, context_frames, extra: Mapping[str, Any]) -> list[str]:
        result = []
        for frames in _check_frames(context_frames):
            phrase = clean_phrase(self.raw_answer(frames), self.max_words)
            result.append(snap_to_vocabulary(phrase, self.vocabulary) if self.snap else phrase)
        return result


# ----------------------------------------------------------------------------------------------------------------
# fixed


class FixedPromptSource:
    """The same prompt for every example: guidance that does not evolve with the scene."""

    def __init__(self, prompt: str):
        if not prompt.strip():
            raise ConfigError("guidance.fixed_prompt must be a non-empty text for the 'fixed' intent source")
        self.prompt = prompt

    def intents(self, context_frames, extra: Mapping[str, Any]) -> list[str]:
        if context_frames is not None:
            n = len(context_frames)
        elif "intent" in extra:
            n = len(list(extra["intent"]))
        elif "env" in extra:
            n = len(extra["env"]) if isinstance(extra["env"], (list, tuple)) else 1
        else:
            raise ValueError("the fixed intent source needs context_frames, extra['intent'] or extra['env'] to know "
                             f"how many examples there are; got keys {sorted(extra)}")
        return [self.prompt] * n


SOURCES = ("scene_rules", "vlm", "fixed")
