"""Evaluation: closed-loop episodes in the simulator and the eval command; scores come from wam_jax.metrics."""
