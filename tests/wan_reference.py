"""Tiny random diffusers Wan transformers for parity tests (PyTorch, CPU)."""

import numpy as np
import torch
from diffusers import WanTransformer3DModel

TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=6,
                text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)


def make_tiny_wan(seed: int = 0, **overrides) -> WanTransformer3DModel:
    """A random tiny Wan; every tensor (norm weights included) is perturbed so a mis-mapped one shows."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**TINY_WAN, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def torch_forward(model, latents_cthw: np.ndarray, timesteps: np.ndarray, context: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(latents_cthw), torch.from_numpy(timesteps), torch.from_numpy(context),
                    return_dict=False)[0]
    return out.numpy()


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
