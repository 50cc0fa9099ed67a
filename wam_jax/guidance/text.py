"""Text encoders for scene-evolving guidance: intent sentences → embeddings `float32 [n, Lg, text_dim]`.

One interface (`TextEncoder.encode(texts)`), two encoders:

  word_hash     the embedded default, needs nothing on disk. A FROZEN LOOKUP, NOT A LANGUAGE MODEL: every
                lower-cased word maps to a fixed pseudo-random unit vector (seeded by a BLAKE2 hash of the word,
                so it is the same on every machine and Python run); position mixing makes word order matter.
                Different words are unrelated (synonyms are as far apart as antonyms); phrases sharing words are
                correlated. Good enough for a closed intent vocabulary, which the DiT learns to read.
  transformers  a T5 / mT5 / umT5 encoder (Wan uses umT5-XXL, 4096 wide) and its tokenizer loaded with
                `transformers` (PyTorch, CPU by default) from a LOCAL directory; the output is the last hidden
                state, zero past each text's tokens, as Wan's umT5 context is.

Both pad or truncate to `Lg` tokens with zero rows, like Wan's text context.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from typing import Protocol, Sequence

import numpy as np

from wam_jax.config import ConfigError


class TextEncoder(Protocol):
    tokens: int  # Lg
    text_dim: int  # D

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [n, Lg, D]: one embedding per text, zero rows past the text's tokens."""
        ...


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"encode() takes a list of texts, got the single string {texts!r}; wrap it in a list")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__} {t!r}, expected str")
    return texts


# ----------------------------------------------------------------------------------------------------------------
# word_hash


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """The words `word_hash` reads: lower-cased runs of letters/digits (an apostrophe suffix kept); punctuation
    and whitespace separate words and are otherwise ignored."""
    return _WORD.findall(text.lower())


def _seed(tag: str) -> int:
    return int.from_bytes(hashlib.blake2b(tag.encode("utf-8"), digest_size=8).digest(), "little")


class WordHashEncoder:
    """Frozen pseudo-random word lookup with position mixing (not a language model).

    For the words w_0 … w_{n-1} of a text (see `words`):
        v(w)   unit vector in R^D from a normal draw seeded by BLAKE2b("word:" + w)
        u_i    = P_i v(w_i), P_i a fixed signed permutation seeded by BLAKE2b("position:" + i)
        s      = Σ_i u_i / √n, an order-sensitive summary of the whole text
        tok_i  = rms · √D · (u_i + s) / ‖u_i + s‖         for i < min(n, Lg); zero rows after
    Every token carries the whole text through `s`, so truncation to few tokens (Lg = 1) still tells
    "change lane left" from "change lane right", and "a b" from "b a". An empty text encodes to zeros.
    """

    def __init__(self, text_dim: int, tokens: int, rms: float = 1.0):
        if text_dim < 1 or tokens < 1:
            raise ConfigError(f"word_hash needs text_dim >= 1 and tokens >= 1, got text_dim={text_dim}, "
                              f"tokens={tokens}")
        if not rms > 0:
            raise ConfigError(f"guidance.hash_rms must be positive, got {rms}")
        self.text_dim, self.tokens, self.rms = int(text_dim), int(tokens), float(rms)
        self._words: dict[str, np.ndarray] = {}
        self._positions: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def word_vector(self, word: str) -> np.ndarray:
        """float64 [D] unit vector of one (already lower-cased) word."""
        v = self._words.get(word)
        if v is None:
            v = np.random.default_rng(_seed("word:" + word)).standard_normal(self.text_dim)
            v /= np.linalg.norm(v)
            self._words[word] = v
        return v

    def _mix(self, i: int, v: np.ndarray) -> np.ndarray:
        p = self._positions.get(i)
        if p is None:
            rng = np.random.default_rng(_seed(f"position:{i}"))
            p = (rng.permutation(self.text_dim), rng.choice(np.array([-1.0, 1.0]), self.text_dim))
            self._positions[i] = p
        perm, sign = p
        return sign * v[perm]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.tokens, self.text_dim), np.float32)
        scale = self.rms * math.sqrt(self.text_dim)
        for b, text in enumerate(texts):
            ws = words(text)
            if not ws:
                continue
            u = np.stack([self._mix(i, self.word_vector(w)) for i, w in enumerate(ws)])
            s = u.sum(0) / math.sqrt(len(ws))
            tok = u[: self.tokens] + s
            norm = np.linalg.norm(tok, axis=-1, keepdims=True)
            out[b, : len(tok)] = scale * tok / np.maximum(norm, 1e-12)
        return out


