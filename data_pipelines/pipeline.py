"""Grain input pipeline: clip records in ArrayRecord files → training batches, resumable to the batch.

    pipe = make_pipeline(config.data)          # PipelineConfig, a dict or an ml-collections section
    it = pipe.iterator()                       # or pipe.iterator(state) to resume
    batch = next(it)                           # dict of numpy arrays, see below
    state = it.get_state()                     # JSON-able dict; it.state_bytes() gives bytes
    ...
    it = make_pipeline(config.data).iterator(state)   # continues with exactly the batch that came next
    pipe.num_skipped, pipe.skipped_records     # bad records skipped so far (skip_bad_records=True)

Batch contract (what the trainer consumes):
    "frames":     uint8   [B, T, H, W, 3]     (when the dataset has frames and `inputs` asks for them)
    "latents":    float32 [B, T', h, w, z]    (when pre-encoded latents are present and asked for)
    "waypoints":  float32 [B, K, n_wp, 3]     (x forward, y left, heading) in the ego frame at each chunk start
    "command":    int32   [B, K]              0 left, 1 straight, 2 right, 3 unknown
    "guidance":   float32 [B, K, L, D]        only when the clips carry guidance embeddings
    "ego_state":  float32 [B, K, 3]           (speed, acceleration, curvature) at each chunk start, when carried
    "intent_ids": int32   [B, K]              index into `intent_vocab`, only when the clips carry intents

Examples are windows of K = `chunks_per_example` consecutive chunks cut from clips of N chunks (K = N when 0),
starting every `window_stride` chunks: clip r yields W = (N - K) // stride + 1 windows, example index
e = r * W + w. A window keeps the frames the clip has before its first chunk start (history context) and
after its last chunk start, i.e. frames [cs[c0] - cs[0], cs[c0+K-1] + (T - cs[N-1])) with cs = chunk_start
and c0 = w * stride — so every example has the same T. Latents are cut the same way with latent_chunk_start.

Order: examples are split across processes first (example e goes to process e % process_count, after
trimming so every process gets the same count), each process shuffles its share with `seed` (a new
permutation each epoch), then records are read, decoded, optionally augmented and batched — in
`num_workers` worker processes (grain `mp_prefetch`), or in this process when 0. The order depends only on
the config, so the iterator state (grain's, plus the skip counter) restores it exactly; resuming needs the
same order-defining config fields, which the state records and checks.

Bad input: a record that cannot be read (truncated or corrupted file) or decoded, or whose schema version,
shape or dtype is wrong, raises `schema.RecordError` naming the file and the record index in it. With
`skip_bad_records=True` it is skipped instead (the batch is filled from the next examples), logged, and
counted in `pipeline.num_skipped` / `pipeline.skipped_records` and in the iterator state.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import os
import threading
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import grain
import numpy as np

from data_pipelines import schema

log = logging.getLogger(__name__)

STATE_FORMAT = 1
_INPUTS = ("auto", "frames", "latents", "both")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How to read one built dataset. `data_dir` is the dataset directory `build` printed (the one with
    dataset_info.json) or any directory above it holding exactly one dataset."""

    data_dir: str
    split: str = "train"
    batch_size: int = 8
    chunks_per_example: int = 0       # K; 0 → every chunk of the clip
    window_stride: int = 1            # in chunks
    seed: int = 0
    shuffle: bool = True
    num_epochs: int = 0               # 0 → repeat forever
    drop_remainder: bool = True
    num_workers: int = 0              # grain mp_prefetch worker processes; 0 → this process
    worker_buffer_size: int = 2       # batches buffered per worker
    read_threads: int = 2             # threads reading/decoding per process
    skip_bad_records: bool = False
    max_bad_records: int = 100        # with skip_bad_records: more distinct bad records than this stop reading
    inputs: str = "auto"              # auto (latents if present, else frames) | frames | latents | both
    image_size: tuple[int, ...] = ()  # (H, W) to resize frames to; () keeps the stored size
    frame_stride: int = 1             # keep frames stride-1, 2·stride-1, … of a window (what a latent codec of
                                      # this frame_stride encodes); only those are decoded
    intent_vocab: tuple[str, ...] = ()  # () → the dataset's metadata vocabulary
    shard_index: int = -1             # -1 → jax.process_index()
    shard_count: int = -1             # -1 → jax.process_count()
    brightness_jitter: float = 0.0    # frames *= 1 + U(-j, j)
    flip_prob: float = 0.0            # mirror left/right: frames, waypoint y/heading, command, intents

    # Fields that define which batch comes next; a saved state only restores into the same values.
    ORDER_FIELDS = ("split", "batch_size", "chunks_per_example", "window_stride", "seed", "shuffle", "num_epochs",
                    "drop_remainder", "num_workers", "shard_index", "shard_count")


