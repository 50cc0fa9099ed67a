"""Benchmark script: the analytic FLOP count against XLA's, and one CPU run of every section (1 timed step)
whose tables and JSON carry the fields a GPU run is read for.

FLOP cross-check tolerances (tiny configs, layers unrolled because XLA counts a scanned layer once):
  * matmul FLOPs of the lowered HLO (every `dot`)          == analytic computed count, relative 1e-6
  * matmul FLOPs of the compiled (optimised) HLO           within 1% (XLA folds a few constant products)
  * XLA cost_analysis()['flops'] of the compiled forward   1.00–1.15 × analytic (it adds norms, RoPE, softmax,
    activations, adaLN: ~10% at width 48, ~2% at width 256, shrinking with width)
  * train step matmuls (lowered)                           2.95–3.0 × forward (no gradient for the input latents)
"""

import dataclasses
import io
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import pytest

from wam_jax.tools import bench
from wam_jax.config import load_config
from wam_jax.models import wam as wam_lib
from wam_jax.models.wan_dit import WanTransformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")
WIDE = ["model.num_attention_heads=4", "model.attention_head_dim=64", "model.ffn_dim=1024"]


def _configs(overrides=()):
    return wam_lib.build_configs(load_config(TINY, list(overrides)))


@pytest.mark.parametrize("layout", ["inverse_dynamics", "joint", "history_only"])
@pytest.mark.parametrize("streams,chunks", [(1, 1), (1, 3), (2, 3), (2, 4)])
def test_visible_pairs_equal_the_token_layout_mask(streams, chunks, layout):
    tokens = wam_lib.TokenLayout(streams, chunks, video_tokens=8, action_tokens=3, layout=layout)
    assert bench.visible_pairs(streams, chunks, tokens.per_chunk, 3, layout) == int(tokens.self_mask().sum())


@pytest.mark.parametrize("overrides,guidance,streams,past,cost_tol", [
    ([], False, 2, 0, 0.15),                 # teacher forcing, no guidance (one zero context token)
    (WIDE, True, 2, 0, 0.03),                # wider model: elementwise share shrinks
    ([], True, 1, 40, 0.15),                 # rollout evaluation: one chunk + a 40-slot KV cache
])
def test_forward_flops_match_xla(overrides, guidance, streams, past, cost_tol):
    wan, wam = _configs(overrides)
    ours = bench.model_flops(wan, wam, 2, streams, 3 if past == 0 else 1, guidance=guidance, past_tokens=past,
                             attention="computed")
    xla = bench.xla_forward_flops(wan, wam, 2, streams, 3 if past == 0 else 1, guidance, past_tokens=past)
    assert xla["dots_lowered"] == pytest.approx(ours, rel=1e-6)
    assert xla["dots_compiled"] == pytest.approx(ours, rel=1e-2)
    assert 1.0 <= xla["cost_analysis"] / ours <= 1.0 + cost_tol
    # The masked count drops only attention pairs the mask forbids.
    masked = bench.flop_breakdown(wan, wam, 2, streams, 3, guidance=guidance)
    dense = bench.flop_breakdown(wan, wam, 2, streams, 3, guidance=guidance, attention="dense")
    assert masked["self-attn QK^T,PV"] < dense["self-attn QK^T,PV"]
    assert all(masked[k] == dense[k] for k in masked if "QK^T" not in k)


def test_video_only_wan_flops_match_xla():
    wan, _ = _configs()
    wan = dataclasses.replace(wan, scan_layers=False)
    model = WanTransformer(wan)
    shapes = (jax.ShapeDtypeStruct((2, 6, 4, 4, wan.in_channels), jnp.float32),
              jax.ShapeDtypeStruct((2,), jnp.float32), jax.ShapeDtypeStruct((2, 3, wan.text_dim), jnp.float32))
    params = jax.eval_shape(lambda r: model.init(r, *[jnp.zeros((1,) + s.shape[1:]) for s in shapes])["params"],
                            jax.random.key(0))
    lowered = jax.jit(lambda p, *x: model.apply({"params": p}, *x)).lower(params, *shapes)
    ours = bench.wan_video_flops(wan, 2, 6, 4, 4, 3)
    assert bench.hlo_dot_flops(lowered.compiler_ir("hlo").as_hlo_text()) == pytest.approx(ours, rel=1e-6)
    assert 1.0 <= bench.xla_cost_flops(lowered.compile()) / ours <= 1.15


def test_train_step_is_three_forwards():
    config = load_config(TINY, ["model.scan_layers=False"])
    wan, wam = wam_lib.build_configs(config)
    with tempfile.TemporaryDirectory() as workdir:
        trainer = bench._make_trainer(config, workdir)
        batch = trainer.device_batch(bench.synthetic_raw_batch(config, wan, wam, 4))
        lowered = trainer._step_fn.lower(trainer.abstract_state, batch)
        trainer.checkpoints.close()
    step = bench.hlo_dot_flops(lowered.compiler_ir("hlo").as_hlo_text())
    forward = bench.model_flops(wan, wam, 4, 2, config.chunks, guidance=False, attention="computed")
    assert 2.95 <= step / forward <= 3.0


def test_peak_lookup():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", None)[0] == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.0
    assert bench.peak_tflops("NVIDIA H200", None)[0] == 989.0
    assert bench.peak_tflops("cpu", None)[0] is None
    assert bench.peak_tflops("cpu", 1.5) == (1.5, "--peak-tflops")


