"""wam_jax.interop"""
