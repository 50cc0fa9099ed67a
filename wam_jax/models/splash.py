"""TPU attention: Pallas splash attention with the block mask of a `MaskSpec`.

The mask's block structure (skip / full / partial per [block_q, block_kv] tile) is computed at trace time from the
runs of the ids (`MaskSpec.block`), so a fully hidden tile is never loaded or computed; only the distinct partial
tiles are stored. Cached keys (rollout) are prepended as fully visible columns and their dynamic validity goes in
as splash segment ids (query segment 1, key segment 1 = valid, 0 = invalid). Sequences are padded to the block
size; padded keys are hidden, padded queries are dropped.

Under a mesh the kernel runs per shard (shard_map): batch over data × fsdp, heads over tensor × sequence (the
sequence-parallel layout puts whole sequences and a slice of the heads on each chip before attention). On a
non-TPU backend it runs in Pallas interpret mode (tests).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as mask_info_lib
from jax.sharding import PartitionSpec as P

from wam_jax.models.attention import MaskSpec, target_platform

BATCH_AXES = ("data", "fsdp")
HEAD_AXES = ("tensor", "sequence")


def block_size(length: int, largest: int = 512) -> int:
    """Tile length: `largest` for long sequences, else the length rounded up to 128 (the TPU lane width)."""
    return min(largest, -(-length // 128) * 128)


class _RunsMask(mask_lib.Mask):
    """Splash mask over [queries padded, past + keys padded] evaluated block by block from the runs."""

    def __init__(self, spec: MaskSpec, past: int, shape: tuple[int, int]):
        self.spec, self.past, self._shape = spec, past, shape

    @property
    def shape(self):
        return self._shape

    def __getitem__(self, idx):
        qs, ks = idx
        q0, q1 = qs.start or 0, self._shape[0] if qs.stop is None else qs.stop
        k0, k1 = ks.start or 0, self._shape[1] if ks.stop is None else ks.stop
        lq, lk = self.spec.shape
        out = np.zeros((q1 - q0, k1 - k0), bool)
        # past columns: visible to every real query (validity is dynamic, in the segment ids)
        pe = min(k1, self.past)
        if k0 < pe:
            out[:, :pe - k0] = True
        a, b = max(k0, self.past), min(k1, self.past + lk)
        if a < b:
            out[:, a - k0:b - k0] = self.spec.block(q0, q1, a - self.past, b - self.past)
            if q1 > lq:     # padded queries see the keys (any non-empty row; their outputs are dropped)
                out[max(lq - q0, 0):, a - k0:b - k0] = True
        return out

    def __hash__(self):
        return hash((self.spec, self.past, self._shape))

    def __eq__(self, other):
        return isinstance(other, _RunsMask) and (self.spec, self.past, self._shape) == (other.spec, other.past,
                                                                                        other._shape)


@functools.lru_cache(maxsize=64)
def _mask_infos(spec: MaskSpec, past: int, heads: int, lq_pad: int, lk_pad: int, bq: int, bk: int):
    """Forward and dKV block-sparse mask info (numpy; splash's own `make_splash_mha` would turn them into jax
    arrays, which cannot be cached across traces)."""
    mask = mask_lib.MultiHeadMask([_RunsMask(spec, past, (lq_pad, lk_pad))] * heads)
    kw = dict(downcast_smem_data=True, head_shards=1, q_seq_shards=1)
    fwd, fn = mask_info_lib.process_mask(mask, (bq, bk), **kw)
    dkv, _ = mask_info_lib.process_mask_dkv(mask, (bq, bk), shrink_grid=False, **kw)
    assert fn is None
    return fwd, dkv


def fused_backward(kv_blocks: int, most: int = 4) -> bool:
    """Whether the backward pass uses splash's fused dq+dkv kernel: only while its per-key-block dq partials
    (kv_blocks × the size of q) stay small."""
    return kv_blocks <= most


def make_kernel(spec: MaskSpec, past: int, heads: int, lq_pad: int, lk_pad: int, bq: int, bk: int,
                interpret: bool) -> kernel_lib.SplashAttentionKernel:
    fwd, dkv = _mask_infos(spec, past, heads, lq_pad, lk_pad, bq, bk)
    as_jax = lambda info: jax.tree.map(jnp.asarray, info)
    # The fused backward (dq inside the dkv kernel) writes one partial dq per key block, [kv blocks, h, Lq, Dh],
    # summed afterwards: 26.7 GiB per example at the 14B shape (74 key blocks). Past a few key blocks the
    # separate dq kernel (one more pass over the scores, memory O(L)) is used instead.
    fused = fused_backward(lk_pad // bk)
    sizes = kernel_lib.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                                  block_kv_dkv_compute=bk, use_fused_bwd_kernel=fused,
                                  **({} if fused else dict(block_q_dq=bq, block_kv_dq=bk)))
    # The dq kernel walks the same [bq, bk] tiles as the forward one: the same block-sparse mask info.
    return kernel_lib.SplashAttentionKernel(
        as_jax(fwd), None if fused else as_jax(fwd), as_jax(dkv), block_sizes=sizes, is_mqa=False, save_residuals=False,
        mask_value=kernel_lib.DEFAULT_MASK_VALUE, attn_logits_soft_cap=None, residual_checkpoint_name=None,
        mask_function=None, interpret=interpret)


def _pad(x, length, axis=1):
    extra = length - x.shape[axis]
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def _local(q, k, v, past_k, past_v, past_valid, *, spec: MaskSpec, interpret: bool):
    """One shard: q [B, Lq, h, Dh], k/v [B, Lk, h, Dh], past [B, P, h, Dh] / [B, P] (P may be 0)."""
    b, lq, h, dh = q.shape
    p = past_k.shape[1]
    if p:
        k = jnp.concatenate([past_k.astype(k.dtype), k], axis=1)
        v = jnp.concatenate([past_v.astype(v.dtype), v], axis=1)
    bq, bk = block_size(lq), block_size(k.shape[1])
    lq_pad, lk_pad = -(-lq // bq) * bq, -(-k.shape[1] // bk) * bk
    kern = make_kernel(spec, p, h, lq_pad, lk_pad, bq, bk, interpret)
    to_heads = lambda x, n: _pad(x, n).transpose(0, 2, 1, 3)         # [B, h, L, Dh]
    qh = to_heads(q * jnp.asarray(1.0 / math.sqrt(dh), q.dtype), lq_pad)
    kh, vh = to_heads(k, lk_pad), to_heads(v, lk_pad)
    q_seg = jnp.ones((b, lq_pad), jnp.int32)
    kv_seg = _pad(jnp.concatenate([past_valid.astype(jnp.int32), jnp.ones((b, spec.shape[1]), jnp.int32)], 1),
                  lk_pad)
    out = jax.vmap(lambda a, c, d, qs, ks: kern(a, c, d, segment_ids=kernel_lib.SegmentIds(q=qs, kv=ks)))(
        qh, kh, vh, q_seg, kv_seg)
    out = out.transpose(0, 2, 1, 3)[:, :lq]
    seen = jnp.asarray(spec.row_has_key())[None, :] | jnp.any(past_valid, axis=1, keepdims=True)
    return jnp.where(seen[:, :, None, None], out, 0).astype(q.dtype)


def _axes(mesh, names, size):
    """Mesh axes among `names` (size > 1) whose product divides `size`, greedily."""
    picked, prod = [], 1
    for name in names:
        n = mesh.shape.get(name, 1) if name in mesh.axis_names else 1
        if n > 1 and size % (prod * n) == 0:
            picked.append(name)
            prod *= n
    return tuple(picked) or None


def attention(q, k, v, spec: MaskSpec, past=None, interpret: bool | None = None):
    interpret = target_platform() != "tpu" if interpret is None else interpret
    b, _, h, dh = q.shape
    if past is None:
        past_k = jnp.zeros((b, 0, h, dh), k.dtype)
        past = {"k": past_k, "v": past_k, "valid": jnp.zeros((b, 0), bool)}
    fn = functools.partial(_local, spec=spec, interpret=interpret)
    args = (q, k, v, past["k"], past["v"], past["valid"])
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return fn(*args)
    batch, heads = _axes(mesh, BATCH_AXES, b), _axes(mesh, HEAD_AXES, h)
    x = P(batch, None, heads, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(x, x, x, x, x, P(batch, None)), out_specs=x,
                         check_vma=False)(*args)
