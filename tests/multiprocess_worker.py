"""One process of a multi-process CPU training run; tests/test_sharding.py launches two of these.

    JAX_COORDINATOR_ADDRESS=localhost:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0|1 \
    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
    python tests/multiprocess_worker.py WORKDIR '["train.steps=3", ...]'

Joins the run through `wam_jax.sharding.initialize_distributed()` (the explicit-variables path), trains with the
ordinary Trainer (each process feeds its rows of the global batch; Orbax writes the checkpoint cooperatively)
and prints one JSON line `RESULT {...}` describing what this process saw.
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv: list[str]) -> int:
    workdir, overrides = argv[0], json.loads(argv[1])
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from wam_jax import sharding
    from wam_jax.config import load_config
    from wam_jax.train import Trainer

    assert sharding.initialize_distributed(), "the environment did not describe a multi-process run"
    config = load_config(os.path.join(REPO, "experiments", "drivewam_tiny.py"), overrides)
    trainer = Trainer(config, workdir)
    first_rows = trainer.data._indices(0)[trainer.data._rows].tolist()
    step_fn, metrics = trainer._step_fn, []

    def recording_step(state, batch):
        state, m = step_fn(state, batch)
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
        return state, m

    trainer._step_fn = recording_step
    state = trainer.run()
    result = {"process_index": jax.process_index(), "process_count": jax.process_count(),
              "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
              "step": int(state.step), "data": trainer.data.get_state(), "first_rows": first_rows,
              "checkpoints": trainer.checkpoints.all_steps(),
              "metrics": metrics}
    print("RESULT " + json.dumps(result), flush=True)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
