"""Sequence (context) parallelism: the training step with the `sequence` mesh axis (8 fake CPU devices, from
tests/conftest.py) equals the 1-device step, and the compiled program really splits the sequence (all-to-all
between the length-split blocks and the head-split attention, as the rules table asks).

Tiny DriveWAM with 4 heads (so heads divide tensor × sequence = 4) and 2 streams × 2 chunks × 16 tokens = 64
tokens (divisible by every sequence size here). `train.b1=0` makes Adam's first moment the step's gradient.
"""

import os

import jax
import numpy as np
import pytest

from wam_jax.config import load_config
from wam_jax.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")
BASE = ["train.batch_size=4", "chunks=2", "train.warmup_steps=0", "train.lr=2e-4", "train.b1=0.0",
        "train.clip_norm=1e9", "data.num_clips=4", "model.num_attention_heads=4", "model.attention_head_dim=12",
        "model.num_layers=1", "model.attention=xla"]
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _step(mesh, workdir, initial):
    data, fsdp, tensor, seq = mesh
    config = load_config(TINY, BASE + [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}",
                                       f"mesh.sequence={seq}"])
    trainer = Trainer(config, str(workdir))
    state = jax.device_put(initial, trainer.state_shardings)
    batch = trainer.device_batch(next(trainer.data))
    lowered = trainer.train_step.lower(state, batch)
    compiled = lowered.compile(FAST_COMPILE)
    state, metrics = compiled(state, batch)
    mu = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
          if "mu" in jax.tree_util.keystr(path)]
    out = jax.device_get((metrics["loss"], mu))
    trainer.checkpoints.close()
    return out, compiled.as_text()


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    config = load_config(TINY, BASE)
    trainer = Trainer(config, str(tmp_path_factory.mktemp("init")))
    state = jax.device_get(trainer.initial_state())
    trainer.checkpoints.close()
    rng = np.random.default_rng(0)      # non-zero output heads: gradients everywhere
    params = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), state.params)
    return state.replace(params=params, ema_params=params)


def test_sequence_parallel_step_equals_one_device(initial, tmp_path):
    (ref_loss, ref_mu), _ = _step((1, 1, 1, 1), tmp_path / "one", initial)
    for mesh in [(2, 1, 1, 4)]:           # data × sequence on 8 devices (more meshes: minutes each)
        (loss, mu), hlo = _step(mesh, tmp_path / "x".join(map(str, mesh)), initial)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        for got, want in zip(mu, ref_mu):
            scale = max(float(np.abs(want).max()), 1e-30)
            assert float(np.abs(got - want).max()) / scale <= 1e-4
        assert "all-to-all" in hlo, f"mesh {mesh}: no all-to-all, the sequence is not split around attention"
