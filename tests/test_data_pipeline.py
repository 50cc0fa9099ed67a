"""Grain pipeline over ArrayRecord clip datasets: batch contract, windows, shuffle/shards, exact resume,
and bad input (truncated file, corrupted file, wrong-shape record) with and without skip-and-count."""

import json
import os
import shutil

import numpy as np
import pytest

from data_pipelines import fixtures, pipeline, schema

INTENTS = ("keep lane", "change lane left", "change lane right", "slow down")
NUM_CLIPS, NUM_CHUNKS, FPC, HEAD = 10, 3, 2, 1


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    fixtures.build_synthetic(str(root), num_shards=2, num_clips=NUM_CLIPS, num_chunks=NUM_CHUNKS,
                             frames_per_chunk=FPC, head_frames=HEAD, intents=INTENTS)
    return str(root)


def _pipe(data_dir, **kw):
    cfg = dict(data_dir=data_dir, batch_size=4, chunks_per_example=2, shard_index=0, shard_count=1)
    cfg.update(kw)
    return pipeline.make_pipeline(cfg)


def _examples(batch):
    """(clip index, first chunk) of every example of a batch, read from the values the clips encode."""
    return [(int(w[0, 0, 0]), int(w[0, 0, 1])) for w in batch["waypoints"]]


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batch_contract_and_window_cut(data_dir):
    pipe = _pipe(data_dir)
    assert pipe.windows_per_clip == 2 and pipe.num_examples == NUM_CLIPS * 2
    with pipe.iterator() as it:
        batch = next(it)
    assert sorted(batch) == ["command", "ego_state", "frames", "intent_ids", "waypoints"]
    t_win = HEAD + 2 * FPC
    assert batch["frames"].shape == (4, t_win, 8, 12, 3) and batch["frames"].dtype == np.uint8
    assert batch["waypoints"].shape == (4, 2, 4, 3) and batch["waypoints"].dtype == np.float32
    assert batch["command"].shape == (4, 2) and batch["command"].dtype == np.int32
    assert batch["intent_ids"].shape == (4, 2) and batch["intent_ids"].dtype == np.int32
    for b, (clip, c0) in enumerate(_examples(batch)):
        chunks = c0 + np.arange(2)
        np.testing.assert_array_equal(batch["waypoints"][b, :, 0, 1], chunks)
        np.testing.assert_array_equal(batch["command"][b], (chunks + clip) % 4)
        np.testing.assert_array_equal(batch["intent_ids"][b], (clip + chunks) % len(INTENTS))
        np.testing.assert_allclose(batch["ego_state"][b], np.stack([np.full(2, 10.0 + clip), chunks * 0.1,
                                                                    np.full(2, 0.01)], -1), rtol=1e-6)
        assert np.all(batch["frames"][b, :, 0, 0, 0] == clip)
        # Window frames start c0 chunks into the clip and keep the clip's head frames.
        np.testing.assert_array_equal(batch["frames"][b, :, 0, 0, 1], FPC * c0 + np.arange(t_win))


def test_epoch_covers_every_window_once_and_shuffle_follows_seed(data_dir):
    def order(seed, shuffle=True):
        with _pipe(data_dir, seed=seed, shuffle=shuffle, num_epochs=1, drop_remainder=False,
                   batch_size=3).iterator() as it:
            return [e for batch in it for e in _examples(batch)]

    a = order(0)
    assert sorted(a) == [(c, w) for c in range(NUM_CLIPS) for w in range(2)]
    assert order(0) == a
    assert order(1) != a
    unshuffled = order(0, shuffle=False)
    assert unshuffled != a and sorted(unshuffled) == sorted(a)


def test_resize_on_read(data_dir):
    with _pipe(data_dir, image_size=(4, 6)).iterator() as it:
        assert next(it)["frames"].shape == (4, HEAD + 2 * FPC, 4, 6, 3)


