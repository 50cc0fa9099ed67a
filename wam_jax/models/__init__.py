"""wam_jax.models"""
