"""KV memory (paper rule) against brute force in float64 numpy: relevance, O(N·d) redundancy, the kept set of a
selective commit, FIFO eviction, bounded pools with room for everything == the full cache bitwise, the full
cache's overflow error, config range checks, and no N×N intermediate in the compiled commit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wam_jax.config import ConfigError
from wam_jax.rollout import kv_memory as km

H, DH = 2, 8


def _keys(rng, shape):
    return rng.standard_normal(shape + (H, DH)).astype(np.float32)


def _brute_relevance(q, k, valid):
    """float64: per query and head softmax over valid keys, mean over queries and heads. q [Lq,H,D], k [P,H,D]."""
    out = np.zeros(len(k))
    idx = np.flatnonzero(valid)
    for h in range(H):
        for qi in range(len(q)):
            logits = np.array([q[qi, h].astype(np.float64) @ k[j, h] / np.sqrt(DH) for j in idx])
            w = np.exp(logits - logits.max())
            out[idx] += w / w.sum() / (H * len(q))
    return out


def _brute_redundancy(k, valid):
    """float64 pairwise: mean over valid ℓ ≠ j of the per-head cosine, then mean over heads."""
    k = k.astype(np.float64)
    idx = np.flatnonzero(valid)
    out = np.zeros(len(k))
    for j in idx:
        sims = []
        for ell in idx:
            if ell == j:
                continue
            cos = [k[j, h] @ k[ell, h] / (np.linalg.norm(k[j, h]) * np.linalg.norm(k[ell, h])) for h in range(H)]
            sims.append(np.mean(cos))
        out[j] = np.mean(sims) if sims else 0.0
    return out


def test_relevance_and_redundancy_equal_brute_force():
    rng = np.random.default_rng(0)
    p = 29
    k = _keys(rng, (2, p)) + 0.5                  # an offset so the cosines are far from 0
    q = _keys(rng, (2, 7))
    valid = rng.random((2, p)) < 0.7
    rho = np.asarray(km.relevance(q, k, valid))
    eta = np.asarray(km.redundancy(k, valid))
    for b in range(2):
        np.testing.assert_allclose(rho[b], _brute_relevance(q[b], k[b], valid[b]), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(eta[b], _brute_redundancy(k[b], valid[b]), rtol=1e-5, atol=1e-6)
    assert np.all(rho[~valid] == 0) and np.allclose(rho.sum(-1), 1.0, atol=1e-5)
    assert np.all(eta[~valid] == 0)
    # Degenerate pools: empty → all zero, a single key → no other key to compare with.
    assert np.all(np.asarray(km.relevance(q[0], k[0], np.zeros(p, bool))) == 0)
    assert np.all(np.asarray(km.redundancy(k[0], np.eye(p, dtype=bool)[3])) == 0)


@pytest.mark.parametrize("free", [0, 5])
def test_selective_commit_keeps_the_brute_force_top_k(free):
    """Random keys and queries; the pool keeps exactly its P − n best old tokens by s = λρ − (1 − λ)η (with free
    slots, those are filled first and only the overflow is evicted)."""
    rng = np.random.default_rng(1 + free)
    layers, batch, p, n, lq, lam = 2, 3, 40, 8, 12, 0.07
    pool = {"k": _keys(rng, (layers, batch, p)), "v": _keys(rng, (layers, batch, p)),
            "valid": np.ones((layers, batch, p), bool),
            "chunk": np.broadcast_to(np.arange(p, dtype=np.int32) // n, (layers, batch, p)).copy()}
    pool["valid"][..., p - free:] = False
    pool["chunk"][..., p - free:] = -1
    pool["k"][..., p - free:, :, :] = 0.0
    new = {"k": _keys(rng, (layers, batch, n)), "v": _keys(rng, (layers, batch, n)),
           "valid": np.ones((layers, batch, n), bool), "chunk": np.full((layers, batch, n), 99, np.int32)}
    q = _keys(rng, (layers, batch, lq))
    out = jax.tree.map(np.asarray, km.update_pool(jax.tree.map(jnp.asarray, pool), new, q, "selective", lam))
    for l in range(layers):
        for b in range(batch):
            valid = pool["valid"][l, b]
            s = (lam * _brute_relevance(q[l, b], pool["k"][l, b], valid)
                 - (1 - lam) * _brute_redundancy(pool["k"][l, b], valid))
            order = [j for j in np.argsort(-s) if valid[j]]
            expect = set(order[:p - n])
            kept = {j for j in range(p) if out["chunk"][l, b, j] != 99}
            assert kept == expect
            for j in kept:                                      # kept rows untouched
                np.testing.assert_array_equal(out["k"][l, b, j], pool["k"][l, b, j])
            assert out["valid"][l, b].all()
            new_rows = np.flatnonzero(out["chunk"][l, b] == 99)
            order = lambda a: a[np.argsort(a[:, 0, 0])]        # evicted slots are written in score order
            for key in ("k", "v"):
                np.testing.assert_array_equal(order(out[key][l, b, new_rows]), order(new[key][l, b]))


def _random_qkv(rng, layers, batch, lv, k):
    return {name: jnp.asarray(_keys(rng, (layers, batch, lv + k))) for name in ("q", "k", "v")}


def _commit_all(mem, chunks, lv=6, k=3, layers=2, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    sizes = km.pool_sizes(mem, lv, k)
    cache = km.init_cache(sizes, layers, batch, H, DH)
    for c in range(chunks):
        cache = km.commit(cache, _random_qkv(rng, layers, batch, lv, k), sizes, mem, c)
    return jax.tree.map(np.asarray, cache), sizes


@pytest.mark.parametrize("mode", ["selective", "fifo"])
def test_bounded_pool_with_room_for_everything_equals_the_full_cache_bitwise(mode):
    full, _ = _commit_all(km.MemoryConfig(mode="full", max_chunks=5), 5)
    bounded, _ = _commit_all(km.MemoryConfig(mode=mode, video_budget=30, action_budget=15), 5)
    for key in full:
        np.testing.assert_array_equal(bounded[key], full[key], err_msg=key)     # same rows, same slots
    partial, _ = _commit_all(km.MemoryConfig(mode=mode, video_budget=30, action_budget=15), 3)
    ref, _ = _commit_all(km.MemoryConfig(mode="full", max_chunks=5), 3)
    for key in ref:
        np.testing.assert_array_equal(partial[key], ref[key], err_msg=key)


def test_fifo_keeps_the_newest_chunks():
    cache, sizes = _commit_all(km.MemoryConfig(mode="fifo", video_budget=12, action_budget=7), 6)
    video, action = cache["chunk"][..., :sizes.video_slots], cache["chunk"][..., sizes.video_slots:]
    assert np.all(np.sort(video, -1) == [4] * 6 + [5] * 6)
    # 7 action slots, 3 tokens per chunk: chunks 5 and 4, and one token of chunk 3.
    assert np.all(np.sort(action, -1) == [3, 4, 4, 4, 5, 5, 5])
    assert cache["valid"].all()


def test_full_cache_raises_past_its_slots():
    mem = km.MemoryConfig(mode="full", max_chunks=3)
    with pytest.raises(ConfigError, match=r"chunk 3 .*18 video \+ 9 action slots.*max_chunks=3"):
        _commit_all(mem, 4)


@pytest.mark.parametrize("field,value", [("tradeoff", -0.1), ("tradeoff", 1.5), ("tradeoff", float("nan")),
                                         ("video_budget", 0), ("action_budget", -4), ("max_chunks", 0),
                                         ("video_budget", 2.5), ("mode", "lru")])
def test_memory_config_rejects_out_of_range(field, value):
    with pytest.raises(ConfigError, match=f"memory.{field}"):
        km.MemoryConfig(**{field: value})


def test_budget_below_one_chunk_is_rejected():
    with pytest.raises(ConfigError, match="at least 6 video and 3 action"):
        km.pool_sizes(km.MemoryConfig(mode="selective", video_budget=5, action_budget=3), 6, 3)


def test_commit_has_no_pool_by_pool_intermediate():
    """The O(N·d) redundancy: nothing of N×N elements in the compiled selective commit (N = 4096)."""
    p, n = 4096, 16
    pool = {"k": jax.ShapeDtypeStruct((1, 1, p, H, DH), jnp.float32),
            "v": jax.ShapeDtypeStruct((1, 1, p, H, DH), jnp.float32),
            "valid": jax.ShapeDtypeStruct((1, 1, p), bool), "chunk": jax.ShapeDtypeStruct((1, 1, p), jnp.int32)}
    new = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[:2] + (n,) + s.shape[3:], s.dtype), pool)
    q = jax.ShapeDtypeStruct((1, 1, n, H, DH), jnp.float32)
    compiled = jax.jit(lambda a, b, c: km.update_pool(a, b, c, "selective"), donate_argnums=0).lower(
        pool, new, q).compile()
    assert f"{p},{p}" not in compiled.as_text()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 64 * p * H * DH * 4, temp         # a few pool-sized buffers at most, not N² (64 MiB here)
