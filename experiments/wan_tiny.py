"""Wan video DiT (tiny) on its own: the architecture every DriveWAM experiment builds on.

Variants: `experiments/wan_tiny.py:dtype=float32,remat=none`.
"""

from wam_jax.config import parse_arg
from wam_jax.models.presets import wan_model_config

import ml_collections


def get_config(arg=None):
    arg = parse_arg(arg, dtype="float32", remat="none")
    config = ml_collections.ConfigDict()
    config.model = wan_model_config("tiny", dtype=arg.dtype, remat=arg.remat)
    return config