def default_config(data_dir: str = ""):
    """The pipeline section for an experiment file: `config.data = pipeline.default_config(...)`."""
    import ml_collections

    fields = {f.name: f.default for f in dataclasses.fields(PipelineConfig) if f.name != "data_dir"}
    return ml_collections.ConfigDict({"data_dir": data_dir, **fields})


class PipelineError(ValueError):
    """The pipeline config does not fit the dataset (or a saved state does not fit the config)."""


def _as_config(config: PipelineConfig | Mapping[str, Any] | Any) -> PipelineConfig:
    if isinstance(config, PipelineConfig):
        return config
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    names = {f.name for f in dataclasses.fields(PipelineConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        hints = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
        raise PipelineError(f"unknown pipeline config key(s) {unknown} (closest: {hints}); known: {sorted(names)}")
    if "data_dir" not in data:
        raise PipelineError("pipeline config needs data_dir (the directory `python -m data_pipelines build` printed)")
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return PipelineConfig(**data)


def find_dataset_dir(path: str) -> str:
    """The directory holding dataset_info.json at or below `path` (exactly one)."""
    if not os.path.isdir(path):
        raise PipelineError(f"data_dir {path!r} does not exist; build one with `python -m data_pipelines build`")
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        return path
    found = sorted(root for root, _, files in os.walk(path) if "dataset_info.json" in files
                   and not os.path.basename(root).startswith("incomplete"))
    if len(found) != 1:
        what = "no dataset" if not found else f"{len(found)} datasets: {found}"
        raise PipelineError(f"data_dir {path!r} holds {what}; point data_dir at one dataset directory")
    return found[0]


class BadRecord(NamedTuple):
    """Stands in for an example whose record could not be used (skip_bad_records=True)."""

    file: str
    index: int
    problem: str


class ClipSource:
    """Random access to the serialised clips of one split: index → bytes, with file-and-record errors.

    Readers are opened lazily per thread (so the object pickles into worker processes)."""

    def __init__(self, dataset_dir: str, files: Sequence[tuple[str, int]]):
        self.dataset_dir = dataset_dir
        self.files = [(os.fspath(p), int(n)) for p, n in files]
        self._ends = np.cumsum([n for _, n in self.files])
        self._local = threading.local()
        self._features = None

    def __getstate__(self):
        return {"dataset_dir": self.dataset_dir, "files": self.files}

    def __setstate__(self, state):
        self.__init__(state["dataset_dir"], state["files"])

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def locate(self, index: int) -> tuple[str, int]:
        """(file path, record index in that file) of global record `index`."""
        f = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[f - 1]) if f else 0
        return self.files[f][0], index - start

    def _reader(self, path: str, expected: int, local_index: int):
        readers = getattr(self._local, "readers", None)
        if readers is None:
            readers = self._local.readers = {}
        if path not in readers:
            from array_record.python import array_record_module

            if not os.path.exists(path):
                raise schema.RecordError("file is missing", path, local_index)
            try:
                reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
            except Exception as e:  # the C++ reader raises plain RuntimeError/ValueError
                raise schema.RecordError(f"cannot open ArrayRecord file ({type(e).__name__}: {e}); the file is "
                                         "corrupted or truncated: rebuild the dataset", path, local_index) from None
            if reader.num_records() != expected:
                raise schema.RecordError(
                    f"file holds {reader.num_records()} records, dataset_info.json says {expected}; the file is "
                    "truncated or corrupted: rebuild the dataset", path, local_index)
            readers[path] = reader
        return readers[path]

    def features(self):
        if self._features is None:
            import tensorflow_datasets as tfds

            self._features = tfds.builder_from_directory(self.dataset_dir).info.features
        return self._features

    def read(self, index: int) -> bytes:
        """The `clip` bytes of global record `index`; raises RecordError naming file and record."""
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        f = int(np.searchsorted(self._ends, index, side="right"))
        path, expected = self.files[f]
        local = index - (int(self._ends[f - 1]) if f else 0)
        reader = self._reader(path, expected, local)
        try:
            raw = reader.read([local])[0]
        except Exception as e:
            raise schema.RecordError(f"cannot read record ({type(e).__name__}: {e}); the file is corrupted",
                                     path, local) from None
        if not raw:
            raise schema.RecordError("record is empty; the file is truncated or corrupted", path, local)
        try:
            example = self.features().deserialize_example_np(raw)
            return example["clip"]
        except Exception as e:
            raise schema.RecordError(f"not a clip example ({type(e).__name__}: {e}); the file is corrupted",
                                     path, local) from None

    def __getitem__(self, index: int) -> bytes:
        return self.read(index)


def _resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((size[1], size[0]), Image.BILINEAR)) for f in frames])


