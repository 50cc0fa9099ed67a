"""DriveWAM training: joint flow matching, AdamW + warmup/cosine, clipping, EMA, Orbax checkpoints that resume
to the exact step, optimizer state and data position.

    python -m wam_jax train --config experiments/drivewam_tiny.py[:args] [--workdir DIR] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from wam_jax import checkpoint as ckpt
from wam_jax import cli as wam_cli
from wam_jax import sharding
from wam_jax.config import ConfigError, dataclass_from_config
from wam_jax.data import BatchIterator, make_iterator, prepare_batch
from wam_jax.experiment import Experiment
from wam_jax.models import wam as wam_lib
from wam_jax.training.objective import flow_matching_loss


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float = 1e-4
    warmup_steps: int = 0
    end_lr_ratio: float = 0.1        # cosine decays to lr · end_lr_ratio at `steps`
    lr_halve_at: tuple[int, ...] = ()  # instead of the cosine: constant lr after warmup, halved at these steps
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    clip_norm: float = 1.0
    ema_decay: float = 0.999
    freeze: tuple[str, ...] = ()     # top-level param groups kept fixed, e.g. ("blocks",) or wam.WAN_PARAM_GROUPS
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    log_every: int = 10
    # EMA and Adam moments (3 of the 4 parameter-sized state copies) wait in host memory (pinned_host) between
    # steps and visit the accelerator for the update only: HBM then holds parameters, gradients and activations
    # (docs/SCALING.md: what fits the Wan-14B-size DriveWAM on 8 v5p chips). Same numbers, slower steps.
    offload_state: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"config.train.{name}={value!r} must be an integer >= 1")
        if self.warmup_steps < 0 or self.lr <= 0:
            raise ConfigError(f"config.train needs lr > 0 and warmup_steps >= 0 (lr={self.lr}, "
                              f"warmup_steps={self.warmup_steps})")

    @classmethod
    def from_config(cls, values) -> "TrainConfig":
        return dataclass_from_config(cls, values, "config.train")


def learning_rate_schedule(tc: TrainConfig) -> optax.Schedule:
    if tc.lr_halve_at:
        # join_schedules counts the second schedule's steps from the warmup's end.
        steps = optax.piecewise_constant_schedule(tc.lr, {int(s) - tc.warmup_steps: 0.5 for s in tc.lr_halve_at})
        if not tc.warmup_steps:
            return steps
        return optax.join_schedules([optax.linear_schedule(0.0, tc.lr, tc.warmup_steps), steps], [tc.warmup_steps])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if tc.warmup_steps else tc.lr, peak_value=tc.lr, warmup_steps=tc.warmup_steps,
        decay_steps=max(tc.steps, tc.warmup_steps + 1), end_value=tc.lr * tc.end_lr_ratio)


def param_labels(params, freeze: tuple[str, ...]):
    known = set(params)
    unknown = sorted(set(freeze) - known)
    if unknown:
        raise ConfigError(f"train.freeze names unknown param group(s) {unknown}; groups: {sorted(known)}")
    return {group: jax.tree.map(lambda _: "frozen" if group in freeze else "train", sub)
            for group, sub in params.items()}


def make_optimizer(tc: TrainConfig, params) -> optax.GradientTransformation:
    # Weight decay on dense kernels only: not on biases, norm scales or adaLN modulation tables.
    decay_mask = jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)
    adamw = optax.chain(
        optax.clip_by_global_norm(tc.clip_norm),
        optax.adamw(learning_rate_schedule(tc), b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=decay_mask))
    return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, param_labels(params, tc.freeze))


class Trainer:
    """Owns the model, mesh, jitted step and checkpoints of one run. `run()` trains to `train.steps`."""

    def __init__(self, config, workdir: str, data: BatchIterator | None = None, guidance_table=None,
                 devices=None):
        from data_pipelines import prepare
        config = prepare.complete_config(config)     # action statistics / PCA basis left to the dataset
        self.config, self.workdir = config, os.path.abspath(workdir)
        self.experiment = Experiment(config)
        self.wan, self.wam = self.experiment.wan, self.experiment.wam
        self.flow, self.tc = self.experiment.flow, self.experiment.train
        self.action_norm = self.experiment.action_norm
        self.model = wam_lib.DriveWAM(self.wan, self.wam)
        self.mesh = sharding.make_mesh(dict(config.mesh), devices)   # devices: e.g. a TPU topology (compile-check)
        batch_ways = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if self.tc.batch_size % batch_ways:
            raise ConfigError(f"train.batch_size={self.tc.batch_size} is not divisible by the data×fsdp mesh size "
                              f"{batch_ways} (mesh {dict(self.mesh.shape)})")
        self.data = data if data is not None else make_iterator(config, jax.process_index(), jax.process_count())
        self.guidance_table = self.experiment.intent_table if guidance_table is None else guidance_table

        boxed = wam_lib.abstract_params(self.wan, self.wam)
        shapes = nn.unbox(boxed)
        self.param_shardings = sharding.fit_shardings(sharding.mesh_shardings(boxed, self.mesh), shapes)
        self.optimizer = make_optimizer(self.tc, shapes)
        abstract_opt = jax.eval_shape(self.optimizer.init, shapes)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        # Optimizer moments follow their parameters (matched by key path and shape); counters are replicated.
        opt_shardings = sharding.follow_params(abstract_opt, shapes, self.param_shardings, self.mesh)
        self._device_shardings = (self.param_shardings, opt_shardings)     # where the update computes them
        stored = (lambda tree: jax.tree.map(lambda sh: sh.with_memory_kind("pinned_host"), tree)) \
            if self.tc.offload_state else (lambda tree: tree)
        self.state_shardings = TrainState(step=replicated, params=self.param_shardings,
                                          ema_params=stored(self.param_shardings), opt_state=stored(opt_shardings))
        self.abstract_state = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=shapes, ema_params=shapes,
                       opt_state=abstract_opt), self.state_shardings)
        self._step_fn = self._build_step()
        self.train_step = self._step_fn     # the jitted step (public: compile-check lowers exactly this)
        self.checkpoints = ckpt.RunCheckpoints(self.workdir, self.tc.keep_checkpoints, self.tc.async_checkpoints,
                                               primary=jax.process_index() == 0)

    # ----- state -------------------------------------------------------------------------------------------
    def _initial_params(self):
        rng = jax.random.key(self.config.seed)
        init = jax.jit(lambda r: nn.unbox(self.model.init(r, *wam_lib.dummy_inputs(self.wan, self.wam))["params"]),
                       out_shardings=self.param_shardings)
        params = init(rng)
        if self.config.init == "wan":
            from wam_jax.interop.wan_import import load_wan
            path = self.config.init_checkpoint
            if not path or not os.path.isdir(path):
                raise FileNotFoundError(f"config.init='wan' needs config.init_checkpoint to be a checkpoint made by "
                                        f"`python -m wam_jax import-wan`; got {path!r}")
            _, wan_params = load_wan(path)
            params = jax.device_put(wam_lib.merge_pretrained_wan(jax.device_get(params), wan_params),
                                    self.param_shardings)
        elif self.config.init != "scratch":
            raise ConfigError(f"config.init={self.config.init!r} unknown; choose 'scratch' or 'wan'")
        return params

    def initial_state(self) -> TrainState:
        params = self._initial_params()
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)(params)
        step = jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=self.state_shardings.step)()
        return TrainState(step=step, params=params, opt_state=opt_state,
                          ema_params=jax.device_put(jax.tree.map(jnp.copy, params), self.state_shardings.ema_params))

    def restore_or_init(self) -> TrainState:
        """The newest intact checkpoint (a corrupt newer step is reported and skipped), else a fresh state."""
        restored = self.checkpoints.restore_latest(self.abstract_state)
        if restored is None:
            return self.initial_state()
        step, state, position = restored
        self.data.set_state(sharding.pick_host_state(position))     # this process's position
        print(f"resumed from step {step} ({self.workdir}/checkpoints)", flush=True)
        return state

    def save(self, state: TrainState, force: bool = False):
        self.checkpoints.save_step(int(state.step), state, sharding.gather_host_states(self.data.get_state()),
                                   force=force)

    # ----- step --------------------------------------------------------------------------------------------
    def apply(self, params, video, actions, t_video, t_action, guidance, ego=None, blocks=None):
        with sharding.activation_context(self.mesh):     # rules + mesh: activation constraints apply
            return self.model.apply({"params": params}, video, actions, t_video, t_action, guidance, ego=ego,
                                    blocks=blocks)

    def _build_step(self):
        tc, flow, frames = self.tc, self.flow, self.wam.latent_frames_per_chunk
        schedule = learning_rate_schedule(tc)
        frozen = set(tc.freeze)
        base_rng = jax.random.key(self.config.seed + 1)

        def step_fn(state: TrainState, batch):
            rng = jax.random.fold_in(base_rng, state.step)
            if tc.offload_state:        # host → accelerator for the update (out_shardings put them back)
                ema_on, opt_on = self._device_shardings
                state = state.replace(ema_params=jax.device_put(state.ema_params, ema_on),
                                      opt_state=jax.device_put(state.opt_state, opt_on))

            def loss_fn(params):
                params = {g: (jax.lax.stop_gradient(p) if g in frozen else p) for g, p in params.items()}
                return flow_matching_loss(self.apply, params, batch, rng, flow, frames)

            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            grad_norm = optax.tree.norm(grads)
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = jax.tree.map(lambda e, p: e + (1.0 - tc.ema_decay) * (p - e), state.ema_params, params)
            ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            candidate = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
            # A non-finite step leaves the state untouched; the host then stops with the last good checkpoint.
            new_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), candidate, state)
            metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state.step), finite=ok)
            return new_state, metrics

        batch_sharding = lambda x: sharding.batch_sharding(self.mesh, x.ndim)
        self._batch_sharding = batch_sharding
        return jax.jit(step_fn, in_shardings=(self.state_shardings, None), out_shardings=(self.state_shardings, None),
                       donate_argnums=(0,))

    def device_batch(self, raw):
        batch = prepare_batch(raw, self.config, self.action_norm, self.guidance_table)
        return {k: jax.make_array_from_process_local_data(self._batch_sharding(v), v) for k, v in batch.items()}

    # ----- loop --------------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> TrainState:
        """Trains until `train.steps` (or, for tests that simulate a kill, until `stop_after` steps).

        Holds WORKDIR/LOCK throughout (process 0); writes WORKDIR/config.json once the checkpoint (if any) has
        restored against this config; closes the data iterator (and its worker processes) on every exit."""
        lock = ckpt.WorkdirLock(self.workdir).acquire() if jax.process_index() == 0 else None
        try:
            return self._run(stop_after)
        finally:
            close = getattr(self.data, "close", None)
            if close is not None:
                close()
            if lock is not None:
                lock.release()

    def _run(self, stop_after: int | None) -> TrainState:
        from tqdm import tqdm
        state = self.restore_or_init()
        if jax.process_index() == 0:
            ckpt.write_run_config(self.workdir, self.config)
        start = int(state.step)
        end = self.tc.steps if stop_after is None else min(self.tc.steps, stop_after)
        if start >= end and jax.process_index() == 0:
            print(f"nothing to train: the checkpoint is at step {start} and train.steps={self.tc.steps}; raise "
                  "train.steps to continue training", flush=True)
        writer = _summary_writer(os.path.join(self.workdir, "tensorboard"))
        last_good = self.checkpoints.latest_step()
        bar = tqdm(total=end, initial=start, desc="train", disable=not sys.stderr.isatty() or jax.process_index())
        pending = None
        t_last, steps_since = time.perf_counter(), 0
        try:
            for step in range(start, end):
                batch = self.device_batch(next(self.data))
                state, metrics = self._step_fn(state, batch)
                pending = self._check(pending, last_good)
                pending = (step + 1, metrics)
                steps_since += 1
                bar.update(1)
                if (step + 1) % self.tc.log_every == 0 or step + 1 == end:
                    pending = self._check(pending, last_good)
                    now = time.perf_counter()
                    values = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
                    values["steps_per_sec"] = steps_since / max(now - t_last, 1e-9)
                    t_last, steps_since = now, 0
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
                    if bar.disable and jax.process_index() == 0:
                        print(f"step {step + 1}/{end} " + " ".join(f"{k}={v:.4g}" for k, v in values.items()),
                              flush=True)
                    if writer is not None:
                        for k, v in values.items():
                            writer.add_scalar(f"train/{k}", v, step + 1)
                    self.checkpoints.check_for_errors()      # a failed async save stops training now
                if (step + 1) % self.tc.checkpoint_every == 0 or step + 1 == end:
                    pending = self._check(pending, last_good)
                    self.save(state, force=True)
                    last_good = step + 1
        finally:
            bar.close()
            self.checkpoints.finish()
            if writer is not None:
                writer.close()
            report = getattr(getattr(self.data, "_pipeline", None), "skip_report", None)
            if report is not None and self.data._pipeline.num_skipped and jax.process_index() == 0:
                print(f"data: {report()}", flush=True)
        self._check(pending, last_good)
        return state

    def _check(self, pending, last_good):
        """Raises if the step recorded in `pending` was non-finite (read one step late to keep dispatch async)."""
        if pending is None:
            return None
        step, metrics = pending
        if not bool(metrics["finite"]):
            m = jax.device_get(metrics)
            self.checkpoints.wait_until_finished()
            where = (f"the last good checkpoint is step {last_good} in {self.workdir}/checkpoints" if last_good
                     else "no checkpoint had been written yet")
            raise NonFiniteLossError(f"non-finite training signal at step {step}: loss={float(m['loss'])}, "
                                     f"loss_video={float(m['loss_video'])}, loss_action={float(m['loss_action'])}, "
                                     f"grad_norm={float(m['grad_norm'])}; training stopped, {where}")
        return None


def _summary_writer(path: str):
    if jax.process_index() != 0:
        return None
    from tensorboardX import SummaryWriter
    return SummaryWriter(path)


def train(config, workdir: str, data: BatchIterator | None = None, stop_after: int | None = None) -> TrainState:
    return Trainer(config, workdir, data).run(stop_after)


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    wam_cli.add_config_args(parser, workdir=True)
    args = parser.parse_args(argv)
    if not args.config and not args.workdir:
        raise ConfigError("pass --config experiments/FILE.py[:args], or --workdir of a run to continue it with its "
                          "saved config.json")
    sharding.initialize_distributed()
    config = wam_cli.config_from_args(args, run_dir=args.workdir)
    workdir = args.workdir or wam_cli.default_workdir(args.config)
    try:
        train(config, workdir)      # WORKDIR/config.json is written once the run has validated
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"done: checkpoints in {os.path.join(workdir, 'checkpoints')}")
    return 0
