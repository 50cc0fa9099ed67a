"""Structured attention (mask = ids + rule) against the dense reference, forward and gradients.

Masks: teacher forcing (S=2 streams × 3 chunks, `wam.attention_rule`), rollout (S=1, one chunk + a KV cache with
invalid slots), and an inverse-dynamics-style custom rule (actions see every video token of their chunk and the
previous chunk, video sees only video of its own chunk). Implementations: the grouped XLA path, splash attention
in Pallas interpret mode, and a float64 numpy brute force as the reference of the reference.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wam_jax.models import attention as attn
from wam_jax.models import wam as wam_lib
from wam_jax.models.attention import MaskSpec, dot_product_attention

HEADS, DH = 2, 16


def inverse_dynamics_rule(q, k):
    video_k = k["modality"] == wam_lib.VIDEO
    act_q = q["modality"] == wam_lib.ACTION
    own_video = (q["modality"] == wam_lib.VIDEO) & video_k & (k["chunk"] == q["chunk"])
    return own_video | (act_q & video_k & ((k["chunk"] == q["chunk"]) | (k["chunk"] == q["chunk"] - 1)))


def _spec(streams, chunks, rule=wam_lib.attention_rule, video=6, action=3):
    ids = wam_lib.TokenLayout(streams, chunks, video, action).token_ids
    return MaskSpec(ids, ids, rule)


MASKS = {
    "teacher_forcing": lambda: _spec(2, 3),
    "rollout": lambda: _spec(1, 1),
    "inverse_dynamics": lambda: _spec(1, 3, inverse_dynamics_rule),
}


def _inputs(length, past=0, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, length, HEADS, DH)), jnp.float32) for _ in range(3))
    cache = None
    if past:
        valid = rng.random((batch, past)) < 0.6
        valid[0] = False                         # one example with an empty cache
        cache = {"k": jnp.asarray(rng.normal(size=(batch, past, HEADS, DH)), jnp.float32),
                 "v": jnp.asarray(rng.normal(size=(batch, past, HEADS, DH)), jnp.float32),
                 "valid": jnp.asarray(valid)}
    return q, k, v, cache


def _numpy_reference(q, k, v, dense, cache):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, lq = q.shape[:2]
    m = np.broadcast_to(dense, (b, lq, k.shape[1]))
    if cache is not None:
        k = np.concatenate([np.asarray(cache["k"], np.float64), k], 1)
        v = np.concatenate([np.asarray(cache["v"], np.float64), v], 1)
        m = np.concatenate([np.broadcast_to(np.asarray(cache["valid"])[:, None], (b, lq, cache["k"].shape[1])), m], 2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(m[:, None], logits, -np.inf)
    top = np.max(logits, -1, keepdims=True)
    w = np.where(m[:, None], np.exp(logits - np.where(np.isfinite(top), top, 0)), 0)
    w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
    return np.einsum("bhqk,bkhd->bqhd", w, v)


@pytest.mark.parametrize("name", sorted(MASKS))
def test_runs_reproduce_the_dense_rule(name):
    spec = MASKS[name]()
    dense = spec.dense()
    assert spec.pairs() == int(dense.sum())
    lq, lk = spec.shape
    for q0, k0, size in [(0, 0, 7), (5, 11, 13), (lq - 9, lk - 4, 16), (0, 0, max(lq, lk) + 5)]:
        block = spec.block(q0, q0 + size, k0, k0 + size)
        want = np.zeros((size, size), bool)
        part = dense[q0:q0 + size, k0:k0 + size]
        want[:part.shape[0], :part.shape[1]] = part
        np.testing.assert_array_equal(block, want)
    # every query run lands in exactly one group, which lists exactly its visible keys
    covered = np.zeros(lq, int)
    for q_ranges, k_ranges in spec.groups:
        keys = np.zeros(lk, bool)
        for a, b in k_ranges:
            keys[a:b] = True
        for a, b in q_ranges:
            covered[a:b] += 1
            np.testing.assert_array_equal(dense[a:b], np.broadcast_to(keys, (b - a, lk)))
    np.testing.assert_array_equal(covered, 1)
    # block-sparse work: at least the visible pairs, at most the padded square
    assert spec.pairs() <= spec.block_pairs(4, 4) <= (-(-lq // 4) * 4) * (-(-lk // 4) * 4)


# gradients against "dense", forward against numpy; "splash_dq": splash with its separate dq backward kernel
# (what long sequences use) instead of the fused one
@pytest.mark.parametrize("impl", ["xla", "splash", "splash_dq"])
@pytest.mark.parametrize("name,past", [("teacher_forcing", 0), ("rollout", 10), ("inverse_dynamics", 0)])
def test_forward_and_gradients_match_the_reference(name, past, impl, monkeypatch):
    if impl == "splash_dq":
        from wam_jax.models import splash
        monkeypatch.setattr(splash, "fused_backward", lambda kv_blocks: False)
        impl = "splash"
    spec = MASKS[name]()
    q, k, v, cache = _inputs(spec.shape[0], past)
    out = jax.jit(lambda *a: dot_product_attention(*a, mask=spec, past=cache, implementation=impl))(q, k, v)
    want = _numpy_reference(q, k, v, spec.dense(), cache)
    np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=2e-5, rtol=1e-4)

    weights = jnp.asarray(np.random.default_rng(1).normal(size=out.shape), jnp.float32)
    loss = lambda impl_: lambda q_, k_, v_, pk: jnp.sum(weights * dot_product_attention(
        q_, k_, v_, mask=spec, past=None if cache is None else dict(cache, k=pk), implementation=impl_))
    pk = jnp.zeros((2, 0, HEADS, DH)) if cache is None else cache["k"]
    grads = jax.jit(jax.grad(loss(impl), argnums=(0, 1, 2, 3)))(q, k, v, pk)
    ref = jax.jit(jax.grad(loss("dense"), argnums=(0, 1, 2, 3)))(q, k, v, pk)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, atol=5e-5, rtol=1e-4)


def test_xla_path_holds_no_mask_and_does_only_the_masked_work():
    """The compiled program has no [L, L] boolean (constant or computed), and its QK^T / PV matmuls cover
    exactly the masked pairs."""
    from wam_jax.models import flops
    spec = _spec(2, 3, video=40, action=8)
    q, k, v, _ = _inputs(spec.shape[0], batch=1)
    lowered = jax.jit(lambda a, b, c: dot_product_attention(a, b, c, mask=spec, implementation="xla")).lower(q, k, v)
    hlo = lowered.compiler_ir("hlo").as_hlo_text()
    length = spec.shape[0]
    assert f"pred[1,1,{length},{length}]" not in hlo and f"pred[{length},{length}]" not in hlo
    assert flops.hlo_dot_flops(hlo) == 4 * HEADS * DH * spec.pairs()
    dense = jax.jit(lambda a, b, c: dot_product_attention(a, b, c, mask=spec, implementation="dense")).lower(q, k, v)
    assert flops.hlo_dot_flops(dense.compiler_ir("hlo").as_hlo_text()) == 4 * HEADS * DH * length * length


def test_drivewam_forward_is_the_same_for_every_implementation():
    """The model plumbing (ids + rule into self- and cross-attention): DriveWAM's velocities with the grouped
    XLA path and splash equal the dense-mask reference (gradients are checked per attention call above)."""
    from wam_jax.config import load_config
    wan, wam = wam_lib.build_configs(load_config("experiments/drivewam_tiny.py", ["model.num_layers=1"]))
    rng = np.random.default_rng(0)
    video, actions, t, _, guidance = wam_lib.dummy_inputs(wan, wam, 1, 2, 3, True)
    video = jnp.asarray(rng.normal(size=video.shape), jnp.float32)
    actions = jnp.asarray(rng.normal(size=actions.shape), jnp.float32)
    t = jnp.asarray(rng.random(t.shape), jnp.float32)
    guidance = jnp.asarray(rng.normal(size=guidance.shape), jnp.float32)
    params = wam_lib.init_params(wan, wam, jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), 100))
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape), params)   # heads ≠ 0

    def forward(impl):
        model = wam_lib.DriveWAM(dataclasses.replace(wan, attention=impl), wam)
        return jax.jit(lambda p: model.apply({"params": p}, video, actions, t, t, guidance)[:2])(params)

    ref = forward("dense")
    assert float(jnp.abs(ref[0]).max()) > 1e-3
    for impl in ("xla", "splash"):
        for got, want in zip(forward(impl), ref):
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_bad_structure_is_refused():
    spec = _spec(1, 1)
    q, k, v, _ = _inputs(spec.shape[0] + 1)
    with pytest.raises(ValueError, match="mask structure"):
        dot_product_attention(q, k, v, mask=spec)
    with pytest.raises(ValueError, match="one length"):
        MaskSpec({"a": np.zeros(3), "b": np.zeros(4)}, {"a": np.zeros(3)}, wam_lib.attention_rule)
    with pytest.raises(ValueError, match="unknown"):
        attn.pick_implementation("flash")
