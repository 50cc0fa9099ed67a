"""TFDS builders that write clip records (`schema.ClipRecord`) to ArrayRecord files.

Each source subclasses `ClipDatasetBuilder` with a dataclass `BuilderConfig` (sizes, paths, codecs) and a
`_generate_clips()` that yields `(key, ClipRecord)`. Examples on disk are TFDS examples with three features:

    clip:     bytes — `schema.serialize_clip(record)` (msgpack, frames PNG/JPEG-compressed)
    source:   text  — record.source
    clip_id:  text  — record.clip_id

The first clip's shape signature (`ClipRecord.spec()`) becomes the dataset's `clip_spec` metadata
(`<dataset dir>/metadata.json`); every later clip must match it, at write time and again at read time.
The builder config (minus paths) is stored next to it as `builder_config`, and optional `intent_vocab`.

No TensorFlow: TFDS 4.9 writes ArrayRecord without it. Read back with `builder.as_data_source(split)` or,
as the training pipeline does, `data_pipelines.pipeline.make_pipeline`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from data_pipelines import schema

log = logging.getLogger(__name__)

# tfds.core.Version; the major version follows the record schema version.
DATASET_VERSION = f"{schema.SCHEMA_VERSION}.0.0"


@dataclasses.dataclass(eq=False)
class ClipBuilderConfig(tfds.core.BuilderConfig):
    """Fields every source shares. `num_clips` caps the number of clips written (0: all the source has)."""

    num_clips: int = 0
    frame_codec: str = "png"
    jpeg_quality: int = 95
    split: str = "train"


class ClipDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base builder: wraps `_generate_clips` into TFDS examples, checks every clip against the first."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: f"Clip record schema version {schema.SCHEMA_VERSION}."}
    # Optional hooks set by the caller before download_and_prepare (see `build`).
    clip_transform: Callable[[schema.ClipRecord], schema.ClipRecord] | None = None
    progress: Callable[[int], None] | None = None
    intent_vocab: tuple[str, ...] | None = None

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS looks for a checksums file next to the builder's code; ours downloads nothing. (Its lookup for a
        # module inside a package also needs `importlib_resources`, which we do not depend on.)
        return None

    def _log_download_bytes(self) -> None:
        # TFDS prints "Downloading and preparing dataset ..." here; these builders download nothing.
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip().splitlines()[0],
            features=tfds.features.FeaturesDict({
                "clip": tfds.features.Scalar(dtype=np.object_, doc="schema.serialize_clip bytes"),
                "source": tfds.features.Text(),
                "clip_id": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {self.builder_config.split: self._generate_examples()}

    def _generate_clips(self) -> Iterator[tuple[str, schema.ClipRecord]]:
        raise NotImplementedError

    def default_intent_vocab(self) -> tuple[str, ...] | None:
        """The fixed intent vocabulary of this source (stored as metadata `intent_vocab`), if it has one."""
        return None

    def _generate_examples(self):
        config = self.builder_config
        spec = None
        count = 0
        for key, clip in self._generate_clips():
            if self.clip_transform is not None:
                clip = self.clip_transform(clip)
            try:
                schema.validate_clip(clip, spec)
            except schema.RecordError as e:
                raise schema.RecordError(f"{type(self).__name__} produced a bad clip {clip.clip_id!r}: {e}") from None
            if spec is None:
                spec = clip.spec()
                self.info.metadata["clip_spec"] = spec
                self.info.metadata["builder_config"] = _config_json(config)
                vocab = self.default_intent_vocab() if self.intent_vocab is None else self.intent_vocab
                if vocab is not None:
                    self.info.metadata["intent_vocab"] = list(vocab)
            yield key, {
                "clip": schema.serialize_clip(clip, config.frame_codec, config.jpeg_quality, validate=False),
                "source": clip.source,
                "clip_id": clip.clip_id,
            }
            count += 1
            if self.progress is not None:
                self.progress(1)
            if config.num_clips and count >= config.num_clips:
                break
        if count == 0:
            raise ValueError(f"{type(self).__name__}: the source produced no clips with config {_config_json(config)}; "
                             "check the source directory and filters")


def _config_json(config: tfds.core.BuilderConfig) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in ("release_notes", "supported_versions", "tags", "version"):
            continue
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, (str, int, float, bool, list, dict)) or value is None:
            out[f.name] = value
        else:
            out[f.name] = str(value)
    return out


def build(builder_cls: type[ClipDatasetBuilder], config: ClipBuilderConfig, out_dir: str, *,
          clip_transform: Callable[[schema.ClipRecord], schema.ClipRecord] | None = None,
          intent_vocab: tuple[str, ...] | None = None,
          progress: Callable[[int], None] | None = None, overwrite: bool = False,
          num_shards: int | None = None) -> str:
    """Builds one dataset under the TFDS data dir `out_dir`; returns the dataset directory
    (`out_dir/<builder name>/<config name>/<version>`), which `pipeline.PipelineConfig.data_dir` accepts.

    An existing dataset at that place is kept as is unless `overwrite`. `num_shards` fixes the number of
    ArrayRecord files (default: TFDS picks by size)."""
    tfds.disable_progress_bar()
    builder = builder_cls(config=config, data_dir=os.fspath(out_dir), file_format="array_record")
    _remove_leftovers(os.fspath(builder.data_path))
    if not overwrite:
        _check_same_settings(os.fspath(builder.data_path), config)
    builder.clip_transform = clip_transform
    builder.intent_vocab = intent_vocab
    builder.progress = progress
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        num_shards=num_shards,
        download_mode=(tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
                       else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)))
    return os.fspath(builder.data_path)


class BuildError(ValueError):
    """A build cannot go ahead as asked (an existing dataset was built with other settings)."""


# Config fields that do not change what is written (paths, documentation).
_SETTINGS_IGNORED = ("name", "description", "src_dir", "release_notes", "supported_versions", "tags", "version")


def _check_same_settings(data_path: str, config: ClipBuilderConfig) -> None:
    """An existing dataset is reused only when it was built with the same settings."""
    meta_path = os.path.join(data_path, "metadata.json")
    if not os.path.exists(os.path.join(data_path, "dataset_info.json")):
        return
    import json
    try:
        with open(meta_path) as f:
            stored = json.load(f).get("builder_config", {})
    except (OSError, ValueError):
        stored = {}
    asked = _config_json(config)
    differ = [f"{k}: built with {stored.get(k)!r}, asked for {asked.get(k)!r}" for k in sorted(set(asked) | set(stored))
              if k not in _SETTINGS_IGNORED and stored.get(k) != asked.get(k)]
    if differ:
        raise BuildError(f"{data_path} already holds a dataset built with other settings ({'; '.join(differ)}); "
                         "pass --overwrite to rebuild it, or choose another --out or --name")


def _remove_leftovers(data_path: str) -> None:
    """Removes the `incomplete.*` folders that TFDS leaves when a build is killed."""
    import glob
    import shutil
    parent = os.path.dirname(data_path.rstrip("/"))
    for leftover in glob.glob(os.path.join(parent, "incomplete.*")):
        log.warning("removing %s, left behind by an interrupted build", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