def test_frame_stride_decodes_only_the_frames_the_codec_encodes(data_dir):
    import ml_collections
    from wam_jax.models import latents
    with _pipe(data_dir, shuffle=False).iterator() as it:
        full = next(it)
    with _pipe(data_dir, shuffle=False, frame_stride=5).iterator() as it:
        strided = next(it)
    np.testing.assert_array_equal(strided["frames"], full["frames"][:, 4::5])
    np.testing.assert_array_equal(strided["waypoints"], full["waypoints"])
    config = ml_collections.ConfigDict({"latent": dict(kind="pixels", frame_stride=5, space_to_depth=4, channels=0,
                                                       pca_path="")})
    np.testing.assert_array_equal(latents.encode_frames(strided["frames"], config, kept_every=5),
                                  latents.encode_frames(full["frames"], config))
    with pytest.raises(ValueError, match="does not divide"):
        latents.encode_frames(strided["frames"], config, kept_every=2)
    with pytest.raises(Exception, match="frame_stride=2"):       # a 5-frame window has no every-2nd cut
        with _pipe(data_dir, frame_stride=2).iterator() as it:
            next(it)
    with pytest.raises(pipeline.PipelineError, match="frame_stride"):
        _pipe(data_dir, frame_stride=0)


def test_window_stride(data_dir):
    with _pipe(data_dir, chunks_per_example=1, window_stride=2, num_epochs=1, batch_size=4).iterator() as it:
        seen = {e for batch in it for e in _examples(batch)}
    assert {c0 for _, c0 in seen} == {0, 2}


def test_shards_are_disjoint_equal_and_cover(data_dir):
    shards = []
    for i in range(3):
        with _pipe(data_dir, shard_index=i, shard_count=3, num_epochs=1, batch_size=2).iterator() as it:
            shards.append([e for batch in it for e in _examples(batch)])
    assert [len(s) for s in shards] == [6, 6, 6]  # 20 examples, trimmed to 18 so every process gets as many
    flat = [e for s in shards for e in s]
    assert len(set(flat)) == 18


def test_resume_yields_exactly_the_uninterrupted_batches(data_dir):
    kw = dict(brightness_jitter=0.3, flip_prob=0.5, seed=3)
    with _pipe(data_dir, **kw).iterator() as it:
        _take(it, 3)
        state = json.loads(json.dumps(it.get_state()))
        expected = _take(it, 5)  # crosses the epoch boundary (5 batches per epoch)
    with _pipe(data_dir, **kw).iterator(state) as resumed:
        _assert_batches_equal(_take(resumed, 5), expected)
    with _pipe(data_dir, **kw).iterator() as fresh:
        assert not np.array_equal(next(fresh)["waypoints"], expected[0]["waypoints"])


@pytest.mark.skipif(os.environ.get("WAM_TEST_GRAIN_WORKERS") != "1",
                    reason="grain worker processes hung once under pytest-xdist on the 2-core CI machine "
                           "(2026-11-25); run with WAM_TEST_GRAIN_WORKERS=1 until that is understood")
def test_resume_with_worker_processes(data_dir):
    kw = dict(num_workers=2, worker_buffer_size=1, seed=5)
    with _pipe(data_dir, **kw).iterator() as it:
        _take(it, 2)
        blob = it.state_bytes()
        expected = _take(it, 4)
    with _pipe(data_dir, **kw).iterator(blob) as resumed:
        _assert_batches_equal(_take(resumed, 4), expected)


def test_state_from_another_order_is_refused(data_dir):
    with _pipe(data_dir, seed=1).iterator() as it:
        state = it.get_state()
    with pytest.raises(pipeline.PipelineError, match="seed"):
        _pipe(data_dir, seed=2).iterator(state)


def test_flip_mirrors_frames_waypoints_commands_and_intents(data_dir):
    kw = dict(shuffle=False, num_epochs=1, batch_size=4)
    with _pipe(data_dir, **kw).iterator() as it:
        plain = next(it)
    with _pipe(data_dir, flip_prob=1.0, **kw).iterator() as it:
        flipped = next(it)
    np.testing.assert_array_equal(flipped["frames"], plain["frames"][:, :, :, ::-1])
    np.testing.assert_array_equal(flipped["waypoints"][..., 0], plain["waypoints"][..., 0])
    np.testing.assert_array_equal(flipped["waypoints"][..., 1:], -plain["waypoints"][..., 1:])
    swap = np.array([2, 1, 0, 3])
    np.testing.assert_array_equal(flipped["command"], swap[plain["command"]])
    np.testing.assert_array_equal(flipped["intent_ids"], np.array([0, 2, 1, 3])[plain["intent_ids"]])


