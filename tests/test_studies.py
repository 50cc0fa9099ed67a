"""The paper's studies (wam_jax/studies/paper.py) and the mechanisms their variants add: fixed-prompt guidance,
action-free video pretraining, the Wan part of a run as `init=wan`, the table over seeds, the worker queue, and
one study end to end at smoke size."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import drivewam_tiny
from wam_jax import guidance as g
from wam_jax.studies import paper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------ fixed prompt

def test_fixed_prompt_guidance_is_one_embedding_for_every_chunk():
    from wam_jax.actions import ActionNorm
    from wam_jax.data import prepare_batch
    c = drivewam_tiny.get_config("guidance=on")
    c.guidance = dict(enabled=True, source="fixed", fixed_prompt="drive on")
    table = g.intent_table(c)
    scene = g.intent_table(drivewam_tiny.get_config("guidance=on"))
    assert table.shape == scene.shape
    np.testing.assert_array_equal(table, np.broadcast_to(g.make_encoder(c.guidance, 32, 1).encode(["drive on"]),
                                                         table.shape))
    source = g.make_source(c.guidance)
    assert source.intents(None, {"intent": ["keep lane", "change lane left"]}) == ["drive on", "drive on"]
    # The data's intent ids (or precomputed scene embeddings) do not reach the model: the prompt does.
    raw = {"latents": np.zeros((2, 4, 4, 4, 8), np.float32), "waypoints": np.zeros((2, 2, 8, 3), np.float32),
           "intent_ids": np.array([[0, 1], [2, 3]]), "guidance": np.ones((2, 2, 1, 32), np.float32)}
    norm = ActionNorm(np.zeros((8, 3)), np.ones((8, 3)))
    batch = prepare_batch(raw, c, norm, table)
    assert batch["guidance"].shape == (2, 2, 1, 32)
    for b in range(2):
        for n in range(2):
            np.testing.assert_array_equal(batch["guidance"][b, n], table[0])
    with pytest.raises(Exception, match="fixed_prompt"):
        g.make_source(dict(c.guidance, fixed_prompt="  "))


# ---------------------------------------------------------------------------------------- action-free pretraining

def test_action_free_loss_sees_no_actions_or_ego_and_is_the_video_loss():
    from wam_jax.training.objective import FlowConfig, flow_matching_loss
    seen = {}

    def apply_fn(params, video, actions, t_video, t_action, guidance, ego):
        seen["actions"], seen["ego"] = actions, ego
        return video * 0.5, actions * 0.5 + 1.0, None

    rng = np.random.default_rng(0)
    batch = {"latents": jnp.asarray(rng.standard_normal((2, 4, 2, 2, 3)), jnp.float32),
             "actions": jnp.asarray(rng.standard_normal((2, 2, 4, 3)), jnp.float32),
             "ego": jnp.asarray(rng.standard_normal((2, 2, 3)), jnp.float32)}
    free = FlowConfig(action_free=True, action_weight=2.0)
    loss, metrics = flow_matching_loss(apply_fn, None, batch, jax.random.key(0), free, 2)
    assert float(jnp.abs(seen["actions"][:, 0]).max()) == 0.0          # the clean (history) copy is zeros
    assert float(jnp.abs(seen["ego"]).max()) == 0.0
    assert float(loss) == pytest.approx(float(metrics["loss_video"]))
    other = dict(batch, actions=batch["actions"] * 7.0, ego=batch["ego"] + 3.0)
    loss2, _ = flow_matching_loss(apply_fn, None, other, jax.random.key(0), free, 2)
    assert float(loss2) == float(loss)
    full, _ = flow_matching_loss(apply_fn, None, batch, jax.random.key(0), FlowConfig(action_weight=2.0), 2)
    assert float(full) != float(loss)                                   # the flag changes what is trained


def test_wan_part_of_a_run_initialises_a_drivewam(tmp_path):
    from wam_jax.interop.wan_import import load_wan, save_wan_part
    from wam_jax.models import wam as wam_lib
    wan, wam = wam_lib.build_configs(drivewam_tiny.get_config())
    trained = jax.tree.map(lambda x: x + 0.25, wam_lib.init_params(wan, wam, jax.random.key(0)))
    save_wan_part(trained, wan, str(tmp_path / "wan"), "test")
    loaded_cfg, wan_params = load_wan(str(tmp_path / "wan"))
    assert loaded_cfg.num_layers == wan.num_layers and set(wan_params) == set(wam_lib.WAN_PARAM_GROUPS)
    fresh = wam_lib.init_params(wan, wam, jax.random.key(5))
    merged = wam_lib.merge_pretrained_wan(fresh, wan_params)
    for group in wam_lib.WAN_PARAM_GROUPS:           # the pretrained Wan part ...
        jax.tree.map(np.testing.assert_array_equal, wam_lib.without_ego(merged[group]),
                     wam_lib.without_ego(trained[group]))
    jax.tree.map(np.testing.assert_array_equal, wam_lib.ego_only(merged["blocks"]), wam_lib.ego_only(fresh["blocks"]))
    for group in ("action_embed", "action_head"):    # ... and fresh action parts
        jax.tree.map(np.testing.assert_array_equal, merged[group], fresh[group])


# ----------------------------------------------------------------------------------------------------- the table

def _record(variant, seed, ade, clips=40, total=100.0):
    return {"variant": variant, "label": variant, "seed": seed, "clips": clips, "plan_ade_m": ade,
            "plan_fde_m": 2 * ade, "model_mean_mse_1s": 1.0, "model_mean_mse_4s": 1.1, "cv_ade_m": 1.5,
            "cv_fde_m": 3.0, "copy_last_mse_1s": 0.9, "copy_last_mse_4s": 1.4, "pairs": 48,
            "wall_s": {"total_s": total}}


def test_collect_reports_mean_and_sample_sd_over_seeds(tmp_path):
    ades = {"base": [0.8, 1.0, 1.2], "no_video_supervision": [1.5, 1.7, 1.6], "clips_10": [2.0, 2.2, 2.4]}
    for variant, values in ades.items():
        for seed, ade in enumerate(values):
            target = tmp_path / "runs" / variant / f"seed{seed}"
            target.mkdir(parents=True)
            clips = 10 if variant == "clips_10" else 40
            (target / "result.json").write_text(json.dumps(_record(variant, seed, ade, clips)))
    table = paper.collect(str(tmp_path)).splitlines()
    row = lambda study, label: next(line for line in table if line.startswith(study) and label in line)
    sd = np.std([0.8, 1.0, 1.2], ddof=1)
    assert f"1.000 ± {sd:.3f}" in row("video_supervision", "video supervision on")
    assert "1.600 ± 0.100" in row("video_supervision", "video supervision off")
    assert "0,1,2" in row("guidance", "scene-evolving")
    assert "2.200 ± 0.200" in row("data_scaling", "10 clips") and "1.000" in row("data_scaling", "40 clips")
    assert not any(line.startswith("pretraining  ") and "video-pretrained" in line for line in table)
    assert any("constant velocity ADE@4s 1.500" in line for line in table)
    assert "no study results" in paper.collect(str(tmp_path / "empty"))


def test_data_scaling_rows_follow_the_sizes_and_the_largest_is_the_base():
    assert paper.study_rows("data_scaling", (5, 10, 20)) == [("5 clips", "clips_5", 1.01),
                                                           ("10 clips", "clips_10", 0.94), ("20 clips", "base", 0.83)]
    assert paper.variant("clips_7").clips == 7 and paper.variant("base").clips is None
    assert set(paper.study_variants("all")) == {"base", "no_video_supervision", "video_pretrained", "fixed_prompt",
                                                "clips_10", "clips_20"}
    with pytest.raises(KeyError):
        paper.variant("sideways")
    with pytest.raises(SystemExit, match="unknown study"):
        paper.study_variants("sideways")


def test_claim_takes_unclaimed_or_orphaned_runs_only(tmp_path):
    assert paper.claim(str(tmp_path / "a")) and paper.claim(str(tmp_path / "a"))       # ours: still ours
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "CLAIM").write_text(str(os.getppid()))                           # a live claimer
    assert not paper.claim(str(tmp_path / "b"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "CLAIM").write_text(str(dead.pid))                               # its claimer exited
    assert paper.claim(str(tmp_path / "c"))
    assert (tmp_path / "c" / "CLAIM").read_text() == str(os.getpid())


# ------------------------------------------------------------------------------------------------- end to end

SMOKE = ["model.num_layers=1", "model.num_attention_heads=2", "model.ffn_dim=64", "train.batch_size=2",
         "dataset.num_chunks=2", "sim.vehicles=8"]


def test_pretraining_study_end_to_end_at_smoke_size(tmp_path):
    """Data, an action-free pretraining run, its Wan part into the fine-tuned DriveWAM, scoring and the table."""
    out = tmp_path / "studies"
    cmd = [sys.executable, "-m", "wam_jax.studies", "run", "--study", "pretraining", "--out", str(out),
           "--seeds", "0", "--steps", "2", "--clips", "2", "--heldout-clips", "1"]
    cmd += [x for o in SMOKE for x in ("--set", o)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    pre = json.loads((out / "runs" / "video_pretrained" / "seed0" / "result.json").read_text())
    base = json.loads((out / "runs" / "base" / "seed0" / "result.json").read_text())
    assert pre["steps"] == 2 and pre["pairs"] == 1 and "pretrain_s" in pre["wall_s"]
    assert "init=wan" in pre["overrides"] and not any(o.startswith("init") for o in base["overrides"])
    assert np.isfinite([pre["plan_ade_m"], base["plan_ade_m"], pre["model_mse_4s"]]).all()
    meta = json.loads((out / "runs" / "video_pretrained" / "seed0" / "pretrained_wan" / "meta.json").read_text())
    assert meta["kind"] == "wan_transformer"
    saved = json.loads((out / "runs" / "video_pretrained" / "seed0" / "pretrain" / "config.json").read_text())
    assert saved["flow"]["action_free"] is True
    assert "video-pretrained" in result.stdout and "from scratch" in result.stdout
    # Scoring again with unchanged code reproduces every number and keeps the training times.
    again = subprocess.run([sys.executable, "-m", "wam_jax.studies", "rescore", "--out", str(out)],
                           capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr[-4000:]
    redo = json.loads((out / "runs" / "video_pretrained" / "seed0" / "result.json").read_text())
    for key in ("plan_ade_m", "plan_fde_m", "model_mse_4s", "model_mean_mse_1s", "copy_last_mse_4s"):
        assert redo[key] == pre[key], key
    assert redo["wall_s"]["train_s"] == pre["wall_s"]["train_s"]


def test_paper_config_ablations_use_the_same_mechanisms():
    from wam_jax.config import load_config
    off = load_config(os.path.join(REPO, "experiments", "drivewam_paper.py:guidance=fixed,video_supervision=off"))
    on = load_config(os.path.join(REPO, "experiments", "drivewam_paper.py"))
    assert (off.flow.video_weight, off.flow.layout) == (0.0, "history_only")
    assert (on.flow.video_weight, on.flow.layout) == (1.0, "inverse_dynamics")
    assert off.guidance.source == "fixed" and on.guidance.source == "vlm"
    assert paper.variant("no_video_supervision").overrides == ("flow.video_weight=0.0", "flow.layout=history_only")
