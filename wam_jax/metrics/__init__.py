"""wam_jax.metrics"""