def test_latents_and_guidance_in_batch(tmp_path):
    fixtures.build_synthetic(str(tmp_path), num_clips=4, guidance_shape=(3, 6), latent_shape=(2, 2, 5))
    with pipeline.make_pipeline(dict(data_dir=str(tmp_path), batch_size=2, shard_index=0, shard_count=1,
                                     chunks_per_example=2)).iterator() as it:
        batch = next(it)
    assert sorted(batch) == ["command", "ego_state", "guidance", "latents", "waypoints"]
    assert batch["latents"].shape == (2, 3, 2, 2, 5) and batch["latents"].dtype == np.float32  # 1 head + 2 chunks
    assert batch["guidance"].shape == (2, 2, 3, 6) and batch["guidance"].dtype == np.float32
    with pipeline.make_pipeline(dict(data_dir=str(tmp_path), batch_size=2, shard_index=0, shard_count=1,
                                     inputs="both")).iterator() as it:
        assert {"frames", "latents"} <= set(next(it))


# ------------------------------------------------------------------------------------------------ bad input

def _copy(data_dir, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(data_dir, dst)
    ds_dir = pipeline.find_dataset_dir(dst)
    files = sorted(os.path.join(ds_dir, f) for f in os.listdir(ds_dir) if ".array_record-" in f)
    assert len(files) == 2
    return dst, files


def _all_examples(data_dir, **kw):
    pipe = _pipe(data_dir, num_epochs=1, drop_remainder=False, **kw)
    with pipe.iterator() as it:
        return pipe, [e for batch in it for e in _examples(batch)]


def _records_in(path):
    from array_record.python import array_record_module

    reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
    return reader.num_records()


def test_truncated_file_names_file_and_record(data_dir, tmp_path):
    root, files = _copy(data_dir, tmp_path)
    n_bad = _records_in(files[1])
    with open(files[1], "r+b") as f:
        f.truncate(os.path.getsize(files[1]) // 2)
    with pytest.raises(schema.RecordError) as info:
        _all_examples(root)
    message = str(info.value)
    assert files[1] in message and "record" in message and "truncated" in message
    assert "dataset_info.json says" in message  # caught when opening, by the record count
    assert info.value.file == files[1] and 0 <= info.value.index < n_bad

    pipe, seen = _all_examples(root, skip_bad_records=True)
    assert pipe.num_skipped == 2 * n_bad  # two windows per clip
    assert {f for f, _ in pipe.skipped_records} == {files[1]} and len(pipe.skipped_records) == n_bad
    assert len(seen) == 2 * (NUM_CLIPS - n_bad)


def test_corrupted_file_names_file_and_record(data_dir, tmp_path):
    from array_record.python import array_record_module

    root, files = _copy(data_dir, tmp_path)
    reader = array_record_module.ArrayRecordReader(files[0], "readahead_buffer_size:0")
    original = [reader.read([i])[0] for i in range(reader.num_records())]
    reader.close()
    data = bytearray(open(files[0], "rb").read())
    # Records sit at the start of the first 64 KiB Riegeli block, zero padding after: flip bytes mid-data.
    mid = int(np.nonzero(np.frombuffer(bytes(data[:65536]), np.uint8))[0][-1]) // 2
    data[mid:mid + 32] = bytes(b ^ 0xA5 for b in data[mid:mid + 32])
    open(files[0], "wb").write(bytes(data))
    reader = array_record_module.ArrayRecordReader(files[0], "readahead_buffer_size:0")
    unreadable = []
    for i in range(reader.num_records()):
        try:
            if reader.read([i])[0] != original[i]:
                unreadable.append(i)
        except Exception:
            unreadable.append(i)
    assert unreadable and len(unreadable) < len(original), unreadable
    with pytest.raises(schema.RecordError) as info:
        _all_examples(root)
    assert info.value.file == files[0] and info.value.index in unreadable
    assert f"{files[0]}, record {info.value.index}:" in str(info.value)

    pipe, seen = _all_examples(root, skip_bad_records=True)
    assert pipe.skipped_records == {(files[0], i) for i in unreadable}
    assert pipe.num_skipped == 2 * len(unreadable)
    assert len(seen) == 2 * (NUM_CLIPS - len(unreadable))
    assert "bad record" in pipe.skip_report()


def _rewrite_record(path, index, fn):
    """Replaces record `index` of an ArrayRecord file by fn(clip) (serialised without validation)."""
    import tensorflow_datasets as tfds
    from array_record.python import array_record_module

    features = tfds.builder_from_directory(os.path.dirname(path)).info.features
    reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
    raws = [reader.read([i])[0] for i in range(reader.num_records())]
    reader.close()
    example = features.deserialize_example_np(raws[index])
    clip = fn(schema.deserialize_clip(example["clip"]))
    raws[index] = features.serialize_example({"clip": schema.serialize_clip(clip, validate=False),
                                              "source": clip.source, "clip_id": clip.clip_id})
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for raw in raws:
        writer.write(raw)
    writer.close()
    return clip


def test_wrong_shape_record_names_file_and_record_and_can_be_skipped(data_dir, tmp_path):
    root, files = _copy(data_dir, tmp_path)

    def squash(clip):
        clip.waypoints = clip.waypoints[:, :3]  # 3 waypoints instead of 4
        return clip

    bad = _rewrite_record(files[1], 1, squash)
    bad_index = int(bad.meta["index"])
    with pytest.raises(schema.RecordError, match=r"'waypoints' has shape \(3, 3, 3\)") as info:
        _all_examples(root)
    assert (info.value.file, info.value.index) == (files[1], 1)
    assert f"{files[1]}, record 1:" in str(info.value)

    pipe, seen = _all_examples(root, skip_bad_records=True, batch_size=3)
    assert pipe.num_skipped == 2 and pipe.skipped_records == {(files[1], 1)}
    assert sorted(seen) == [(c, w) for c in range(NUM_CLIPS) if c != bad_index for w in range(2)]
    with pipe.iterator() as it:  # the counter is part of the saved state
        for _ in it:
            pass
        assert it.get_state()["num_skipped"] == 4


def test_other_schema_version_is_refused_with_location(data_dir, tmp_path):
    root, files = _copy(data_dir, tmp_path)

    def bump(clip):
        clip.schema_version = 99
        return clip

    _rewrite_record(files[0], 0, bump)
    with pytest.raises(schema.RecordError, match="schema version 99") as info:
        _all_examples(root)
    assert (info.value.file, info.value.index) == (files[0], 0)


def test_config_errors_speak_to_the_user(data_dir, tmp_path):
    with pytest.raises(pipeline.PipelineError, match="chunks_per_example=5"):
        _pipe(data_dir, chunks_per_example=5)
    with pytest.raises(pipeline.PipelineError, match="no dataset"):
        _pipe(str(tmp_path))
    with pytest.raises(pipeline.PipelineError, match="batch_sise"):
        pipeline.make_pipeline({"data_dir": data_dir, "batch_sise": 2})
    with pytest.raises(pipeline.PipelineError, match="latents"):
        _pipe(data_dir, inputs="latents")


def test_trainer_entry_builds_the_process_shard_from_the_experiment_config(data_dir):
    import ml_collections

    config = ml_collections.ConfigDict({
        "chunks": 2, "wam": {"waypoints_per_chunk": 4}, "train": {"batch_size": 4},
        "data": {"source": "tfds", "num_clips": 4, "chunk_seconds": 4.0, "seed": 0, "shuffle": True,
                 "data_dir": data_dir}})
    it = pipeline.make_train_iterator(config, process_index=1, process_count=2)
    batch = next(it)
    assert batch["waypoints"].shape == (2, 2, 4, 3)  # per-process batch 4 / 2, 2 chunks
    state = it.get_state()
    assert state["order"]["shard_index"] == 1 and state["order"]["shard_count"] == 2
    it.close()
    config.wam.waypoints_per_chunk = 8
    with pytest.raises(pipeline.PipelineError, match="4 waypoints per chunk"):
        pipeline.make_train_iterator(config)
