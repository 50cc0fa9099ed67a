"""DriveWAM's forward in PyTorch, rebuilt from an export (`python -m wam_jax export`). Needs torch, diffusers
and safetensors; never imports JAX or Flax.

    from wam_jax.interop.torch_drivewam import DriveWAMTorch
    model = DriveWAMTorch.from_pretrained("export/tiny")           # OUT of the export command
    video_v, action_v = model(video, actions, t_video, t_action, guidance)

The video DiT is diffusers' `WanTransformer3DModel` loaded from OUT/transformer; its submodules
(patch_embedding, condition_embedder, blocks, norm_out/proj_out/scale_shift_table) run on DriveWAM's token
sequence, which this file lays out as wam_jax/models/wam.py does:

* S streams × N chunks, each chunk = its F·H·W/4 video patch tokens then its K action tokens;
* block-causal self-attention: query q sees key k iff (k is in stream 0 and chunk(k) < chunk(q)) or
  (same chunk and same stream);
* RoPE on (frame, row, col): video token (n, f, i, j) at (n·F' + f, i, j) (F' = F / patch_t), action token k of
  chunk n at (n·F' + (k+1)·F'/K − 1, action_rope_hw) (default: the grid centre);
* per-token adaLN modulation: video tokens from Wan's time embedder at t_video·1000, action tokens from the
  action time embedder at t_action·1000;
* cross-attention: with guidance [B, N, Lg, text_dim], chunk n's tokens attend only to chunk n's Lg tokens
  (after Wan's text projection); without, every token attends to the projection of one all-zero token;
* output heads: Wan's (video patches) and the action head (waypoints), both adaLN from the time embedding.

Layout of tensors: channels-last as in JAX: video [B, S, N, F, H, W, z], actions [B, S, N, K, A] (normalised
with drivewam_config.json's action_norm), t_video/t_action [B, S, N] in [0, 1] (0 = clean). No KV cache:
every forward sees the full sequence.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from wam_jax.interop import drivewam_format as fmt


def load_wan_transformer(path: str, torch_dtype: torch.dtype | None = None) -> WanTransformer3DModel:
    """OUT/transformer as a diffusers WanTransformer3DModel.

    diffusers' `from_pretrained` needs the `accelerate` package for Wan (it keeps some modules in float32 and
    refuses to load without accelerate); when accelerate is missing the model is built from config.json and the
    safetensors (single file or shards) are copied in tensor by tensor: the same module, the same tensors."""
    if importlib.util.find_spec("accelerate") is not None:
        return WanTransformer3DModel.from_pretrained(path, torch_dtype=torch_dtype)
    model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(path))
    if torch_dtype is not None:   # cast first, then copy: every tensor is rounded once, from the stored values
        for name, param in model.named_parameters():   # diffusers keeps _keep_in_fp32_modules in float32
            if not any(part in model._keep_in_fp32_modules for part in name.split(".")):
                param.data = param.data.to(torch_dtype)
    index = os.path.join(path, f"{fmt.WEIGHTS_STEM}.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = [f"{fmt.WEIGHTS_STEM}.safetensors"]
    params = dict(model.named_parameters())
    seen = set()
    with torch.no_grad():
        for name in files:
            with safe_open(os.path.join(path, name), framework="pt") as f:
                for key in f.keys():
                    if key not in params:
                        raise ValueError(f"{path}/{name}: tensor {key!r} is not a WanTransformer3DModel parameter")
                    value = f.get_tensor(key)
                    if value.shape != params[key].shape:
                        raise ValueError(f"{path}/{name}: {key} has shape {tuple(value.shape)}, the model "
                                         f"{tuple(params[key].shape)}")
                    params[key].copy_(value)
                    seen.add(key)
    if set(params) != seen:
        raise ValueError(f"{path}: missing tensors {sorted(set(params) - seen)[:10]}")
    return model


class ActionEmbed(nn.Module):
    """Waypoints [.., A] → tokens [.., D]: linear, SiLU, linear."""

    def __init__(self, action_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(action_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(actions)))


class ActionTime(nn.Module):
    """The action tokens' timestep embedding + 6-way adaLN modulation (Wan's time embedder structure)."""

    def __init__(self, freq_dim: int, dim: int):
        super().__init__()
        self.timesteps_proj = Timesteps(num_channels=freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(in_channels=freq_dim, time_embed_dim=dim)
        self.time_proj = nn.Linear(dim, 6 * dim)


class ActionHead(nn.Module):
    """adaLN (shift/scale table + time embedding), then a two-layer MLP to the action dims."""

    def __init__(self, dim: int, action_dim: int):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 2, dim))
        self.linear_1 = nn.Linear(dim, dim)
        self.proj_out = nn.Linear(dim, action_dim)

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.silu(self.linear_1(h)))


class EgoEmbed(nn.Module):
    """Ego state [B, N, 3] (× scale) → one token per chunk [B, N, D]: linear, SiLU, linear."""

    def __init__(self, dim: int, scale):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        self.linear_1 = nn.Linear(3, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, ego: torch.Tensor) -> torch.Tensor:
        x = (ego.float() * self.scale).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(x)))


class _EgoAttention(nn.Module):
    """Wan attention's parameter layout (to_q/k/v, to_out.0, RMSNorm over all heads on q and k)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)


