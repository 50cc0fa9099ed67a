"""compile-check: the tiny config's train step and rollout chunk step compiled ahead of time for a 4-chip v5p
topology by libtpu's compiler on this CPU machine (skipped where libtpu is not installed: CI installs `.[test]`,
and libtpu, ~700 MB, is the `tpu` extra), and the out-of-memory result parsed from the compiler's message."""

import io
import os

import pytest

from wam_jax.tools import compile_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")


def test_out_of_memory_compile_is_a_result():
    class Lowered:
        def compile(self):
            raise RuntimeError("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
                               "space hbm. Used 150.34G of 95.74G hbm. Exceeded hbm capacity by 54.60G.")
    res = compile_check._compile(lambda: Lowered(), 95.74 * compile_check.GIB)
    assert res["oom"] and res["fits"] is False
    assert res["total"] == pytest.approx(150.34 * 2 ** 30) and res["hbm"] == pytest.approx(95.74 * 2 ** 30)
    assert "OUT OF MEMORY" in compile_check.format_result("train", res)

    class Temporaries:
        def compile(self):
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                               "temporaries (97.18G) exceeds available HBM (95.74G).")
    res = compile_check._compile(lambda: Temporaries(), None)
    assert res["what"] == "temporaries" and res["total"] == pytest.approx(97.18 * 2 ** 30)

    class Broken:
        def compile(self):
            raise RuntimeError("INVALID_ARGUMENT: something else")
    with pytest.raises(RuntimeError, match="something else"):
        compile_check._compile(lambda: Broken(), None)


def test_tiny_config_compiles_for_a_v5p_topology():
    pytest.importorskip("libtpu")
    out = io.StringIO()
    res = compile_check.run(TINY, "v5p:2x2x1", overrides=["mesh.fsdp=-1", "model.num_layers=1"], out=out)
    assert res["chips"] == 4 and res["mesh"]["fsdp"] == 4 and res["batch"] == 4
    for what in ("train", "rollout"):
        r = res[what]
        assert r["fits"] is True and not r["oom"]
        assert 0 < r["argument"] and 0 < r["temporary"] and r["total"] < r["hbm"] == 95.74 * 2 ** 30
        assert r["splash_kernels"] > 0          # TPU target: attention runs the Pallas splash kernel
    text = out.getvalue()
    assert "train" in text and "rollout" in text and "fits" in text and "GiB" in text


def test_remat_offload_puts_block_inputs_in_tpu_host_memory(tmp_path):
    """model.remat=offload: the train step lowered for TPU moves each block's input to pinned host memory."""
    pytest.importorskip("libtpu")
    import jax
    import numpy as np
    from wam_jax import sharding
    from wam_jax.config import load_config
    from wam_jax.data import prepare_batch
    from wam_jax.tools.bench import synthetic_raw_batch
    from wam_jax.training.trainer import Trainer
    devices = compile_check.topology_devices("v5p:2x2x1")
    texts = {}
    for remat in ("full", "offload"):
        config = load_config(TINY, ["mesh.fsdp=-1", "model.num_layers=2", "train.batch_size=4",
                                    f"model.remat={remat}"])
        config.mesh = compile_check._resolve_mesh(dict(config.mesh), len(devices))
        trainer = Trainer(config, str(tmp_path / remat), data=compile_check._NoData(),
                          guidance_table=np.zeros((1,), np.float32), devices=devices)
        one = prepare_batch(synthetic_raw_batch(config, trainer.wan, trainer.wam, 1), config, trainer.action_norm,
                            trainer.guidance_table)
        batch = {k: jax.ShapeDtypeStruct((4,) + v.shape[1:], v.dtype,
                                         sharding=sharding.batch_sharding(trainer.mesh, v.ndim))
                 for k, v in one.items()}
        texts[remat] = trainer.train_step.lower(trainer.abstract_state, batch).as_text()
        trainer.checkpoints.close()
    assert "pinned_host" in texts["offload"] and "pinned_host" not in texts["full"]
