"""Wan video DiT (wan2.1-t2v-1.3b) on its own: the architecture every DriveWAM experiment builds on.

Variants: `experiments/wan21_t2v_1_3b.py:dtype=float32,remat=none`.
"""

from wam_jax.config import parse_arg
from wam_jax.models.presets import wan_model_config

import ml_collections


def get_config(arg=None):
    arg = parse_arg(arg, dtype="bfloat16", remat="dots")
    config = ml_collections.ConfigDict()
    config.model = wan_model_config("wan2.1-t2v-1.3b", dtype=arg.dtype, remat=arg.remat)
    return config
