"""Analytic FLOP model of DriveWAM and the video-only Wan DiT, next to the models it counts.

FLOPs (`flop_breakdown`, `model_flops`) are counted from the config: matrix products only, 2 FLOPs
per multiply-add. With B examples, S streams, N chunks, Lv = (F/pt)(h/ph)(w/pw) video and K action tokens per
chunk, L = S·N·(Lv+K) tokens per example, width D = heads·head_dim, FFN width Dff, Lc context tokens (N·Lg
guidance tokens, or 1 all-zero token without guidance), P_in/P_out = pt·ph·pw·channels, A = action_dim,
Dt = text_dim, Df = freq_dim and Pk past (KV-cache) tokens:

    patch embed      2·B·S·N·Lv·P_in·D
    action embed     2·B·S·N·K·(A·D + D²)
    time embed       2·B·S·N·2·(Df·D + 7·D²)           video and action timestep MLPs + 6-way adaLN projections
    text embed       2·B·Lc·(Dt·D + D²)
    per layer ×layers:
      self q,k,v,o   8·B·L·D²
      self QKᵀ, PV   4·B·D·pairs                        pairs = Σ over queries of the keys attended
      cross q,o      4·B·L·D²
      cross k,v      4·B·Lc·D²
      cross QKᵀ, PV  4·B·D·L·Lx
      ego q,o        4·B·L·D²                           ego-state cross-attention (one token per chunk)
      ego k,v        4·B·N·D²
      ego QKᵀ, PV    4·B·D·L·Le
      FFN            4·B·L·D·Dff
    ego embed        2·B·N·(3·D + D²)
    heads            2·B·S·N·(Lv·D·P_out + K·(D² + D·A))  the action decoder is a 2-layer MLP

Attention is counted three ways. `masked` (useful work; what MFU uses): pairs = what `wam.attention_rule`
allows for the config's layout (a query of chunk n sees the n earlier clean chunks and, within its chunk, what
the layout allows) plus L·Pk_valid (every valid cached token); Lx = Lg (own chunk's guidance; 1 without),
Le = 1 (own ego token). `computed` (what the grouped XLA / cuDNN attention multiplies): the masked pairs plus
every cached slot, valid or not: pairs = masked own pairs + L·Pk_slots, Lx = Lg, Le = 1. `dense` (every pair,
what attention computed while it took a dense [L, L] mask): pairs = L·(Pk_slots + L), Lx = Lc, Le = N. A train step is 3 × forward (backward = 2 × forward);
recomputation under remat is not counted, so MFU here is model FLOPs utilisation, not hardware FLOPs utilisation. Not counted anywhere:
norms, RoPE, softmax, activations, adaLN modulation and other elementwise work (XLA's cost analysis does count
it: see tests/test_bench.py for the comparison and its tolerance).

Attention pairs (`attention_pairs`): `masked` = pairs the mask allows; `computed` = pairs each kernel actually
multiplies: the grouped XLA / cuDNN path computes exactly the masked pairs (plus every cached slot, valid or
not), splash every pair of each [block, block] tile that holds a visible pair; `dense` = L·(P + L), what the
attention did before it took the mask as structure (every pair, masked afterwards).
"""

from __future__ import annotations

import dataclasses
import math
import re


def visible_pairs(streams: int, chunks: int, per_chunk: int, action_tokens: int = 1,
                  layout: str = "joint") -> int:
    """Query-key pairs allowed by `TokenLayout.self_mask` for one example of chunks of `per_chunk` tokens
    (`action_tokens` of them actions). Counted from `wam.attention_rule` over the token ids (runs of equal ids),
    so it follows the rule of `layout`; joint: chunk n's queries see their own chunk of their own stream and the
    clean copies of chunks 0..n-1 → (n+1)·per_chunk keys."""
    return _layout_spec(streams, chunks, per_chunk, per_chunk - action_tokens, layout).pairs()


def _layout_spec(streams: int, chunks: int, per_chunk: int, video_tokens: int | None = None,
                 layout: str = "joint"):
    from wam_jax.models import wam as wam_lib
    from wam_jax.models.attention import MaskSpec
    video = per_chunk - 1 if video_tokens is None else video_tokens
    token_layout = wam_lib.TokenLayout(streams, chunks, video, per_chunk - video, layout)
    return MaskSpec(token_layout.token_ids, token_layout.token_ids, token_layout.rule)


