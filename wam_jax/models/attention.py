"""The one attention function every module calls, with the mask given as structure, never as an [L, L] array.

A mask is a `MaskSpec`: per-token integer ids of the queries and of the keys (static numpy, e.g. DriveWAM's
stream / chunk / modality ids) and a rule `rule(q_ids, k_ids) -> bool` over them (`wam.attention_rule`). Tokens
whose ids all agree form *runs*; since the rule sees only ids, every (query run, key run) pair is either fully
visible or fully hidden, so the rule is evaluated once per run pair ([runs, runs], a few dozen entries) and the
kernels consume that:

- `xla` (CPU, the default off TPU/GPU) and `cudnn` (GPU): query runs with the same visible key runs form a group;
  each group is one unmasked attention of its queries over exactly its keys (static slices), so the work done is
  the masked pair count and no mask exists at all. cuDNN's fused kernel runs each group without a bias.
- `splash` (TPU): Pallas splash attention; its block mask is computed at trace time from the runs (a block is
  skipped, fully computed, or computed with its partial mask), so fully hidden blocks cost nothing.
- `dense`: the reference, the rule evaluated densely into [Lq, Lk] (tests only).

Cached keys of earlier chunks (rollout) come as `past` keys with a dynamic validity [B, P]; every valid one is
visible to every query: prepended to every group's keys with a key mask [B, 1, 1, P + keys] (a row, not [L, L])
for `xla`/`dense`, segment ids for `splash`. With a cache, `cudnn` groups fall back to the XLA piece (jax's cuDNN
call takes a mask only as a dense [Lq, Lk] bias). The GPU path is checked for its math on CPU only; it has not
been run or measured on a GPU (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "dense")


@jax.tree_util.register_static
class MaskSpec:
    """Static structure of an attention mask: query ids, key ids (dicts of int [Lq] / [Lk]) and the rule.

    Registered as a static pytree node (no leaves), so it passes through jit, nn.scan and nn.remat as Python."""

    def __init__(self, q_ids: Mapping[str, Any], k_ids: Mapping[str, Any], rule: Callable):
        self.q_ids = {n: np.asarray(a, np.int32).reshape(-1) for n, a in q_ids.items()}
        self.k_ids = {n: np.asarray(a, np.int32).reshape(-1) for n, a in k_ids.items()}
        for side, ids in (("query", self.q_ids), ("key", self.k_ids)):
            if not ids or len({a.size for a in ids.values()}) != 1:
                raise ValueError(f"MaskSpec {side} ids must be non-empty and of one length, got "
                                 f"{ {n: a.shape for n, a in ids.items()} }")
        self.rule = rule
        self._key = (tuple((n, a.tobytes()) for n, a in sorted(self.q_ids.items())),
                     tuple((n, a.tobytes()) for n, a in sorted(self.k_ids.items())), rule)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, MaskSpec) and self._key == other._key

    def __repr__(self):
        return f"MaskSpec({self.shape[0]}x{self.shape[1]}, {len(self.q_bounds) - 1}x{len(self.k_bounds) - 1} runs)"

    @property
    def shape(self) -> tuple[int, int]:
        return next(iter(self.q_ids.values())).size, next(iter(self.k_ids.values())).size

    @functools.cached_property
    def q_bounds(self) -> np.ndarray:
        return _run_bounds(self.q_ids)

    @functools.cached_property
    def k_bounds(self) -> np.ndarray:
        return _run_bounds(self.k_ids)

    @functools.cached_property
    def run_mask(self) -> np.ndarray:
        """bool [query runs, key runs]: the rule on one representative token per run."""
        q = {n: a[self.q_bounds[:-1]][:, None] for n, a in self.q_ids.items()}
        k = {n: a[self.k_bounds[:-1]][None, :] for n, a in self.k_ids.items()}
        out = np.broadcast_to(np.asarray(self.rule(q, k), bool), (len(self.q_bounds) - 1, len(self.k_bounds) - 1))
        return np.ascontiguousarray(out)

    def dense(self) -> np.ndarray:
        """bool [Lq, Lk]: the rule on every pair (the reference; only for tests and small sequences)."""
        q = {n: a[:, None] for n, a in self.q_ids.items()}
        k = {n: a[None, :] for n, a in self.k_ids.items()}
        return np.broadcast_to(np.asarray(self.rule(q, k), bool), self.shape)

    def block(self, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        """bool [q1-q0, k1-k0]: the mask on one block, built from the runs (positions past the end are False)."""
        lq, lk = self.shape
        out = np.zeros((q1 - q0, k1 - k0), bool)
        q1c, k1c = min(q1, lq), min(k1, lk)
        if q0 >= q1c or k0 >= k1c:
            return out
        rq = slice(np.searchsorted(self.q_bounds, q0, "right") - 1, np.searchsorted(self.q_bounds, q1c, "left"))
        rk = slice(np.searchsorted(self.k_bounds, k0, "right") - 1, np.searchsorted(self.k_bounds, k1c, "left"))
        sub = self.run_mask[rq, rk]
        if sub.all() or not sub.any():
            out[:q1c - q0, :k1c - k0] = sub.all()
            return out
        qlen = np.diff(np.clip(self.q_bounds[rq.start:rq.stop + 1], q0, q1c))
        klen = np.diff(np.clip(self.k_bounds[rk.start:rk.stop + 1], k0, k1c))
        out[:q1c - q0, :k1c - k0] = np.repeat(np.repeat(sub, qlen, 0), klen, 1)
        return out

    def row_has_key(self) -> np.ndarray:
        """bool [Lq]: whether a query sees at least one of these keys."""
        return np.repeat(self.run_mask.any(1), np.diff(self.q_bounds))

    def pairs(self) -> int:
        """Visible (query, key) pairs: the masked pair count."""
        return int(np.diff(self.q_bounds) @ self.run_mask.astype(np.int64) @ np.diff(self.k_bounds))

    def block_pairs(self, block_q: int, block_k: int) -> int:
        """Pairs a block-sparse kernel computes: every pair of each block that holds a visible pair."""
        lq, lk = self.shape
        nq, nk = -(-lq // block_q), -(-lk // block_k)
        q_blocks = np.minimum(np.arange(nq + 1) * block_q, lq)
        k_blocks = np.minimum(np.arange(nk + 1) * block_k, lk)
        # runs overlapping each block → block is live if any overlapping run pair is visible
        live = np.zeros((nq, nk), bool)
        for i in range(nq):
            rq = slice(np.searchsorted(self.q_bounds, q_blocks[i], "right") - 1,
                       np.searchsorted(self.q_bounds, q_blocks[i + 1], "left"))
            row = self.run_mask[rq].any(0)
            for j in range(nk):
                rk = slice(np.searchsorted(self.k_bounds, k_blocks[j], "right") - 1,
                           np.searchsorted(self.k_bounds, k_blocks[j + 1], "left"))
                live[i, j] = row[rk].any()
        return int(live.sum()) * block_q * block_k

    @functools.cached_property
    def groups(self) -> tuple[tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]], ...]:
        """((query ranges), (key ranges)) per group of query runs that see the same key runs; adjacent ranges
        merged. Query runs that see no key form a group with no key ranges."""
        by_keys: dict[tuple[int, ...], list[int]] = collections.OrderedDict()
        for r in range(len(self.q_bounds) - 1):
            by_keys.setdefault(tuple(np.flatnonzero(self.run_mask[r])), []).append(r)
        out = []
        for key_runs, q_runs in by_keys.items():
            out.append((_merge([(self.q_bounds[r], self.q_bounds[r + 1]) for r in q_runs]),
                        _merge([(self.k_bounds[r], self.k_bounds[r + 1]) for r in key_runs])))
        return tuple(out)


def _run_bounds(ids: Mapping[str, np.ndarray]) -> np.ndarray:
    """int [R+1]: start of every run of tokens whose ids all agree, then the length."""
    length = next(iter(ids.values())).size
    change = np.zeros(length, bool)
    change[:1] = True
    for a in ids.values():
        change[1:] |= a[1:] != a[:-1]
    return np.r_[np.flatnonzero(change), length].astype(np.int64)


def _merge(ranges):
    merged: list[list[int]] = []
    for a, b in ranges:
        if merged and merged[-1][1] == a:
            merged[-1][1] = int(b)
        else:
            merged.append([int(a), int(b)])
    return tuple((a, b) for a, b in merged)


def full_mask(lq: int, lk: int) -> MaskSpec:
    """Every query sees every key (plain self- or cross-attention)."""
    return MaskSpec({"all": np.zeros(lq)}, {"all": np.zeros(lk)}, _always)


def _always(q, k):
    return np.ones(np.broadcast_shapes(q["all"].shape, k["all"].shape), bool)


def target_platform() -> str:
    """The platform being compiled for: the ambient mesh's devices (a TPU topology under compile-check, where the
    process's default backend is the CPU), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def pick_implementation(requested: str, dtype=None) -> str:
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {requested!r} unknown; choose one of {IMPLEMENTATIONS}")
    if requested != "auto":
        return requested
    backend = target_platform()
    if backend == "tpu":
        return "splash"
    if backend == "gpu" and dtype is not None and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla"


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec | None = None,
                          past: Mapping[str, jax.Array] | None = None, implementation: str = "auto") -> jax.Array:
    """Multi-head attention of q over [past keys, k].

    q: [B, Lq, H, Dh]; k, v: [B, Lk, H, Dh]; mask: structure over (q, k) (None = all visible); past: {"k", "v":
    [B, P, H, Dh], "valid": bool [B, P]}, every valid past key visible to every query. Returns [B, Lq, H, Dh] in
    q's dtype; a query that sees no key returns zeros."""
    lq, lk = q.shape[1], k.shape[1]
    mask = full_mask(lq, lk) if mask is None else mask
    if mask.shape != (lq, lk):
        raise ValueError(f"attention mask structure is {mask.shape}, queries/keys are ({lq}, {lk})")
    impl = pick_implementation(implementation, q.dtype)
    if impl == "splash":
        from wam_jax.models import splash
        return splash.attention(q, k, v, mask, past)
    if impl == "dense":
        return _dense(q, k, v, mask, past)
    return _attend_groups(q, k, v, mask, past, impl)


