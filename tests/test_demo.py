"""`make demo` pipeline at smoke size: dataset → training → closed-loop table → imagination outputs (the studies:
tests/test_studies.py)."""

import json
import os
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_pipeline_smoke(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "wam_jax", "demo", "--out", str(out), "--episodes", "1",
           "--config", "experiments/drivewam_highway.py:clips=3,steps=6,layers=1",
           "--set", "train.log_every=3", "--set", "train.batch_size=2",
           "--set", "model.num_attention_heads=2", "--set", "model.ffn_dim=64", "--set", "closed_loop.episode_s=3", "--set", "dataset.num_chunks=3"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    for planner in ("expert", "constant_velocity", "idm_lane_keep", "drivewam"):
        assert planner in result.stdout
    for row in ("model_mean", "copy_last", "codec", "Open-loop plan of the next chunk", "Targets (issue 17)",
                "imagination PSNR @4s > copy-last-frame", "off-road <= 0.1"):
        assert row in result.stdout, row
    imagination = json.loads((out / "imagination.json").read_text())
    assert imagination["offsets_s"] == [1.0, 2.0, 3.0, 4.0]
    assert imagination["pairs"] == 4 * 2          # 4 held-out clips of 3 chunks
    for name in ("summary.txt", "real_vs_imagined.mp4", "real_vs_imagined.png", "imagination.json",
                 "eval/results.txt", "eval/results.json"):
        assert (out / name).exists(), name
    assert any(f.startswith("drivewam_seed") and f.endswith(".mp4") for f in os.listdir(out / "eval"))