class EgoBlock(nn.Module):
    """One block's ego-state cross-attention: affine float32 LayerNorm, then attention to the ego tokens."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.attn = _EgoAttention(dim, eps)


def _time_embedding(timesteps_proj, time_embedder, time_proj, t: torch.Tensor):
    """t: [...] on Wan's 0..1000 scale → temb [..., D] and modulation [..., 6, D], float32 (as diffusers)."""
    feats = timesteps_proj(t.reshape(-1).float())
    weight = time_embedder.linear_1.weight
    temb = time_embedder(feats.to(weight.dtype)).float()
    mod = time_proj(F.silu(temb).to(time_proj.weight.dtype)).float()
    return temb.reshape(*t.shape, -1), mod.reshape(*t.shape, 6, -1)


def _rope_inverse_frequencies(head_dim: int, theta: float) -> list[np.ndarray]:
    hw = 2 * (head_dim // 6)
    dims = (head_dim - 2 * hw, hw, hw)
    return [np.asarray(1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64)[: d // 2] / d), np.float32) for d in dims]


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates interleaved pairs of x [B, L, H, Dh]; cos, sin [1, L, 1, Dh/2]."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).type_as(x)


def _attention(attn, x, context, rope, mask, heads: int) -> torch.Tensor:
    """A diffusers WanAttention's weights applied with an explicit mask and RoPE. x: [B, L, D]."""
    src = x if context is None else context
    q = attn.norm_q(attn.to_q(x)).unflatten(2, (heads, -1))
    k = attn.norm_k(attn.to_k(src)).unflatten(2, (heads, -1))
    v = attn.to_v(src).unflatten(2, (heads, -1))
    if rope is not None:
        q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return attn.to_out[0](out.transpose(1, 2).flatten(2).type_as(q))


def _block(blk, x, context, mod, rope, self_mask, cross_mask, heads: int, ego_blk=None, ego=None,
           ego_mask=None) -> torch.Tensor:
    """One diffusers WanTransformerBlock with DriveWAM's masks and ego-state branch (after the text
    cross-attention, as in wam_jax.models.wan_dit.WanBlock). mod: [B, L, 6, D] float32."""
    m = blk.scale_shift_table.float().unsqueeze(0) + mod
    shift, scale, gate, c_shift, c_scale, c_gate = m.unbind(2)
    h = (blk.norm1(x.float()) * (1 + scale) + shift).type_as(x)
    x = (x.float() + _attention(blk.attn1, h, None, rope, self_mask, heads).float() * gate).type_as(x)
    h = blk.norm2(x.float()).type_as(x)
    x = x + _attention(blk.attn2, h, context, None, cross_mask, heads).type_as(x)
    if ego_blk is not None:
        h = F.layer_norm(x.float(), (x.shape[-1],), ego_blk.norm.weight.float(), ego_blk.norm.bias.float(),
                         ego_blk.norm.eps).type_as(x)
        x = x + _attention(ego_blk.attn, h, ego, None, ego_mask, heads).type_as(x)
    h = (blk.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
    return (x.float() + blk.ffn(h).float() * c_gate).type_as(x)


def _head(norm, table, proj, x, temb) -> torch.Tensor:
    """Output adaLN + projection. x: [B, L, D]; temb: [B, L, D] float32; table [1, 2, D]."""
    shift, scale = (table.float().unsqueeze(0) + temb.unsqueeze(2)).unbind(2)
    return proj((norm(x.float()) * (1 + scale) + shift).type_as(x))


class DriveWAMTorch(nn.Module):
    """DriveWAM in PyTorch. `transformer`: diffusers WanTransformer3DModel; `config`: drivewam_config.json."""

    def __init__(self, transformer: WanTransformer3DModel, config: dict[str, Any]):
        super().__init__()
        self.transformer = transformer
        self.config = config
        tc = transformer.config
        self.dim = tc.num_attention_heads * tc.attention_head_dim
        self.heads = tc.num_attention_heads
        self.patch_size = tuple(tc.patch_size)
        self.out_channels = tc.out_channels or tc.in_channels
        self.text_dim = tc.text_dim
        wam = config["wam"]
        self.frames, self.height, self.width = wam["latent_frames_per_chunk"], wam["latent_height"], wam["latent_width"]
        self.waypoints, self.action_dim = wam["waypoints_per_chunk"], wam["action_dim"]
        self.guidance_tokens = wam["guidance_tokens"]
        self.action_rope_hw = wam.get("action_rope_hw")
        self.rope_theta = float(config["model"].get("rope_theta", 10000.0))
        self.action_embed = ActionEmbed(self.action_dim, self.dim)
        self.action_time = ActionTime(tc.freq_dim, self.dim)
        self.action_head = ActionHead(self.dim, self.action_dim)
        self.layout = config.get("flow", {}).get("layout", "inverse_dynamics")
        self.ego_embed = EgoEmbed(self.dim, wam.get("ego_scale", (0.1, 0.5, 10.0)))
        self.ego_blocks = nn.ModuleList([EgoBlock(self.dim, tc.eps) for _ in range(tc.num_layers)])

    @classmethod
    def from_pretrained(cls, path: str, torch_dtype: torch.dtype | None = None) -> "DriveWAMTorch":
        """Loads OUT of the export command. torch_dtype: compute dtype of the transformer and action
        projections (time embedders, modulation tables and norms stay float32, as in diffusers)."""
        config_path = os.path.join(path, fmt.DRIVEWAM_DIR, fmt.CONFIG_FILE)
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"no DriveWAM export at {path!r}: {config_path} is missing (write one with "
                                    f"`python -m wam_jax export --checkpoint ... --out {path}`)")
        with open(config_path) as f:
            config = json.load(f)
        if config.get("format") != fmt.FORMAT or config.get("format_version", 0) > fmt.FORMAT_VERSION:
            raise ValueError(f"{config_path}: format {config.get('format')!r} v{config.get('format_version')} is "
                             f"not {fmt.FORMAT!r} up to v{fmt.FORMAT_VERSION}")
        transformer = load_wan_transformer(os.path.join(path, fmt.TRANSFORMER_DIR), torch_dtype)
        model = cls(transformer.eval(), config)
        state = load_file(os.path.join(path, fmt.DRIVEWAM_DIR, fmt.ACTIONS_FILE))
        expected = set(fmt.action_tensor_names(transformer.config.num_layers))
        if set(state) != expected:
            raise ValueError(f"{fmt.ACTIONS_FILE}: missing {sorted(expected - set(state))}, "
                             f"unexpected {sorted(set(state) - expected)}")
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("transformer.")]
        if missing or unexpected:   # the name lists of drivewam_format and of this module disagree
            raise ValueError(f"{fmt.ACTIONS_FILE} does not fit DriveWAMTorch: missing {missing}, "
                             f"unexpected {unexpected}")
        if torch_dtype is not None:
            model.action_embed.to(torch_dtype)
            model.action_head.linear_1.to(torch_dtype)
            model.action_head.proj_out.to(torch_dtype)
            model.ego_embed.to(torch_dtype)
            for blk in model.ego_blocks:
                blk.attn.to(torch_dtype)
        return model.eval()

    # ----- layout ---------------------------------------------------------------------------------------
    def _grid(self):
        pt, ph, pw = self.patch_size
        return self.frames // pt, self.height // ph, self.width // pw

    def positions(self, streams: int, chunks: int, chunk_offset: int = 0) -> np.ndarray:
        """RoPE positions [S·N·(Lv + K), 3] (frame, row, col), float32."""
        f, h, w = self._grid()
        fi, hi, wi = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij")
        video = np.stack([fi, hi, wi], -1).reshape(-1, 3).astype(np.float32)
        hw = self.action_rope_hw if self.action_rope_hw is not None else ((h - 1) / 2.0, (w - 1) / 2.0)
        act = np.zeros((self.waypoints, 3), np.float32)
        act[:, 0] = (np.arange(1, self.waypoints + 1) * f / self.waypoints - 1.0).astype(np.float32)
        act[:, 1], act[:, 2] = hw
        chunk = np.concatenate([video, act], 0)
        pos = np.tile(chunk, (streams * chunks, 1))
        chunk_ids = np.tile(np.repeat(np.arange(chunks), len(chunk)), streams)
        pos[:, 0] += ((chunk_ids + chunk_offset) * f).astype(np.float32)
        return pos

    def masks(self, streams: int, chunks: int) -> tuple[np.ndarray, np.ndarray]:
        """(self mask [L, L], cross mask [L, N·Lg]), True = may attend."""
        per = len(self.positions(1, 1))
        s, n = np.meshgrid(np.arange(streams), np.arange(chunks), indexing="ij")
        sid, cid = np.repeat(s.reshape(-1), per), np.repeat(n.reshape(-1), per)
        mid = np.tile((np.arange(per) >= per - self.waypoints).astype(int), streams * chunks)   # 0 video, 1 action
        qs, ks, qc, kc, qm, km = sid[:, None], sid[None], cid[:, None], cid[None], mid[:, None], mid[None]
        # wam_jax.models.wam.attention_rule, written out again here (this module never imports JAX).
        earlier_clean = (ks == 0) & (kc < qc)
        if self.layout == "joint":
            self_mask = earlier_clean | ((kc == qc) & (ks == qs))
        else:
            own = (((qs == 0) & (ks == 0) & ((km == 0) | (qm == 1))) | ((qs != 0) & (ks != 0) & (km == qm))
                   | ((qs != 0) & (qm == 1) & (ks == 0) & (km == 0)))
            self_mask = earlier_clean | ((kc == qc) & own)
        cross = cid[:, None] == np.repeat(np.arange(chunks), self.guidance_tokens)[None]
        return self_mask, cross

    def _rope(self, positions: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.from_numpy(positions).to(device)
        inv = _rope_inverse_frequencies(self.transformer.config.attention_head_dim, self.rope_theta)
        angles = torch.cat([pos[:, i:i + 1] * torch.from_numpy(f).to(device) for i, f in enumerate(inv)], dim=-1)
        return torch.cos(angles)[None, :, None], torch.sin(angles)[None, :, None]

    # ----- forward --------------------------------------------------------------------------------------
    def forward(self, video: torch.Tensor, actions: torch.Tensor, t_video: torch.Tensor, t_action: torch.Tensor,
                guidance: torch.Tensor | None = None, chunk_offset: int = 0,
                ego: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B, S, N, F, H, W, z]; actions [B, S, N, K, A]; t_video, t_action [B, S, N] in [0, 1];
        guidance [B, N, Lg, text_dim] or None; ego [B, N, 3] (speed, acceleration, curvature) or None (zeros). Returns float32 velocities (video [B, S, N, F, H, W, z],
        actions [B, S, N, K, A])."""
        tr = self.transformer
        b, s, n = video.shape[:3]
        if tuple(video.shape[3:6]) != (self.frames, self.height, self.width):
            raise ValueError(f"video chunk shape {tuple(video.shape[3:6])} != exported "
                             f"{(self.frames, self.height, self.width)}")
        if tuple(actions.shape) != (b, s, n, self.waypoints, self.action_dim):
            raise ValueError(f"actions {tuple(actions.shape)} != {(b, s, n, self.waypoints, self.action_dim)}")
        device, dtype = video.device, tr.patch_embedding.weight.dtype
        grid = self._grid()
        lv, k = grid[0] * grid[1] * grid[2], self.waypoints

        # Tokens: Conv3d patch embedding on [B·S·N, z, F, H, W], then each chunk's action tokens.
        vid = tr.patch_embedding(video.reshape(b * s * n, *video.shape[3:]).permute(0, 4, 1, 2, 3).to(dtype))
        vid = vid.flatten(2).transpose(1, 2).reshape(b, s, n, lv, self.dim)
        act = self.action_embed(actions.to(self.action_embed.linear_1.weight.dtype)).to(vid.dtype)
        x = torch.cat([vid, act], dim=3).reshape(b, -1, self.dim)

        ce = tr.condition_embedder
        temb_v, mod_v = _time_embedding(ce.timesteps_proj, ce.time_embedder, ce.time_proj, t_video.float() * 1000.0)
        at = self.action_time
        temb_a, mod_a = _time_embedding(at.timesteps_proj, at.time_embedder, at.time_proj, t_action.float() * 1000.0)
        per_token = lambda v, a: torch.cat([v[:, :, :, None].expand(b, s, n, lv, *v.shape[3:]),
                                            a[:, :, :, None].expand(b, s, n, k, *a.shape[3:])], dim=3)
        mod = per_token(mod_v, mod_a).reshape(b, -1, 6, self.dim)

        rope = self._rope(self.positions(s, n, chunk_offset), device)
        self_mask, cross_mask = self.masks(s, n)
        self_mask = torch.from_numpy(self_mask).to(device)[None, None]
        text_dtype = ce.text_embedder.linear_1.weight.dtype
        if guidance is None:
            context = ce.text_embedder(torch.zeros(b, 1, self.text_dim, device=device, dtype=text_dtype))
            cross = None
        else:
            if tuple(guidance.shape) != (b, n, self.guidance_tokens, self.text_dim):
                raise ValueError(f"guidance {tuple(guidance.shape)} != {(b, n, self.guidance_tokens, self.text_dim)}")
            context = ce.text_embedder(guidance.reshape(b, -1, self.text_dim).to(text_dtype))
            cross = torch.from_numpy(cross_mask).to(device)[None, None]
        context = context.to(x.dtype)

        if ego is None:
            ego = torch.zeros(b, n, 3, device=device)
        ego_tokens = self.ego_embed(ego.to(device)).to(x.dtype)
        ego_mask = torch.from_numpy(np.repeat(np.arange(n), lv + k)[:, None] == np.arange(n)[None]).to(device)
        ego_mask = ego_mask.repeat(s, 1)[None, None]
        for blk, ego_blk in zip(tr.blocks, self.ego_blocks):
            x = _block(blk, x, context, mod, rope, self_mask, cross, self.heads, ego_blk, ego_tokens, ego_mask)

        x = x.reshape(b, s, n, lv + k, self.dim)
        x_v, x_a = x[:, :, :, :lv].reshape(b, -1, self.dim), x[:, :, :, lv:].reshape(b, -1, self.dim)
        out_v = _head(tr.norm_out, tr.scale_shift_table, tr.proj_out, x_v,
                      temb_v[:, :, :, None].expand(b, s, n, lv, self.dim).reshape(b, -1, self.dim))
        out_a = _head(tr.norm_out, self.action_head.scale_shift_table, self.action_head.mlp, x_a,
                      temb_a[:, :, :, None].expand(b, s, n, k, self.dim).reshape(b, -1, self.dim))

        # Unpatchify: token (f, h, w) holds its patch as (pt, ph, pw, C).
        pt, ph, pw = self.patch_size
        f, h, w = grid
        out_v = out_v.float().reshape(b * s * n, f, h, w, pt, ph, pw, self.out_channels)
        out_v = out_v.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, s, n, f * pt, h * ph, w * pw, self.out_channels)
        return out_v, out_a.float().reshape(b, s, n, k, self.action_dim)
