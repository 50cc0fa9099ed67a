"""KV memory for autoregressive rollout: a full cache, or bounded *selective* pools (training-free).

Layout, per layer: a fixed number of slots (static shapes, jit-friendly) split into a video pool
[0, video_slots) and an action pool [video_slots, video_slots + action_slots), with a validity mask and the
chunk index of each slot:

    {"k", "v": [layers, B, P, H, Dh], "valid": bool [layers, B, P], "chunk": int32 [layers, B, P]}

Attention is invariant to the order of keys, so slots hold tokens in any order.

full       every committed token is kept; P grows with the configured horizon (max_chunks).
selective  each pool keeps at most its budget. When a committed chunk overflows a pool, tokens are chosen
           greedily by maximal marginal relevance:
               score_j = λ · relevance_j − (1 − λ) · max_{s ∈ kept} cos(k_j, k_s)
           relevance_j = attention mass the newest chunk's queries put on key j (mean over heads and queries,
           softmax over the pool's candidates), normalised to [0, 1]; the tokens of the most recent
           `recent_chunks` chunks are always kept. The same rule runs independently per layer, batch entry
           and pool.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.config import ConfigError, dataclass_from_config

MODES = ("full", "selective")


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    mode: str = "full"
    max_chunks: int = 75            # full mode: horizon the cache is sized for (75 × 4 s = 300 s)
    video_budget: int = 0           # selective: video tokens kept per layer
    action_budget: int = 0          # selective: action tokens kept per layer
    recent_chunks: int = 1          # selective: newest chunks always kept
    tradeoff: float = 0.7           # λ: relevance vs redundancy

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"memory.mode={self.mode!r} unknown; choose one of {MODES}")
        if self.max_chunks < 1:
            raise ConfigError(f"memory.max_chunks={self.max_chunks} must be ≥ 1")
        if self.recent_chunks < 1:
            raise ConfigError(f"memory.recent_chunks={self.recent_chunks} must be ≥ 1 (0 would let the newest chunk "
                              "be evicted)")
        if not 0.0 <= self.tradeoff <= 1.0:
            raise ConfigError(f"memory.tradeoff={self.tradeoff} must lie in [0, 1] (λ: relevance vs redundancy)")
        if min(self.video_budget, self.action_budget) < 0:
            raise ConfigError(f"memory budgets must be ≥ 0, got video {self.video_budget}, action {self.action_budget}")

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
    need_v, need_a = mem.recent_chunks * video_tokens, mem.recent_chunks * action_tokens
    if mem.video_budget < need_v or mem.action_budget < need_a:
        raise ConfigError(f"memory budgets (video {mem.video_budget}, action {mem.action_budget}) must hold the "
                          f"{mem.recent_chunks} always-kept recent chunk(s): at least {need_v} video and {need_a} "
                          "action tokens")
    return PoolSizes(video_tokens, action_tokens, mem.video_budget, mem.action_budget)


def init_cache(sizes: PoolSizes, layers: int, batch: int, heads: int, head_dim: int, dtype=jnp.float32) -> dict:
    shape = (layers, batch, sizes.slots)
    return {"k": jnp.zeros(shape + (heads, head_dim), dtype), "v": jnp.zeros(shape + (heads, head_dim), dtype),
            "valid": jnp.zeros(shape, bool), "chunk": jnp.full(shape, -1, jnp.int32)}


def _mmr_select(keys, relevance, valid, forced, budget: int, tradeoff: float):
    """Greedy MMR over M candidates → (indices [budget], ok [budget]). keys: [M, d]; others [M]."""
    unit = keys / jnp.maximum(jnp.linalg.norm(keys, axis=-1, keepdims=True), 1e-6)
    rel = relevance / jnp.maximum(jnp.max(jnp.where(valid, relevance, 0.0)), 1e-12)
    m = keys.shape[0]

    def step(i, carry):
        chosen, max_sim, idx, ok = carry
        score = jnp.where(forced, jnp.inf, tradeoff * rel - (1.0 - tradeoff) * max_sim)
        score = jnp.where(valid & ~chosen, score, -jnp.inf)
        j = jnp.argmax(score)
        good = score[j] > -jnp.inf
        chosen = chosen.at[j].set(chosen[j] | good)
        max_sim = jnp.where(good, jnp.maximum(max_sim, unit @ unit[j]), max_sim)
        return chosen, max_sim, idx.at[i].set(j), ok.at[i].set(good)

    init = (jnp.zeros((m,), bool), jnp.zeros((m,), jnp.float32), jnp.zeros((budget,), jnp.int32),
            jnp.zeros((budget,), bool))
    _, _, idx, ok = jax.lax.fori_loop(0, budget, step, init)
    return idx, ok


def _relevance(queries, keys, valid):
    """Attention mass of queries [Lq, H, Dh] on keys [M, H, Dh] (softmax over valid keys), mean over heads and
    queries → [M]."""
    logits = jnp.einsum("qhd,khd->hqk", queries.astype(jnp.float32), keys.astype(jnp.float32))
    logits = logits / jnp.sqrt(jnp.float32(keys.shape[-1]))
    logits = jnp.where(valid[None, None, :], logits, -jnp.inf)
    return jnp.mean(jax.nn.softmax(logits, axis=-1), axis=(0, 1))


def _select_pool(pool, new, queries, budget: int, mem: MemoryConfig, chunk_index):
    """One pool of one layer and batch entry. pool/new: {"k","v": [*, H, Dh], "valid", "chunk": [*]}."""
    cand = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), pool, new)
    forced = cand["valid"] & (cand["chunk"] > chunk_index - mem.recent_chunks)
    rel = _relevance(queries, cand["k"], cand["valid"])
    flat = cand["k"].reshape(cand["k"].shape[0], -1).astype(jnp.float32)
    idx, ok = _mmr_select(flat, rel, cand["valid"], forced, budget, mem.tradeoff)
    out = jax.tree.map(lambda a: a[idx], cand)
    out["valid"] = ok
    out["chunk"] = jnp.where(ok, out["chunk"], -1)
    return out


def commit(cache: dict, qkv: Mapping[str, jax.Array], sizes: PoolSizes, mem: MemoryConfig, chunk_index) -> dict:
    """Adds one clean chunk's keys/values to the memory.

    qkv: {"q", "k", "v": [layers, B, Lv + K, H, Dh]} from the model's pass over the clean chunk (its video
    tokens first, then its action tokens); chunk_index: that chunk's index (may be traced)."""
    lv = sizes.video_tokens
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
                out[key], value[:, :, lv:], sizes.video_slots + chunk_index * sizes.action_tokens, axis=2)
        return out

    def per_entry(pool, new_tokens, queries):
        video = _select_pool(jax.tree.map(lambda a: a[:sizes.video_slots], pool),
                             jax.tree.map(lambda a: a[:lv], new_tokens), queries, sizes.video_slots, mem,
                             chunk_index)
        action = _select_pool(jax.tree.map(lambda a: a[sizes.video_slots:], pool),
                              jax.tree.map(lambda a: a[lv:], new_tokens), queries, sizes.action_slots, mem,
                              chunk_index)
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), video, action)

    fn = jax.vmap(jax.vmap(per_entry))          # over layers, then batch
    return fn(cache, new, qkv["q"])


def past_view(cache: dict) -> dict:
    """What the model's attention reads: keys, values and validity."""
    return {"k": cache["k"], "v": cache["v"], "valid": cache["valid"]}


def memory_report(cache: dict) -> dict[str, float]:
    """Tokens held and bytes: `used` counts valid slots (per layer, batch entry 0), `allocated` all slots."""
    valid = np.asarray(cache["valid"])
    per_token = 2 * cache["k"].shape[0] * int(np.prod(cache["k"].shape[3:])) * cache["k"].dtype.itemsize
    used_tokens = int(valid[0, 0].sum())
    return {"tokens": used_tokens, "used_bytes": used_tokens * per_token * cache["k"].shape[1],
            "allocated_bytes": int(valid.shape[2]) * per_token * cache["k"].shape[1]}