class _LoadExample:
    """Example index → one decoded window (a dict of numpy arrays) or a BadRecord."""

    def __init__(self, source: ClipSource, spec: Mapping[str, Any], windows: int, stride: int, k: int,
                 want_frames: bool, want_latents: bool, vocab: Mapping[str, int] | None,
                 image_size: tuple[int, ...], skip_bad: bool, frame_stride: int = 1):
        self.source, self.spec, self.windows, self.stride, self.k = source, dict(spec), windows, stride, k
        self.want_frames, self.want_latents, self.vocab = want_frames, want_latents, vocab
        self.image_size, self.skip_bad, self.frame_stride = tuple(image_size), skip_bad, frame_stride

    def __call__(self, example_index: int):
        record, window = divmod(int(example_index), self.windows)
        try:
            data = self.source.read(record)
            try:
                # Validated without pixels; then only the window's frames (every frame_stride-th) are decoded.
                clip = schema.deserialize_clip(data, decode_frames=False, spec=self.spec)
                frames = None
                if self.want_frames:
                    lo, hi = self._frame_range(clip, window * self.stride)
                    frames = schema.decode_frames_at(data, range(lo + self.frame_stride - 1, hi, self.frame_stride))
                return self._cut(clip, window * self.stride, frames)
            except schema.RecordError as e:
                raise e.at(*self.source.locate(record)) from None
        except schema.RecordError as e:
            if not self.skip_bad:
                raise
            return BadRecord(e.file or "?", -1 if e.index is None else int(e.index), e.problem)

    def _frame_range(self, clip: schema.ClipRecord, c0: int) -> tuple[int, int]:
        """[lo, hi): the frames of chunks c0 … c0 + k − 1."""
        cs = clip.chunk_start
        lo, hi = int(cs[c0] - cs[0]), int(cs[c0 + self.k - 1] + clip.num_frames - cs[-1])
        if (hi - lo) % self.frame_stride:
            raise schema.RecordError(f"a window of {hi - lo} frames does not divide by frame_stride="
                                     f"{self.frame_stride}")
        return lo, hi

    def _cut(self, clip: schema.ClipRecord, c0: int, frames: np.ndarray | None) -> dict[str, np.ndarray]:
        k = self.k
        out: dict[str, np.ndarray] = {
            "waypoints": clip.waypoints[c0:c0 + k].astype(np.float32),
            "command": clip.command[c0:c0 + k].astype(np.int32),
        }
        if self.want_frames:
            if self.image_size:
                frames = _resize_frames(frames, self.image_size)
            out["frames"] = np.ascontiguousarray(frames)
        if self.want_latents:
            lcs = clip.latent_chunk_start
            lo = int(lcs[c0] - lcs[0])
            hi = int(lcs[c0 + k - 1] + clip.latents.shape[0] - lcs[-1])
            out["latents"] = clip.latents[lo:hi].astype(np.float32)
        if clip.guidance is not None:
            out["guidance"] = clip.guidance[c0:c0 + k].astype(np.float32)
        if clip.ego_state is not None:
            out["ego_state"] = clip.ego_state[c0:c0 + k].astype(np.float32)
        if clip.intent is not None and self.vocab is not None:
            ids = []
            for text in clip.intent[c0:c0 + k]:
                if text not in self.vocab:
                    raise schema.RecordError(f"intent {text!r} is not in the intent vocabulary ({len(self.vocab)} "
                                             "entries); pass the vocabulary the dataset was built with")
                ids.append(self.vocab[text])
            out["intent_ids"] = np.asarray(ids, np.int32)
        return out