def attention_pairs(wam, wan, streams: int, chunks: int, past_tokens: int = 0, block: int = 512) -> dict[str, int]:
    """Self-attention (query, key) pairs per example and layer: masked (allowed by the rule), computed by the
    grouped XLA / cuDNN path, computed by splash (whole live [block, block] tiles; cached slots are one more
    always-live column range), and dense (every pair)."""
    from wam_jax.models.splash import _RunsMask, block_size
    spec = _layout_spec(streams, chunks, wam.video_tokens(wan) + wam.waypoints_per_chunk, wam.video_tokens(wan),
                        wam.layout)
    seq = spec.shape[0]
    bq, bk = block_size(seq, block), block_size(seq + past_tokens, block)
    lq_pad, lk_pad = -(-seq // bq) * bq, -(-(seq + past_tokens) // bk) * bk
    padded = _RunsMask(spec, past_tokens, (lq_pad, lk_pad))
    live = sum(bool(padded[slice(i, i + bq), slice(j, j + bk)][:seq - i].any())
               for i in range(0, lq_pad, bq) for j in range(0, lk_pad, bk) if i < seq)
    return {"masked": spec.pairs() + seq * past_tokens, "xla": spec.pairs() + seq * past_tokens,
            "splash": live * bq * bk, "dense": seq * (seq + past_tokens), "block": bq}


def flop_breakdown(wan, wam, batch: int, streams: int, chunks: int, *, guidance: bool = True,
                   past_tokens: int = 0, past_valid: int | None = None,
                   attention: str = "masked") -> dict[str, float]:
    """Forward matmul FLOPs of DriveWAM per component (formula in the module docstring).

    wan: WanConfig; wam: WamConfig; batch B, streams S (2 = teacher forcing, 1 = rollout / diffusion forcing),
    chunks N; guidance: per-chunk intent tokens (else one zero context token); past_tokens: KV-cache slots the
    attention reads (rollout), past_valid: how many of them are valid (default all); attention: 'masked'
    (useful pairs), 'computed' (what the grouped XLA / cuDNN attention multiplies: masked + every cached slot) or
    'dense' (every pair)."""
    if attention not in ("masked", "computed", "dense"):
        raise ValueError(f"attention={attention!r}: choose 'masked', 'computed' or 'dense'")
    d, dff, layers = wan.dim, wan.ffn_dim, wan.num_layers
    patch = math.prod(wan.patch_size)
    lv, k, a = wam.video_tokens(wan), wam.waypoints_per_chunk, wam.action_dim
    per_chunk = lv + k
    seq = streams * chunks * per_chunk                 # L
    items = batch * streams * chunks                   # B·S·N (chunks of one stream)
    lg = wam.guidance_tokens
    ctx = chunks * lg if guidance else 1               # Lc
    valid = past_tokens if past_valid is None else past_valid
    if attention in ("masked", "computed"):
        own = _layout_spec(streams, chunks, per_chunk, lv, wam.layout).pairs()
        pairs = own + seq * (valid if attention == "masked" else past_tokens)
        cross_keys = lg if guidance else 1
        ego_keys = 1
    else:
        pairs = seq * (past_tokens + seq)
        cross_keys = ctx
        ego_keys = chunks
    b = batch
    out = {
        "patch embed": 2.0 * items * lv * patch * wan.in_channels * d,
        "action embed": 2.0 * items * k * (a * d + d * d),
        "time embed": 2.0 * items * 2 * (wan.freq_dim * d + 7 * d * d),
        "text embed": 2.0 * b * ctx * (wan.text_dim * d + d * d),
        "self-attn q,k,v,o": layers * 8.0 * b * seq * d * d,
        "self-attn QK^T,PV": layers * 4.0 * b * d * pairs,
        "cross-attn q,o,k,v": layers * (4.0 * b * seq * d * d + 4.0 * b * ctx * d * d),
        "cross-attn QK^T,PV": layers * 4.0 * b * d * seq * cross_keys,
        "ego embed": 2.0 * b * chunks * (3 * d + d * d),
        "ego-attn q,o,k,v": layers * (4.0 * b * seq * d * d + 4.0 * b * chunks * d * d),
        "ego-attn QK^T,PV": layers * 4.0 * b * d * seq * ego_keys,
        "FFN": layers * 4.0 * b * seq * d * dff,
        "heads": 2.0 * items * (lv * d * patch * wan.out_channels + k * (d * d + d * a)),
    }
    return out


def model_flops(wan, wam, batch: int, streams: int, chunks: int, **kwargs) -> float:
    """Forward FLOPs of DriveWAM (sum of `flop_breakdown`); a train step is 3× this."""
    return float(sum(flop_breakdown(wan, wam, batch, streams, chunks, **kwargs).values()))


def wan_video_flops(wan, batch: int, frames: int, height: int, width: int, text_len: int) -> float:
    """Forward FLOPs of the video-only `WanTransformer` on latents [B, frames, height, width, C] (full
    attention over t·h·w patch tokens, text context of text_len tokens); same terms as DriveWAM's."""
    pt, ph, pw = wan.patch_size
    seq = (frames // pt) * (height // ph) * (width // pw)
    d, layers = wan.dim, wan.num_layers
    patch = pt * ph * pw
    per_layer = 8.0 * seq * d * d + 4.0 * d * seq * seq + 4.0 * seq * d * d + 4.0 * text_len * d * d \
        + 4.0 * d * seq * text_len + 4.0 * seq * d * wan.ffn_dim
    embed = 2.0 * seq * patch * wan.in_channels * d + 2.0 * (wan.freq_dim * d + 7 * d * d) \
        + 2.0 * text_len * (wan.text_dim * d + d * d)
    return batch * (embed + layers * per_layer + 2.0 * seq * d * patch * wan.out_channels)


def xla_cost_flops(compiled) -> float:
    """'flops' of a compiled executable's cost analysis. XLA counts a while loop's body once (a scanned layer
    stack counts as one layer): compare with `scan_layers=False`."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


_HLO_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\w+\[([\d,]*)\]")
_HLO_DOT = re.compile(r"\sdot\(%?([\w.\-]+),\s*%?([\w.\-]+)\)")
_HLO_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")


def hlo_dot_flops(hlo_text: str) -> float:
    """2 · |output| · |contracted dims| summed over the `dot` instructions of an HLO module's text: the matmul
    FLOPs of a program, without the elementwise work XLA's cost analysis adds. (A dot inside a while body counts
    once.)"""
    shapes: dict[str, list[int]] = {}
    dots = []
    for line in hlo_text.splitlines():
        m = _HLO_INSTR.match(line)
        if not m:
            continue
        dims = [int(x) for x in m.group(2).split(",") if x]
        shapes[m.group(1)] = dims
        dot = _HLO_DOT.search(line)
        if dot:
            c = _HLO_CONTRACT.search(line)
            dots.append((dims, dot.group(1), [int(i) for i in c.group(1).split(",") if i] if c else []))
    return float(sum(2 * math.prod(out) * math.prod(shapes[lhs][i] for i in contracted)
                     for out, lhs, contracted in dots))


def xla_forward_flops(wan, wam, batch: int, streams: int, chunks: int, guidance: bool = True,
                      past_tokens: int = 0) -> dict[str, float]:
    """XLA's view of the DriveWAM forward, layers unrolled so every layer counts (past_tokens > 0: with a KV
    cache of that many slots, as in rollout). Returns {"cost_analysis": compiled cost-analysis flops (matmuls
    + elementwise), "dots_lowered": matmul FLOPs of the HLO as lowered, "dots_compiled": of the optimised
    HLO}."""
    import jax
    import jax.numpy as jnp
    from wam_jax.models import wam as wam_lib
    wan = dataclasses.replace(wan, scan_layers=False)
    model = wam_lib.DriveWAM(wan, wam, return_kv=past_tokens > 0)
    inputs = wam_lib.dummy_inputs(wan, wam, batch, streams, chunks, guidance)
    params = jax.eval_shape(lambda r: model.init(r, *wam_lib.dummy_inputs(wan, wam))["params"], jax.random.key(0))
    past = None
    if past_tokens:
        kv = jax.ShapeDtypeStruct((wan.num_layers, batch, past_tokens, wan.num_attention_heads,
                                   wan.attention_head_dim), wan.compute_dtype)
        past = {"k": kv, "v": kv, "valid": jax.ShapeDtypeStruct(kv.shape[:3], jnp.bool_)}
    lowered = jax.jit(lambda p, past, *x: model.apply({"params": p}, *x, past=past)).lower(params, past, *inputs)
    compiled = lowered.compile()
    return {"cost_analysis": xla_cost_flops(compiled),
            "dots_lowered": hlo_dot_flops(lowered.compiler_ir("hlo").as_hlo_text()),
            "dots_compiled": hlo_dot_flops(compiled.as_text())}


