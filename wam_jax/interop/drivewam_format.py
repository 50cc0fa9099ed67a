"""The on-disk format of an exported DriveWAM, shared by the JAX exporter/importer and the PyTorch module.

No JAX or torch here, so `wam_jax.interop.torch_drivewam` can import it without pulling in JAX.

    OUT/transformer/config.json                          diffusers WanTransformer3DModel config
    OUT/transformer/diffusion_pytorch_model.safetensors  (or -0000k-of-0000n shards + .index.json)
    OUT/drivewam/drivewam_config.json                    model/wam configs, action_norm, flow, dtype, source
    OUT/drivewam/drivewam_actions.safetensors            the DriveWAM-only tensors, names in ACTION_TENSORS
"""

from __future__ import annotations

FORMAT = "wam-jax/drivewam"
FORMAT_VERSION = 1
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
    ("action_head.proj_out", ("action_head", "proj_out"), "linear"),
)


def action_tensor_names() -> list[str]:
    """Every torch name stored in ACTIONS_FILE."""
    names = []
    for prefix, _, kind in ACTION_TENSORS:
        names += [f"{prefix}.weight", f"{prefix}.bias"] if kind == "linear" else [prefix]
    return names