def _mirror_text(text: str) -> str:
    return text.replace("left", "\0").replace("right", "left").replace("\0", "right")


class _Augment:
    """Random photometric / mirror augmentation; deterministic per example index (grain random_map)."""

    def __init__(self, brightness: float, flip_prob: float, vocab: Sequence[str] | None):
        self.brightness, self.flip_prob = brightness, flip_prob
        self.mirror_ids = None
        if vocab:
            index = {t: i for i, t in enumerate(vocab)}
            self.mirror_ids = np.asarray([index.get(_mirror_text(t), i) for i, t in enumerate(vocab)], np.int32)

    def __call__(self, example, rng: np.random.Generator):
        if isinstance(example, BadRecord):
            return example
        out = dict(example)
        if self.brightness > 0 and "frames" in out:
            gain = 1.0 + rng.uniform(-self.brightness, self.brightness)
            out["frames"] = np.clip(out["frames"].astype(np.float32) * gain, 0, 255).astype(np.uint8)
        if self.flip_prob > 0 and rng.uniform() < self.flip_prob:
            if "frames" in out:
                out["frames"] = np.ascontiguousarray(out["frames"][:, :, ::-1])
            wp = out["waypoints"].copy()
            wp[..., 1:] *= -1.0
            out["waypoints"] = wp
            if "ego_state" in out:                      # a mirrored drive curves the other way
                out["ego_state"] = out["ego_state"] * np.asarray([1.0, 1.0, -1.0], np.float32)
            out["command"] = np.where(out["command"] == 0, 2, np.where(out["command"] == 2, 0, out["command"])
                                      ).astype(np.int32)
            if "intent_ids" in out and self.mirror_ids is not None:
                out["intent_ids"] = self.mirror_ids[out["intent_ids"]]
        return out


class _SkippingBatchIterator(grain.DatasetIterator):
    def __init__(self, parent, batch_size: int, drop_remainder: bool):
        super().__init__(parent)
        self._batch_size, self._drop_remainder = batch_size, drop_remainder

    def __next__(self):
        values, skipped = [], []
        while len(values) < self._batch_size:
            try:
                element = next(self._parent)
            except StopIteration:
                if skipped and (self._drop_remainder or not values):
                    return {"__skipped__": skipped}  # report them; BatchIterator then stops
                if self._drop_remainder or not values:
                    raise
                break
            if isinstance(element, BadRecord):
                skipped.append(tuple(element))
            else:
                values.append(element)
        batch = {key: np.stack([v[key] for v in values]) for key in values[0]}
        batch["__skipped__"] = skipped
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


class _SkippingBatch(grain.IterDataset):
    """Batches examples and sets aside BadRecords (reported with the batch), so a batch is always full."""

    def __init__(self, parent: grain.IterDataset, batch_size: int, drop_remainder: bool):
        super().__init__(parent)
        self._batch_size, self._drop_remainder = batch_size, drop_remainder

    def __iter__(self):
        return _SkippingBatchIterator(self._parent.__iter__(), self._batch_size, self._drop_remainder)