def _key_mask(past, b):
    return None if past is None else past["valid"].reshape(b, 1, 1, -1)


def _dense(q, k, v, mask: MaskSpec, past):
    """Reference: the rule evaluated densely, one masked softmax."""
    b, lq = q.shape[:2]
    m = jnp.broadcast_to(jnp.asarray(mask.dense())[None, None], (b, 1, lq, k.shape[1]))
    if past is not None:
        m = jnp.concatenate([jnp.broadcast_to(_key_mask(past, b), (b, 1, lq, past["k"].shape[1])), m], axis=-1)
        k = jnp.concatenate([past["k"].astype(k.dtype), k], axis=1)
        v = jnp.concatenate([past["v"].astype(v.dtype), v], axis=1)
    out = _softmax_attention(q, k, v, m)
    return jnp.where(jnp.any(m, axis=-1).transpose(0, 2, 1)[..., None], out, 0).astype(q.dtype)


def _softmax_attention(q, k, v, mask):
    """XLA attention, float32 softmax; mask bool broadcastable to [B, 1, Lq, Lk] or None."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, -1e30)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(q.dtype)


def _take(x, ranges):
    parts = [x[:, a:b] for a, b in ranges]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def _attend_groups(q, k, v, mask: MaskSpec, past, impl: str):
    """Each group of query runs attends to exactly its visible keys (plus the cached ones): no mask, and the
    work done is the masked pair count."""
    b = q.shape[0]
    pieces = []
    for q_ranges, k_ranges in mask.groups:
        qg = _take(q, q_ranges)
        keys = [] if not k_ranges else [(_take(k, k_ranges), _take(v, k_ranges))]
        if past is not None:
            keys.insert(0, (past["k"].astype(k.dtype), past["v"].astype(v.dtype)))
        if not keys:
            out = jnp.zeros_like(qg)
        else:
            kg = jnp.concatenate([a for a, _ in keys], axis=1) if len(keys) > 1 else keys[0][0]
            vg = jnp.concatenate([a for _, a in keys], axis=1) if len(keys) > 1 else keys[0][1]
            key_mask = None
            if past is not None:
                own = jnp.ones((b, 1, 1, kg.shape[1] - past["k"].shape[1]), bool)
                key_mask = jnp.concatenate([_key_mask(past, b), own], axis=-1)
            if impl == "cudnn" and key_mask is None:
                out = jax.nn.dot_product_attention(qg, kg, vg, implementation="cudnn")
            else:
                out = _softmax_attention(qg, kg, vg, key_mask)
            if key_mask is not None and not k_ranges:      # only cached keys: all may be invalid
                out = jnp.where(jnp.any(key_mask, -1).transpose(0, 2, 1)[..., None], out, 0)
        start = 0
        for a, bnd in q_ranges:
            pieces.append((a, out[:, start:start + bnd - a]))
            start += bnd - a
    pieces.sort(key=lambda p: p[0])
    return jnp.concatenate([p for _, p in pieces], axis=1).astype(q.dtype)
