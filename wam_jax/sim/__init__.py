"""wam_jax.sim"""
