"""Wan video DiT (wan2.2-ti2v-5b) on its own: the architecture every DriveWAM experiment builds on.

Variants: `experiments/wan22_ti2v_5b.py:dtype=float32,remat=none`.
"""

from wam_jax.config import parse_arg
from wam_jax.models.presets import wan_model_config

import ml_collections


def get_config(arg=None):
    arg = parse_arg(arg, dtype="bfloat16", remat="dots")
    config = ml_collections.ConfigDict()
    config.model = wan_model_config("wan2.2-ti2v-5b", dtype=arg.dtype, remat=arg.remat)
    return config