def _run(tmp_path, what, *extra):
    path = tmp_path / "bench.json"
    out = io.StringIO()
    # One unrolled layer compiles fastest; the tables and fields do not depend on depth.
    argv = ["--config", TINY, "--set", "model.num_layers=1", "--set", "model.scan_layers=False", "--steps", "1",
            "--warmup", "1", "--what", what, "--json", str(path), *extra]
    bench.run(argv, out=out)
    text = out.getvalue()
    for field in ("wam-jax bench", "command : python -m wam_jax bench --config", "device  : cpu", "versions: jax",
                  "FLOPs (GFLOP"):
        assert field in text, field
    res = json.loads(path.read_text())
    assert res["meta"]["command"] == "python -m wam_jax bench " + " ".join(argv)
    assert res["meta"]["jax"] == jax.__version__ and res["meta"]["date"] and res["meta"]["device_kind"] == "cpu"
    return text, res


def test_train_and_input_sections(tmp_path):
    text, res = _run(tmp_path, "train,input", "--peak-tflops", "1", "--xla-flops")
    for field in ("Train step", "Input pipeline", "MFU", "tokens/s", "input share", "XLA, forward"):
        assert field in text, field
    flops = res["flops"]
    assert flops["train_step_masked"] == pytest.approx(3 * flops["forward_masked"])
    # XLA's grouped attention computes only the masked pairs; its cost analysis adds the elementwise work.
    assert flops["forward_masked"] < flops["forward_dense"]
    assert flops["forward_masked"] <= flops["xla_forward"]["cost_analysis"]
    train = res["train"]
    assert train["step"]["n"] == 1 and train["step"]["median_s"] > 0
    assert train["tokens_per_s"] == pytest.approx(4 * 96 / train["step"]["median_s"])
    assert train["mfu"] == pytest.approx(train["tflops_masked"] / 1.0)       # --peak-tflops 1
    assert train["device_memory"] is None                                     # CPU has no allocator stats
    assert train["compiled_memory"]["temp_size_in_bytes"] > 0
    assert 0.0 <= res["input"]["serial_share"] <= 1.0 and res["input"]["source"] == "synthetic"


def test_rollout_and_torch_sections(tmp_path):
    text, res = _run(tmp_path, "rollout,torch", "--torch-threads", "1")
    for field in ("Rollout latency per chunk", "KV memory", "PyTorch vs JAX", "video denoising", "action denoising",
                  "cache update", "guidance", "reduction", "ratio"):
        assert field in text, field
    assert "train" not in res
    roll = res["rollout"]
    for mode in ("full", "selective"):
        m = roll["modes"][mode]
        assert set(m["stages_s"]) == {"guidance", "video denoising", "action denoising", "cache update"}
        # The paper's sampler: 3 video + 10 action Euler evaluations.
        assert m["chunk_s"] > 0 and m["evaluations_per_chunk"] == 13 and m["timed_chunks"] == 1
    kv = roll["kv_memory"]
    assert kv["kv_chunks"] == 75 and kv["full_tokens"] == 75 * 16 and kv["selective_tokens"] == 64
    assert kv["reduction"] == pytest.approx(75 * 16 / 64)
    assert roll["modes"]["selective"]["allocated_bytes"] == kv["selective_bytes"]
    torch_res = res["torch"]
    assert "skipped" not in torch_res, torch_res.get("skipped")
    assert torch_res["jax"]["forward_s"] > 0 and torch_res["torch"]["forward_backward_s"] > 0
    assert torch_res["ratio_forward"] == pytest.approx(torch_res["torch"]["forward_s"] / torch_res["jax"]["forward_s"])


def test_cli_rejects_unknown_section():
    with pytest.raises(SystemExit, match="unknown section"):
        bench.run(["--config", TINY, "--what", "train,nope"], out=io.StringIO())


def test_memory_section(tmp_path):
    """Commit time per pool for three sizes (the growth exponent is fitted and printed), the latency split and
    KV bytes at 75 chunks for full / fifo / selective."""
    text, res = _run(tmp_path, "memory", "--memory-budgets", "64,1024,4096")
    for field in ("KV commit per pool", "growth exponent", "Rollout latency per chunk by memory mode",
                  "video denoising", "action denoising", "cache update", "KV memory at 75 chunks", "reduction",
                  "3.07 GB"):
        assert field in text, field
    mem = res["memory"]
    assert mem["pool_commit"]["budgets"] == [64, 1024, 4096]
    for mode in ("full", "fifo", "selective"):
        assert len(mem["pool_commit"]["seconds"][mode]) == 3 and min(mem["pool_commit"]["seconds"][mode]) > 0
        assert mem["pool_commit"]["exponent"][mode]["all"] is not None
        lat = mem["latency"][mode]
        assert {"guidance", "video denoising", "action denoising", "cache update"} <= set(lat["stages_s"])
        assert lat["commit_compiled"]["temp_size_in_bytes"] >= 0
    kv = mem["kv_bytes"]                      # tiny: 8 + 8 tokens per chunk, budgets 32 + 32, 1 layer, 2 x 24 f32
    assert kv["full"]["tokens"] == 75 * 16 and kv["selective"]["tokens"] == kv["fifo"]["tokens"] == 64
    assert kv["full"]["bytes"] == 75 * 16 * 2 * 48 * 4
    assert kv["selective"]["reduction"] == pytest.approx(75 * 16 / 64)
