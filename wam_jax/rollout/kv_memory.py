"""KV memory for autoregressive rollout: a full cache, or bounded FIFO / selective pools (training-free).

Layout, per layer: a fixed number of slots (static shapes, jit-friendly) split into a video pool
[0, video_slots) and an action pool [video_slots, video_slots + action_slots), with a validity mask and the
chunk index of each slot:

    {"k", "v": [layers, B, P, H, Dh], "valid": bool [layers, B, P], "chunk": int32 [layers, B, P]}

Attention is invariant to the order of keys, so slots hold tokens in any order. Each commit writes the new
chunk's n tokens of a pool into n slots of that pool, in place (the engine donates the cache buffers): while
a pool has free slots it fills them from the front, in token order (so a bounded pool that never overflows
holds exactly the rows of the full cache, in the same slots); once it is full, the new tokens overwrite the
n old tokens the mode ranks lowest. The paper's rule (DriveWAM, "selective KV memory"):

full       every committed token is kept; chunk c goes to slots [c·n, (c+1)·n) of each pool. The cache is
           sized for `max_chunks` chunks; committing chunk index ≥ max_chunks raises (no silent overwrite).
fifo       each pool keeps its `budget` newest tokens: the oldest chunk's tokens are evicted first (the
           baseline of the paper's code base, whose cache is FIFO).
selective  per layer, batch entry and pool, every old token j gets the score s_j = λ·ρ_j − (1 − λ)·η_j:
             ρ_j  relevance: softmax(q·k/√Dh) over the pool's valid old keys, for every query of the chunk
                  being committed (its video and action tokens alike), averaged over those queries AND over
                  heads (one score per token, since a slot holds a token's keys and values for all heads);
             η_j  redundancy: mean over the pool's other valid old keys ℓ ≠ j of cos(k_j, k_ℓ), the cosine
                  taken per head and averaged over heads; computed in O(N·d) as
                  (u_j·S − u_j·u_j) / (N − 1) with u the unit-normalised keys and S = Σ_ℓ u_ℓ (no N×N matrix);
           λ = `tradeoff` (paper 0.07). The pool keeps its B − n highest-scoring old tokens and always inserts
           the n new ones. ρ sums to 1 over the pool, so at the paper's budgets the redundancy term dominates;
           that is the paper's rule as written, not normalised here.

Both bounded modes pick the slots to overwrite with ONE `lax.top_k` (k = n) per pool over all layers and
batch entries: no loop over tokens, cost linear in the pool size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.config import ConfigError, dataclass_from_config

MODES = ("full", "fifo", "selective")
BOUNDED = ("fifo", "selective")
PAPER_TRADEOFF = 0.07                  # λ
PAPER_BUDGETS = (448, 160)             # video, action tokens per layer


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    mode: str = "full"
    max_chunks: int = 75            # full: horizon the cache is sized for (75 × 4 s = 300 s)
    video_budget: int = PAPER_BUDGETS[0]     # fifo / selective: video tokens kept per layer
    action_budget: int = PAPER_BUDGETS[1]    # fifo / selective: action tokens kept per layer
    tradeoff: float = PAPER_TRADEOFF         # selective: λ, relevance weight (1 − λ on redundancy)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"memory.mode={self.mode!r} unknown; choose one of {MODES}")
        for name in ("max_chunks", "video_budget", "action_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"memory.{name}={value!r} must be an integer ≥ 1")
        t = self.tradeoff
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise ConfigError(f"memory.tradeoff={t!r} (λ) must be a number in [0, 1] (paper: {PAPER_TRADEOFF})")

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> "MemoryConfig":
        return dataclass_from_config(cls, values, "config.memory")


@dataclasses.dataclass(frozen=True)
class PoolSizes:
    video_tokens: int     # per chunk
    action_tokens: int    # per chunk
    video_slots: int
    action_slots: int

    @property
    def slots(self) -> int:
        return self.video_slots + self.action_slots


def pool_sizes(mem: MemoryConfig, video_tokens: int, action_tokens: int) -> PoolSizes:
    if mem.mode == "full":
        return PoolSizes(video_tokens, action_tokens, mem.max_chunks * video_tokens, mem.max_chunks * action_tokens)
    if mem.video_budget < video_tokens or mem.action_budget < action_tokens:
        raise ConfigError(f"memory budgets (video {mem.video_budget}, action {mem.action_budget}) must hold one "
                          f"chunk, which is always inserted: at least {video_tokens} video and {action_tokens} "
                          "action tokens")
    return PoolSizes(video_tokens, action_tokens, mem.video_budget, mem.action_budget)


def check_capacity(sizes: PoolSizes, mem: MemoryConfig, chunk_index: int) -> None:
    """A full cache has room for chunks 0 … max_chunks − 1; beyond that the write would clobber the last slots."""
    if mem.mode == "full" and not 0 <= chunk_index < mem.max_chunks:
        raise ConfigError(f"full KV cache overflow: committing chunk {chunk_index} (the {chunk_index + 1}-th) but "
                          f"the cache has {sizes.video_slots} video + {sizes.action_slots} action slots per layer "
                          f"= memory.max_chunks={mem.max_chunks} chunks of {sizes.video_tokens} + "
                          f"{sizes.action_tokens} tokens; raise memory.max_chunks or use memory.mode=fifo|selective")


def init_cache(sizes: PoolSizes, layers: int, batch: int, heads: int, head_dim: int, dtype=jnp.float32) -> dict:
    shape = (layers, batch, sizes.slots)
    return {"k": jnp.zeros(shape + (heads, head_dim), dtype), "v": jnp.zeros(shape + (heads, head_dim), dtype),
            "valid": jnp.zeros(shape, bool), "chunk": jnp.full(shape, -1, jnp.int32)}


# ----- scores ------------------------------------------------------------------------------------------------
def relevance(queries, keys, valid):
    """ρ: queries [..., Lq, H, Dh], keys [..., P, H, Dh], valid [..., P] → [..., P] float32.

    softmax over the valid keys of q·k/√Dh for every query and head, then the mean over queries and heads;
    0 at invalid slots (and everywhere for an empty pool)."""
    logits = jnp.einsum("...qhd,...khd->...hqk", queries.astype(jnp.float32), keys.astype(jnp.float32))
    logits = logits / jnp.sqrt(jnp.float32(keys.shape[-1]))
    mask = valid[..., None, None, :]
    logits = jnp.where(mask, logits, -jnp.inf)
    top = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.where(mask, jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    weights = e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    return jnp.mean(weights, axis=(-3, -2))


def redundancy(keys, valid, eps: float = 1e-6):
    """η: keys [..., P, H, Dh], valid [..., P] → [..., P] float32, the mean cosine similarity of each key to the
    other valid keys (per head, then averaged over heads), in O(P·H·Dh) from the sum of unit keys
    S = Σ_ℓ k_ℓ/|k_ℓ|: Σ_{ℓ≠j} cos(k_j, k_ℓ) = (k_j·S)/|k_j| − 1. The unit keys are never materialised (three
    reads of the keys, no [P, H, Dh] temporary). A zero key has cosine 0 with everything; a pool with one valid
    key gives 0."""
    k = keys.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(k * k, axis=-1))                                  # [..., P, H]
    inv = jnp.where(valid[..., None], 1.0 / jnp.maximum(norm, eps), 0.0)      # 1/|k|, 0 at invalid slots
    total = jnp.einsum("...ph,...phd->...hd", inv, k)                         # S: [..., H, Dh]
    self_dot = (norm * inv) ** 2                                              # u_j·u_j: 1, or < 1 for ~0 keys
    others = jnp.einsum("...phd,...hd->...ph", k, total) * inv - self_dot     # Σ_{ℓ≠j} cos, per head
    n = jnp.sum(valid, axis=-1, keepdims=True).astype(jnp.float32)
    return jnp.mean(others, axis=-1) / jnp.maximum(n - 1.0, 1.0)


def selective_scores(queries, keys, valid, tradeoff: float):
    """s = λ·ρ − (1 − λ)·η over [..., P] (see the module docstring)."""
    return tradeoff * relevance(queries, keys, valid) - (1.0 - tradeoff) * redundancy(keys, valid)


def _per_layer(fn, *args):
    """fn over the leading (layer) axis one layer at a time: the [H, Lq, P] logits of one layer at most."""
    return jax.lax.map(lambda a: fn(*a), args)


# ----- commit ------------------------------------------------------------------------------------------------
def overwrite_slots(score, valid, n: int):
    """The n slots a commit writes, [..., n] int32: free slots first (lowest index first, so a pool fills
    from the front in order), then the valid slots of lowest `score`. One top-k over the pool."""
    p = valid.shape[-1]
    # Free slots rank above every valid one (−score ≤ 1 for selective, ≤ 0 for fifo); exact in float32 to 2^24.
    free_rank = 2.0 + (p - jnp.arange(p, dtype=jnp.float32))
    evict_key = jnp.where(valid, -score.astype(jnp.float32), free_rank + jnp.float32(2 ** 20))
    _, idx = jax.lax.top_k(evict_key, n)
    return idx


def _write(pool: dict, new: dict, idx) -> dict:
    """pool arrays [L, B, P, ...] ← new [L, B, n, ...] at slots idx [L, B, n]."""
    put = jax.vmap(jax.vmap(lambda a, i, x: a.at[i].set(x)))
    return {key: put(pool[key], idx, new[key]) for key in pool}


def pool_scores(pool: dict, queries, mode: str, tradeoff: float = PAPER_TRADEOFF):
    """Keep-priority of every slot of one pool, [L, B, P] (higher = kept longer). pool {"k": [L, B, P, H, Dh],
    "valid", "chunk": [L, B, P]}; queries [L, B, Lq, H, Dh] of the chunk being committed."""
    if mode == "fifo":
        return pool["chunk"].astype(jnp.float32)         # the oldest chunk goes first
    if mode == "selective":
        return _per_layer(lambda q, k, v: selective_scores(q, k, v, tradeoff), queries, pool["k"], pool["valid"])
    raise ValueError(f"mode {mode!r} is not a bounded mode {BOUNDED}")


def update_pool(pool: dict, new: dict, queries, mode: str, tradeoff: float = PAPER_TRADEOFF) -> dict:
    """Commit into one pool: pool {"k","v": [L, B, P, H, Dh], "valid", "chunk": [L, B, P]}, new (same keys,
    n ≤ P tokens, all valid), queries [L, B, Lq, H, Dh] of the chunk being committed."""
    n, p = new["valid"].shape[-1], pool["valid"].shape[-1]
    if n > p:
        raise ValueError(f"a pool of {p} slots cannot take a chunk of {n} tokens")
    return _write(pool, new, overwrite_slots(pool_scores(pool, queries, mode, tradeoff), pool["valid"], n))


def commit(cache: dict, qkv: Mapping[str, jax.Array], sizes: PoolSizes, mem: MemoryConfig, chunk_index) -> dict:
    """Adds one clean chunk's keys/values to the memory.

    qkv: {"q", "k", "v": [layers, B, Lv + K, H, Dh]} from the model's pass over the clean chunk (its video
    tokens first, then its action tokens); chunk_index: that chunk's index (may be traced; a concrete one is
    checked against the full cache's capacity)."""
    if isinstance(chunk_index, (int, np.integer)):
        check_capacity(sizes, mem, int(chunk_index))
    lv, vs = sizes.video_tokens, sizes.video_slots
    layers, batch = qkv["k"].shape[:2]
    new_chunk = jnp.full((layers, batch, qkv["k"].shape[2]), chunk_index, jnp.int32)
    new = {"k": qkv["k"].astype(cache["k"].dtype), "v": qkv["v"].astype(cache["v"].dtype),
           "valid": jnp.ones(new_chunk.shape, bool), "chunk": new_chunk}
    if mem.mode == "full":
        # Chunk c goes to slots [c·Lv, (c+1)·Lv) of the video pool and [c·K, (c+1)·K) of the action pool.
        out = dict(cache)
        for key, value in new.items():
            out[key] = jax.lax.dynamic_update_slice_in_dim(out[key], value[:, :, :lv], chunk_index * lv, axis=2)
            out[key] = jax.lax.dynamic_update_slice_in_dim(
                out[key], value[:, :, lv:], vs + chunk_index * sizes.action_tokens, axis=2)
        return out
    # Scores read each pool; the writes of both pools are one scatter into the (donated) cache, no copy.
    targets = []
    for lo, hi, n in ((0, vs, lv), (vs, sizes.slots, sizes.action_tokens)):
        pool = {key: cache[key][:, :, lo:hi] for key in ("k", "valid", "chunk")}
        score = pool_scores(pool, qkv["q"], mem.mode, mem.tradeoff)
        targets.append(lo + overwrite_slots(score, pool["valid"], n))
    return _write(cache, new, jnp.concatenate(targets, axis=-1))


def past_view(cache: dict) -> dict:
    """What the model's attention reads: keys, values and validity."""
    return {"k": cache["k"], "v": cache["v"], "valid": cache["valid"]}


def cache_bytes(cache: dict) -> int:
    """Bytes of the keys and values (the validity and chunk metadata excluded); works on shape structs."""
    return int(sum(np.prod(cache[key].shape) * np.dtype(cache[key].dtype).itemsize for key in ("k", "v")))


def memory_report(cache: dict) -> dict[str, float]:
    """Tokens held and bytes: `used` counts valid slots (per layer, batch entry 0), `allocated` all slots."""
    valid = np.asarray(cache["valid"])
    per_token = 2 * cache["k"].shape[0] * int(np.prod(cache["k"].shape[3:])) * cache["k"].dtype.itemsize
    used_tokens = int(valid[0, 0].sum())
    return {"tokens": used_tokens, "used_bytes": used_tokens * per_token * cache["k"].shape[1],
            "allocated_bytes": int(valid.shape[2]) * per_token * cache["k"].shape[1]}