# ----------------------------------------------------------------------------------------------------------------
# transformers (T5 / mT5 / umT5)


_TORCH_DTYPES = ("float32", "bfloat16", "float16")
_ENCODER_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


def resolve_encoder_dirs(path: str) -> tuple[str, str]:
    """(tokenizer_dir, encoder_dir) for a local directory that is either one model folder (config.json and
    tokenizer files together) or a diffusers pipeline root such as Wan's (`text_encoder/` + `tokenizer/`)."""
    if not path:
        raise ConfigError("guidance.encoder='transformers' needs guidance.encoder_path: a local directory with a "
                          "T5/umT5 encoder and its tokenizer (or a diffusers Wan root with text_encoder/ and "
                          "tokenizer/); nothing is downloaded")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"guidance.encoder_path={path!r} is not a directory")
    if os.path.isfile(os.path.join(path, "text_encoder", "config.json")):
        tok = os.path.join(path, "tokenizer")
        return (tok if os.path.isdir(tok) else path), os.path.join(path, "text_encoder")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"guidance.encoder_path={path!r} has neither config.json nor text_encoder/config.json")
    return path, path


class TransformersTextEncoder:
    """A T5-family encoder from a local directory (PyTorch). encode(texts) → float32 [n, Lg, D].

    Texts are tokenised up to `max_text_tokens` (Wan: 512, the tokenizer adds </s>), encoded with their
    attention mask, and the first Lg positions of the last hidden state are kept; positions past a text's
    tokens are zero. Because the encoder is bidirectional, the first Lg states see the whole text even when
    Lg is small.
    """

    def __init__(self, path: str, text_dim: int, tokens: int, max_text_tokens: int = 512,
                 dtype: str = "float32", device: str = "cpu", batch_size: int = 16):
        import torch
        import transformers

        if dtype not in _TORCH_DTYPES:
            raise ConfigError(f"guidance.encoder_dtype={dtype!r} unknown; choose one of {_TORCH_DTYPES}")
        tok_dir, enc_dir = resolve_encoder_dirs(path)
        config = transformers.AutoConfig.from_pretrained(enc_dir, local_files_only=True)
        width = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
        if width != text_dim:
            raise ConfigError(f"text encoder at {enc_dir!r} ({config.model_type}) outputs {width}-wide embeddings "
                              f"but the model's text_dim (config.model.text_dim) is {text_dim}; use an encoder of "
                              f"width {text_dim} or set model.text_dim={width}")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(f"tokenizer at {tok_dir!r} has neither a pad nor an eos token to pad with")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        cls_name = _ENCODER_CLASSES.get(config.model_type)
        if cls_name is None:
            cls_name = next((a for a in (config.architectures or []) if a.endswith("EncoderModel")), None)
        kwargs = dict(local_files_only=True, dtype=getattr(torch, dtype))
        if cls_name is not None:
            model = getattr(transformers, cls_name).from_pretrained(enc_dir, **kwargs)
        else:  # another encoder(-decoder): keep the encoder stack
            model = transformers.AutoModel.from_pretrained(enc_dir, **kwargs)
            model = model.get_encoder() if hasattr(model, "get_encoder") else model
        self.model = model.to(device).eval()
        self.device, self.batch_size = device, int(batch_size)
        self.text_dim, self.tokens, self.max_text_tokens = int(text_dim), int(tokens), int(max_text_tokens)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.tokens, self.text_dim), np.float32)
        for start in range(0, len(texts), self.batch_size):
            part = texts[start : start + self.batch_size]
            batch = self.tokenizer(part, padding="longest", truncation=True, max_length=self.max_text_tokens,
                                   return_tensors="pt")
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            with torch.inference_mode():
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            hidden = (hidden.float() * mask[..., None].to(hidden.device).float()).cpu().numpy()
            k = min(self.tokens, hidden.shape[1])
            out[start : start + len(part), :k] = hidden[:, :k]
        return out


ENCODERS = ("word_hash", "transformers")
