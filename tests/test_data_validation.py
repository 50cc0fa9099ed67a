"""Data you can trust (issue 19): NaN/inf records named by file and record, `inspect` and `inspect --validate`
on damaged datasets, `build` refusing to reuse a dataset of other settings, leftover incomplete builds, the
skipped-record limit, and `prepare` fitting what `train` needs."""

import json
import os
import shutil

import numpy as np
import pytest

from data_pipelines import builders, fixtures, pipeline, prepare, schema
from data_pipelines.__main__ import main

NUM_CLIPS = 6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    fixtures.build_synthetic(str(root), num_shards=2, num_clips=NUM_CLIPS, num_chunks=2, n_wp=4)
    return str(root)


def _copy(data_dir, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(data_dir, dst)
    ds = pipeline.find_dataset_dir(dst)
    return dst, sorted(os.path.join(ds, f) for f in os.listdir(ds) if ".array_record-" in f)


def _rewrite_record(path, index, fn):
    import tensorflow_datasets as tfds
    from array_record.python import array_record_module
    features = tfds.builder_from_directory(os.path.dirname(path)).info.features
    reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
    raws = [reader.read([i])[0] for i in range(reader.num_records())]
    reader.close()
    clip = fn(schema.deserialize_clip(features.deserialize_example_np(raws[index])["clip"]))
    raws[index] = features.serialize_example({"clip": schema.serialize_clip(clip, validate=False),
                                              "source": clip.source, "clip_id": clip.clip_id})
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for raw in raws:
        writer.write(raw)
    writer.close()


def _nan_waypoint(clip):
    clip.waypoints = clip.waypoints.copy()
    clip.waypoints[1, 2, 0] = np.nan
    return clip


def test_non_finite_values_fail_validation_naming_the_field():
    clip = fixtures.synthetic_clip(0, 2, 2, 1, (8, 12), 4, (), (0, 0), (0, 0, 0))
    schema.validate_clip(clip)
    clip.ego_pose = clip.ego_pose.copy()
    clip.ego_pose[0, 1] = np.inf
    with pytest.raises(schema.RecordError, match=r"field 'ego_pose' has 1 non-finite value\(s\).*index \[0, 1\]"):
        schema.validate_clip(clip)


def test_nan_record_names_file_and_record_and_is_skipped_and_counted(data_dir, tmp_path):
    root, files = _copy(data_dir, tmp_path)
    _rewrite_record(files[0], 1, _nan_waypoint)
    with pytest.raises(schema.RecordError, match=r"record 1: field 'waypoints' has 1 non-finite") as info:
        list(pipeline.iter_clips(root, decode_frames=False))
    assert info.value.file == files[0]
    pipe = pipeline.make_pipeline(dict(data_dir=root, batch_size=2, shard_index=0, shard_count=1, num_epochs=1,
                                       drop_remainder=False, skip_bad_records=True))
    with pipe.iterator() as it:
        n = sum(len(b["waypoints"]) for b in it)
    assert n == NUM_CLIPS - 1 and pipe.skipped_records == {(files[0], 1)}
    # The limit on skipped records: with max_bad_records=0 ... unlimited; with 0 < limit < bad, reading stops.
    _rewrite_record(files[1], 0, _nan_waypoint)
    strict = pipeline.make_pipeline(dict(data_dir=root, batch_size=2, shard_index=0, shard_count=1, num_epochs=1,
                                         drop_remainder=False, skip_bad_records=True, max_bad_records=1))
    with pytest.raises(pipeline.PipelineError, match="more than max_bad_records=1 bad records"):
        with strict.iterator() as it:
            list(it)


def test_inspect_validate_counts_bad_records_by_kind(data_dir, tmp_path, capsys):
    assert main(["inspect", "--data", data_dir, "--validate"]) == 0
    assert f"validate: {NUM_CLIPS} good, 0 bad" in capsys.readouterr().out
    root, files = _copy(data_dir, tmp_path)
    _rewrite_record(files[0], 0, _nan_waypoint)
    assert main(["inspect", "--data", root, "--show", "0"]) == 0   # the summary alone reads no record ...
    capsys.readouterr()
    assert main(["inspect", "--data", root]) == 1                  # ... a shown bad record makes it fail
    assert "[0] BAD" in capsys.readouterr().out
    assert main(["inspect", "--data", root, "--validate"]) == 1    # ... --validate reads every record
    out = capsys.readouterr().out
    assert f"validate: {NUM_CLIPS - 1} good, 1 bad" in out and "1 non-finite values" in out
    with open(files[1], "r+b") as f:                               # truncate the second file
        f.truncate(os.path.getsize(files[1]) // 2)
    assert main(["inspect", "--data", root]) == 1                  # opening the files shows it without --validate
    assert "BAD file" in capsys.readouterr().out
    assert main(["inspect", "--data", root, "--validate"]) == 1
    assert "unreadable (truncated/corrupted)" in capsys.readouterr().out
    os.remove(files[1])                                            # half-deleted dataset
    assert main(["inspect", "--data", root]) == 1
    assert "file is missing" in capsys.readouterr().out


def test_build_refuses_other_settings_unless_overwrite_and_removes_leftovers(tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["build", "--source", "synthetic", "--out", out, "--clips", "3"]
    assert main(args) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(args) == 0                                         # same settings: reused
    assert main(["build", "--source", "synthetic", "--out", out, "--clips", "4"]) == 2
    err = capsys.readouterr().err
    assert "built with other settings (num_clips: built with 3, asked for 4)" in err and "--overwrite" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
    leftover = os.path.join(os.path.dirname(path), "incomplete.ABC123_1.0.0")
    os.makedirs(leftover)
    assert main(["build", "--source", "synthetic", "--out", out, "--clips", "4", "--overwrite"]) == 0
    assert len(list(pipeline.iter_clips(out, decode_frames=False))) == 4
    assert not os.path.exists(leftover)
    assert "Downloading and preparing" not in capsys.readouterr().out


def test_prepare_fits_action_statistics_and_train_config_picks_them_up(data_dir, tmp_path, capsys):
    from wam_jax.config import load_config
    root = str(tmp_path / "d")
    shutil.copytree(data_dir, root)
    assert main(["prepare", "--data", root, "--config", os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "experiments", "drivewam_tiny.py")]) == 0
    ds = pipeline.find_dataset_dir(root)
    # drivewam_tiny trains on increments: prepare fits the statistics of the representation the config uses.
    with open(os.path.join(ds, prepare.ACTION_NORM_FILE.replace(".json", "_increments.json"))) as f:
        stats = json.load(f)
    from wam_jax.actions import waypoints_to_increments
    waypoints = np.concatenate([c.waypoints for c in pipeline.iter_clips(root, decode_frames=False)]).astype(np.float64)
    increments = waypoints_to_increments(waypoints)
    np.testing.assert_allclose(stats["mean"], increments.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["std"], np.maximum(increments.std(0), prepare.ACTION_MIN_STD), rtol=1e-5)
    config = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                                      "drivewam_tiny.py"))
    with config.unlocked():
        config.action_norm.from_data = True
        config.data.data_dir = root
    prepare.complete_config(config)
    assert config.action_norm.mean == stats["mean"] and config.action_norm.from_data is False
    with pytest.raises(pipeline.PipelineError, match="data_dir is empty"):
        bare = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                                        "drivewam_tiny.py"))
        with bare.unlocked():
            bare.action_norm.from_data = True
        prepare.complete_config(bare)
