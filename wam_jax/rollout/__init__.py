"""Rollout: chunk-by-chunk sampling with a KV cache and bounded (selective) memory (checkpoint → rollout)."""
