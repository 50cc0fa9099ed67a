"""One process of a multi-process CPU training run; tests/test_sharding.py launches two of these.

    JAX_COORDINATOR_ADDRESS=localhost:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0|1 \
    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
    python tests/multiprocess_worker.py WORKDIR '["train.steps=3", ...]'

Joins the run through `wam_jax.sharding.initialize_distributed()` (the explicit-variables path), trains with the
ordinary Trainer (each process feeds its rows of the global batch; Orbax writes the checkpoint cooperatively),
resumes from that checkpoint in the same processes, and prints one JSON line `RESULT {...}` describing what
this process saw.
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


class _Tagged:
    """A data iterator whose saved position also names its process (as a per-process Grain state would)."""

    def __init__(self, inner, rank: int):
        self.inner, self.rank, self.restored = inner, rank, None

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.inner)

    def get_state(self):
        return dict(self.inner.get_state(), process=self.rank)

    def set_state(self, state):
        self.restored = dict(state)
        self.inner.set_state(state)


def main(argv: list[str]) -> int:
    workdir, overrides = argv[0], json.loads(argv[1])
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from wam_jax import sharding
    from wam_jax.config import load_config
    from wam_jax.data import make_iterator
    from wam_jax.training.trainer import Trainer

    assert sharding.initialize_distributed(), "the environment did not describe a multi-process run"
    config = load_config(os.path.join(REPO, "experiments", "drivewam_tiny.py"), overrides)
    rank = jax.process_index()
    trainer = Trainer(config, workdir, data=_Tagged(make_iterator(config, rank, jax.process_count()), rank))
    first_rows = trainer.data.inner._indices(0)[trainer.data.inner._rows].tolist()
    step_fn, metrics = trainer._step_fn, []

    def recording_step(state, batch):
        state, m = step_fn(state, batch)
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
        return state, m

    trainer._step_fn = recording_step
    state = trainer.run()
    # Resume in the same processes: each must get back its own data position (Orbax writes JSON on process 0).
    resumed = Trainer(config, workdir, data=_Tagged(make_iterator(config, rank, jax.process_count()), rank))
    resumed.restore_or_init()
    result = {"process_index": rank, "process_count": jax.process_count(), "device_count": jax.device_count(),
              "local_device_count": jax.local_device_count(), "step": int(state.step),
              "data": trainer.data.get_state(), "resumed_data": resumed.data.restored, "first_rows": first_rows,
              "checkpoints": trainer.checkpoints.all_steps(), "metrics": metrics}
    print("RESULT " + json.dumps(result), flush=True)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