class BatchIterator:
    """Iterator over training batches with a saveable position. Use as a context manager or call close()."""

    def __init__(self, pipeline: "ClipPipeline", grain_iter):
        self._pipeline, self._it = pipeline, grain_iter

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        skipped = batch.pop("__skipped__", None)
        if skipped:
            self._pipeline._record_skipped(skipped)
        if not batch:  # the data ran out while skipping bad records
            raise StopIteration
        return batch

    def get_state(self) -> dict[str, Any]:
        """A JSON-able dict: grain's iterator state, the skip counter, and the order-defining config."""
        p = self._pipeline
        return {"format": STATE_FORMAT, "order": p.order_fingerprint(), "grain": self._it.get_state(),
                "num_skipped": p.num_skipped}

    def set_state(self, state: Mapping[str, Any] | bytes | str) -> None:
        if isinstance(state, (bytes, str)):
            state = json.loads(state)
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise PipelineError(f"not a data iterator state of format {STATE_FORMAT}: {str(state)[:200]}")
        mine = self._pipeline.order_fingerprint()
        diff = {k: (state["order"].get(k), mine.get(k)) for k in set(mine) | set(state["order"])
                if state["order"].get(k) != mine.get(k)}
        if diff:
            raise PipelineError("the saved data state comes from a different data order; differing "
                                f"(saved, now): {diff}. Resume with the config the state was saved with.")
        self._it.set_state(state["grain"])
        self._pipeline.num_skipped = int(state.get("num_skipped", 0))

    def state_bytes(self) -> bytes:
        return json.dumps(self.get_state(), sort_keys=True).encode()

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class ClipPipeline:
    """One dataset split, windowed, sharded, shuffled and batched per `PipelineConfig`."""

    def __init__(self, config: PipelineConfig):
        import tensorflow_datasets as tfds

        self.config = c = config
        if c.batch_size < 1 or c.window_stride < 1 or c.num_workers < 0 or c.num_epochs < 0:
            raise PipelineError(f"batch_size and window_stride must be >= 1, num_workers/num_epochs >= 0: {c}")
        if c.inputs not in _INPUTS:
            raise PipelineError(f"inputs must be one of {_INPUTS}, got {c.inputs!r}")
        if c.image_size and len(c.image_size) != 2:
            raise PipelineError(f"image_size must be (H, W) or (), got {c.image_size}")
        if c.frame_stride < 1:
            raise PipelineError(f"frame_stride must be >= 1, got {c.frame_stride}")
        self.dataset_dir = find_dataset_dir(c.data_dir)
        info = tfds.builder_from_directory(self.dataset_dir).info
        if c.split not in info.splits:
            raise PipelineError(f"{self.dataset_dir} has no split {c.split!r}; splits: {list(info.splits)}")
        files = [(fi.filename, fi.examples_in_shard) for fi in info.splits[c.split].file_instructions]
        self.spec = dict(info.metadata.get("clip_spec") or {})
        if not self.spec:
            raise PipelineError(f"{self.dataset_dir}/metadata.json has no clip_spec; the dataset was not written by "
                                "data_pipelines (rebuild it)")
        if self.spec.get("schema_version") != schema.SCHEMA_VERSION:
            raise PipelineError(f"{self.dataset_dir} holds schema version {self.spec.get('schema_version')}, this "
                                f"reader understands {schema.SCHEMA_VERSION}: rebuild it with `python -m data_pipelines build`")
        self.metadata = dict(info.metadata)
        self.source = ClipSource(self.dataset_dir, files)

        shapes = self.spec["shapes"]
        n = shapes["chunk_start"][0]
        self.chunks_per_example = k = c.chunks_per_example or n
        if not 1 <= k <= n:
            raise PipelineError(f"chunks_per_example={c.chunks_per_example} but the clips have {n} chunks")
        self.windows_per_clip = (n - k) // c.window_stride + 1
        has_frames, has_latents = "frames" in shapes, "latents" in shapes
        want = {"auto": ("latents",) if has_latents else ("frames",), "frames": ("frames",),
                "latents": ("latents",), "both": ("frames", "latents")}[c.inputs]
        missing = [w for w in want if w not in shapes]
        if missing:
            raise PipelineError(f"inputs={c.inputs!r} needs {missing}, which {self.dataset_dir} does not have "
                                f"(it has {sorted(shapes)}); pre-encode with --vae-checkpoint or set inputs")
        self.want_frames, self.want_latents = "frames" in want, "latents" in want
        if c.flip_prob > 0 and (self.want_latents or "guidance" in shapes):
            raise PipelineError("flip_prob > 0 cannot mirror latents or guidance embeddings; set flip_prob=0")

        vocab = tuple(c.intent_vocab) or tuple(self.metadata.get("intent_vocab") or ())
        if self.spec.get("has_intent") and not vocab:
            raise PipelineError(f"{self.dataset_dir} has intent strings but no intent vocabulary in its metadata; "
                                "set intent_vocab in the pipeline config")
        self.intent_vocab = vocab if self.spec.get("has_intent") else ()

        self.shard_index, self.shard_count = c.shard_index, c.shard_count
        if self.shard_index < 0 or self.shard_count < 0:
            import jax

            self.shard_index, self.shard_count = jax.process_index(), jax.process_count()
        if not 0 <= self.shard_index < self.shard_count:
            raise PipelineError(f"shard_index {self.shard_index} outside [0, shard_count={self.shard_count})")
        total = len(self.source) * self.windows_per_clip
        self.num_examples = total // self.shard_count   # per process, equal across processes
        if self.num_examples < (c.batch_size if c.drop_remainder else 1):
            raise PipelineError(f"{total} examples over {self.shard_count} process(es) cannot fill a batch of "
                                f"{c.batch_size}")
        self.num_skipped = 0
        self.skipped_records: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def order_fingerprint(self) -> dict[str, Any]:
        c = self.config
        out = {name: getattr(c, name) for name in PipelineConfig.ORDER_FIELDS}
        out.update(shard_index=self.shard_index, shard_count=self.shard_count,
                   files=[[os.path.basename(p), n] for p, n in self.source.files])
        return json.loads(json.dumps(out))

    def _record_skipped(self, skipped: Sequence[tuple[str, int, str]]) -> None:
        with self._lock:
            for file, index, problem in skipped:
                self.num_skipped += 1
                if (file, index) not in self.skipped_records:
                    self.skipped_records.add((file, index))
                    log.warning("skipped bad record %s record %d: %s (skipped so far: %d)", file, index, problem,
                                self.num_skipped)
            limit = self.config.max_bad_records
            if limit and len(self.skipped_records) > limit:
                raise PipelineError(f"more than max_bad_records={limit} bad records skipped in {self.dataset_dir} "
                                    f"(last: {file} record {index}: {problem}); the dataset is damaged: check it with "
                                    "`python -m data_pipelines inspect --validate --data DIR`")

    def skip_report(self) -> str:
        return (f"{self.num_skipped} example(s) skipped from {len(self.skipped_records)} bad record(s)"
                + "".join(f"\n  {f} record {i}" for f, i in sorted(self.skipped_records)))

    def dataset(self) -> grain.IterDataset:
        """The grain pipeline (batched, with `__skipped__` lists in each batch; `iterator` strips them)."""
        c = self.config
        vocab = {t: i for i, t in enumerate(self.intent_vocab)} if self.intent_vocab else None
        ds = grain.MapDataset.range(self.num_examples * self.shard_count)
        ds = ds[self.shard_index::self.shard_count]
        if c.shuffle:
            ds = ds.shuffle(seed=c.seed)
        ds = ds.repeat(None if c.num_epochs == 0 else c.num_epochs)
        ds = ds.map(_LoadExample(self.source, self.spec, self.windows_per_clip, c.window_stride,
                                 self.chunks_per_example, self.want_frames, self.want_latents, vocab,
                                 c.image_size, c.skip_bad_records, c.frame_stride))
        if c.brightness_jitter > 0 or c.flip_prob > 0:
            ds = ds.random_map(_Augment(c.brightness_jitter, c.flip_prob, self.intent_vocab), seed=c.seed + 1)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(c.read_threads, 1),
                                                  prefetch_buffer_size=max(2 * c.batch_size, 4)))
        it = _SkippingBatch(it, c.batch_size, c.drop_remainder)
        if c.num_workers > 0:
            _absl_flags_ready()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.num_workers,
                                                             per_worker_buffer_size=c.worker_buffer_size),
                                worker_init_fn=functools.partial(_die_with_parent, parent_pid=os.getpid()))
        return it

    def iterator(self, state: Mapping[str, Any] | bytes | str | None = None) -> BatchIterator:
        """A fresh iterator, positioned at `state` (from `BatchIterator.get_state`) when given."""
        it = BatchIterator(self, iter(self.dataset()))
        if state is not None:
            it.set_state(state)
        return it


