"""wam-jax: DriveWAM world-action models for autonomous driving in JAX/Flax."""

__version__ = "0.1.0"
