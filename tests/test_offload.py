"""Host offload, opt-in: `train.offload_state` (EMA and Adam moments in pinned host memory between steps) and
`model.remat=offload` (each block's input in host memory for the backward pass) compute exactly what the
default does; the offloaded state really lives in host memory and resumes from a checkpoint. (CPU lowers the
remat offload as a device placement; that it goes to host memory on TPU is checked in test_compile_check.py.)"""

import os

import jax
import numpy as np

from wam_jax.config import load_config
from wam_jax.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")
STEPS = ["train.steps=2", "train.checkpoint_every=1", "train.log_every=100", "data.num_clips=2",
         "model.num_layers=1"]


def _equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _kinds(tree):
    return {leaf.sharding.memory_kind for leaf in jax.tree.leaves(tree)}


def test_offloaded_state_trains_the_same_and_resumes(tmp_path):
    plain = Trainer(load_config(TINY, STEPS), str(tmp_path / "plain")).run()
    offload = STEPS + ["train.offload_state=True"]
    first = Trainer(load_config(TINY, offload), str(tmp_path / "offload"))
    assert first.run(stop_after=1).step == 1
    del first
    resumed = Trainer(load_config(TINY, offload), str(tmp_path / "offload")).run()
    assert int(resumed.step) == int(plain.step) == 2
    assert _kinds(resumed.ema_params) == _kinds(resumed.opt_state) == {"pinned_host"}
    assert _kinds(resumed.params) == {"device"} == _kinds(plain.ema_params)
    for part in ("params", "ema_params", "opt_state"):
        assert _equal(getattr(plain, part), getattr(resumed, part)), part
    # the comparison can fail: a step changes the state
    assert not _equal(plain.opt_state, Trainer(load_config(TINY, STEPS), str(tmp_path / "x")).initial_state().opt_state)


def test_remat_offload_gives_the_gradients_of_no_remat(tmp_path):
    grads = {}
    for remat in ("none", "offload"):
        trainer = Trainer(load_config(TINY, STEPS + [f"model.remat={remat}"]), str(tmp_path / remat))
        state = trainer.initial_state()
        batch = trainer.device_batch(next(trainer.data))
        new_state, metrics = trainer.train_step(state, batch)
        grads[remat] = (float(metrics["loss"]), float(metrics["grad_norm"]), jax.device_get(new_state.params))
    assert grads["none"][0] == grads["offload"][0]
    np.testing.assert_allclose(grads["none"][1], grads["offload"][1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads["none"][2]), jax.tree.leaves(grads["offload"][2])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