def _die_with_parent(worker_index: int = 0, worker_count: int = 0, parent_pid: int | None = None) -> None:
    """Runs in each grain worker process: exits it as soon as the trainer (`parent_pid`, captured in the trainer
    when the pipeline starts, so a worker still importing when the trainer dies knows whom to watch) is gone; a
    SIGKILLed trainer would otherwise leave its workers running, holding their memory. Polling, not
    PR_SET_PDEATHSIG: that signal fires when the parent *thread* that started the worker ends."""
    del worker_index, worker_count
    parent = parent_pid or os.getppid()
    started_under = os.getppid()

    def gone() -> bool:
        if started_under == parent and os.getppid() != parent:     # re-parented: the trainer died
            return True
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    def watch():
        import time
        while not gone():
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="wam-die-with-parent", daemon=True).start()


def _absl_flags_ready() -> None:
    """grain's worker processes read absl flags; a program that never parsed them (pytest, a notebook) would
    crash there, so fall back to the flags' defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_pipeline(config: PipelineConfig | Mapping[str, Any] | Any) -> ClipPipeline:
    """Builds the pipeline from a `PipelineConfig`, a dict or an ml-collections ConfigDict section."""
    return ClipPipeline(_as_config(config))


# Keys of config.data that belong to wam_jax.data's synthetic source, not to this pipeline.
_TRAINER_DATA_KEYS = ("source", "num_clips", "chunk_seconds")


def make_train_iterator(config, process_index: int = 0, process_count: int = 1) -> BatchIterator:
    """The trainer's entry (wam_jax.data.make_iterator with config.data.source == "tfds").

    config.data holds `PipelineConfig` fields (data_dir required); batch_size is this process's share of
    config.train.batch_size, the shard is (process_index, process_count), and chunks_per_example defaults to
    config.chunks. Checks that the dataset's waypoints per chunk match config.wam.waypoints_per_chunk."""
    data = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
    fields = {k: v for k, v in data.items() if k not in _TRAINER_DATA_KEYS}
    if "batch_size" in fields:
        raise PipelineError("set the batch size in config.train.batch_size (global), not config.data.batch_size")
    fields["batch_size"] = int(config.train.batch_size) // int(process_count)
    fields["shard_index"], fields["shard_count"] = int(process_index), int(process_count)
    if not fields.get("chunks_per_example") and "chunks" in config:
        fields["chunks_per_example"] = int(config.chunks)
    pipe = make_pipeline(fields)
    want = config.get("wam", {}).get("waypoints_per_chunk") if hasattr(config, "get") else None
    have = pipe.spec["shapes"]["waypoints"][1]
    if want is not None and int(want) != have:
        raise PipelineError(f"{pipe.dataset_dir} has {have} waypoints per chunk, config.wam.waypoints_per_chunk is "
                            f"{want}; build the dataset to match or change the model config")
    return pipe.iterator()


def iter_clips(data_dir: str, split: str = "train", decode_frames: bool = True) -> Iterator[schema.ClipRecord]:
    """Every clip of a dataset in storage order (validated), for inspection and tests."""
    pipe = make_pipeline({"data_dir": data_dir, "split": split, "batch_size": 1, "shard_index": 0, "shard_count": 1,
                          "drop_remainder": False})
    for i in range(len(pipe.source)):
        try:
            yield schema.deserialize_clip(pipe.source.read(i), decode_frames=decode_frames, spec=pipe.spec)
        except schema.RecordError as e:
            if e.file is None:
                raise e.at(*pipe.source.locate(i)) from None
            raise
