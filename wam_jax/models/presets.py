"""Named Wan architectures (diffusers config.json values) that experiment files start from."""

from __future__ import annotations

import ml_collections

WAN_PRESETS = {
    # A few-hundred-k-parameter model for CPU tests and the demo.
    "tiny": dict(num_attention_heads=2, attention_head_dim=24, num_layers=2, ffn_dim=96, in_channels=16,
                 out_channels=16, text_dim=32, freq_dim=64, patch_size=(1, 2, 2)),
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json
    "wan2.1-t2v-1.3b": dict(num_attention_heads=12, attention_head_dim=128, num_layers=30, ffn_dim=8960,
                            in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, patch_size=(1, 2, 2)),
    # Wan-AI/Wan2.1-T2V-14B-Diffusers, transformer/config.json (width 5120)
    "wan2.1-t2v-14b": dict(num_attention_heads=40, attention_head_dim=128, num_layers=40, ffn_dim=13824,
                           in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, patch_size=(1, 2, 2)),
    # Wan-AI/Wan2.2-TI2V-5B-Diffusers, transformer/config.json
    "wan2.2-ti2v-5b": dict(num_attention_heads=24, attention_head_dim=128, num_layers=30, ffn_dim=14336,
                           in_channels=48, out_channels=48, text_dim=4096, freq_dim=256, patch_size=(1, 2, 2)),
}


def wan_model_config(preset: str, **overrides) -> ml_collections.ConfigDict:
    """A `config.model` section: the preset's architecture plus numerics defaults (see WanConfig)."""
    if preset not in WAN_PRESETS:
        raise KeyError(f"unknown Wan preset {preset!r}; known: {sorted(WAN_PRESETS)}")
    values = dict(WAN_PRESETS[preset], cross_attn_norm=True, eps=1e-6, rope_max_seq_len=1024,
                  dtype="float32", param_dtype="float32", attention="auto", remat="none", scan_layers=True)
    values.update(overrides)
    return ml_collections.ConfigDict(values)
