"""The on-disk format of an exported DriveWAM, shared by the JAX exporter/importer and the PyTorch module.

No JAX or torch here, so `wam_jax.interop.torch_drivewam` can import it without pulling in JAX.

    OUT/transformer/config.json                          diffusers WanTransformer3DModel config
    OUT/transformer/diffusion_pytorch_model.safetensors  (or -0000k-of-0000n shards + .index.json)
    OUT/drivewam/drivewam_config.json                    model/wam configs, action_norm, flow, dtype, source
    OUT/drivewam/drivewam_actions.safetensors            the DriveWAM-only tensors, names in ACTION_TENSORS
"""

from __future__ import annotations

FORMAT = "wam-jax/drivewam"
FORMAT_VERSION = 2    # 2: ego-state branch (per-block ego attention, ego MLP), MLP action decoder
TRANSFORMER_DIR = "transformer"
DRIVEWAM_DIR = "drivewam"
CONFIG_FILE = "drivewam_config.json"
ACTIONS_FILE = "drivewam_actions.safetensors"
WEIGHTS_STEM = "diffusion_pytorch_model"

# (torch name prefix, Flax path inside the DriveWAM params tree, kind) of the parameters DriveWAM adds to Wan.
# kind "linear": torch `<prefix>.weight` [out, in] + `<prefix>.bias` ↔ Flax kernel [in, out] + bias;
# kind "table": torch [1, 2, D] ↔ Flax [2, D] (the adaLN shift/scale table of the action head).
# The torch names are the state-dict keys of `wam_jax.interop.torch_drivewam.DriveWAMTorch` (minus "transformer.").
ACTION_TENSORS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("action_embed.linear_1", ("action_embed", "linear_1"), "linear"),
    ("action_embed.linear_2", ("action_embed", "linear_2"), "linear"),
    ("action_time.time_embedder.linear_1", ("action_time", "time_embedder_linear_1"), "linear"),
    ("action_time.time_embedder.linear_2", ("action_time", "time_embedder_linear_2"), "linear"),
    ("action_time.time_proj", ("action_time", "time_proj"), "linear"),
    ("action_head.scale_shift_table", ("action_head", "scale_shift_table"), "table"),
    ("action_head.linear_1", ("action_head", "linear_1"), "linear"),
    ("action_head.proj_out", ("action_head", "proj_out"), "linear"),
    ("ego_embed.linear_1", ("ego_embed", "linear_1"), "linear"),
    ("ego_embed.linear_2", ("ego_embed", "linear_2"), "linear"),
)

# Per block i: the ego-state cross-attention (torch `ego_blocks.{i}.<name>` ↔ Flax block `<path>`; kinds as above,
# "vector" a 1-D tensor). Not part of diffusers' Wan: stored in ACTIONS_FILE.
EGO_BLOCK_TENSORS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("norm.weight", ("norm_ego", "scale"), "vector"),
    ("norm.bias", ("norm_ego", "bias"), "vector"),
    ("attn.to_q", ("attn_ego", "to_q"), "linear"),
    ("attn.to_k", ("attn_ego", "to_k"), "linear"),
    ("attn.to_v", ("attn_ego", "to_v"), "linear"),
    ("attn.to_out.0", ("attn_ego", "to_out"), "linear"),
    ("attn.norm_q.weight", ("attn_ego", "norm_q", "scale"), "vector"),
    ("attn.norm_k.weight", ("attn_ego", "norm_k", "scale"), "vector"),
)


def action_tensor_names(num_layers: int) -> list[str]:
    """Every torch name stored in ACTIONS_FILE for a model of `num_layers` blocks."""
    names = []
    for prefix, _, kind in ACTION_TENSORS:
        names += [f"{prefix}.weight", f"{prefix}.bias"] if kind == "linear" else [prefix]
    for i in range(num_layers):
        for name, _, kind in EGO_BLOCK_TENSORS:
            prefix = f"ego_blocks.{i}.{name}"
            names += [f"{prefix}.weight", f"{prefix}.bias"] if kind == "linear" else [prefix]
    return names
