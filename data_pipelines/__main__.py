"""Dataset command line.

    python -m data_pipelines build --source highway|navsim|physicalai|synthetic --out DIR --clips N
                                   [--src DIR] [--name NAME] [--set field=value ...] [--vae-checkpoint DIR]
                                   [--overwrite]
    python -m data_pipelines inspect --data DIR [--validate]
    python -m data_pipelines prepare --data DIR [--config experiments/FILE.py[:args]] [--set key=value ...]

`build` writes a TFDS ArrayRecord dataset under DIR (`DIR/wam_<source>/<name>/<version>/`) and prints that
directory; pass it (or DIR) as the pipeline's `data_dir`. `--set` overrides any field of the source's builder
config (see `--help-config`), e.g. `--set num_chunks=2`, or of a nested config such as highway's simulator:
`--set sim.image_size=(128,256)`. `--vae-checkpoint`
additionally stores Wan VAE latents of the frames in every clip (`data_pipelines/vae_encode.py`). An existing
dataset is reused only if it was built with the same settings (else: an error; `--overwrite` rebuilds it).

`inspect` summarises a dataset and opens every file; `--validate` reads and checks every record (NaN/inf
included) and prints good/bad counts by kind (exit status 1 if any is bad). `prepare` fits the action
statistics (and, for a PCA-latent config, the PCA basis) that `train` needs, into the dataset directory
(`data_pipelines/prepare.py`; `train` does it itself when they are missing).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import sys
from typing import Any

SOURCES = {
    # source: (module, builder class, config class)
    "highway": ("data_pipelines.sources.highway", "WamHighway", "HighwayConfig"),
    "navsim": ("data_pipelines.sources.navsim", "WamNavsim", "NavsimConfig"),
    "physicalai": ("data_pipelines.sources.physicalai", "WamPhysicalai", "PhysicalAIConfig"),
    "synthetic": ("data_pipelines.fixtures", "WamSynthetic", "SyntheticConfig"),
}


def _parse_value(text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise SystemExit(f"expected a boolean, got {text!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    if isinstance(default, str):
        return text
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(default, float) and isinstance(value, int):
        value = float(value)
    return value


def _config_fields(config_cls) -> dict[str, Any]:
    skip = {"name", "version", "release_notes", "supported_versions", "description", "tags"}
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return out


def build_main(args: argparse.Namespace) -> int:
    import importlib

    from tqdm import tqdm

    from data_pipelines import builders

    module_name, builder_name, config_name = SOURCES[args.source]
    module = importlib.import_module(module_name)
    builder_cls, config_cls = getattr(module, builder_name), getattr(module, config_name)
    fields = _config_fields(config_cls)
    if args.help_config:
        for name, default in fields.items():
            print(f"  {name} = {default!r}")
        return 0
    values: dict[str, Any] = {"num_clips": args.clips}
    if args.src is not None:
        if "src_dir" not in fields:
            raise SystemExit(f"--src is not used by source {args.source!r}")
        values["src_dir"] = args.src
    elif "src_dir" in fields:
        raise SystemExit(f"source {args.source!r} reads real data: pass --src DIR")
    for item in args.set:
        key, sep, text = item.partition("=")
        head, _, sub = key.partition(".")
        if sep and sub and dataclasses.is_dataclass(fields.get(head)):   # e.g. --set sim.vehicles=20
            current = values.get(head, fields[head])
            inner = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
            if sub not in inner:
                raise SystemExit(f"--set {item!r}: {head} has no field {sub!r}; fields: {sorted(inner)}")
            values[head] = dataclasses.replace(current, **{sub: _parse_value(text, inner[sub])})
            continue
        if not sep or key not in fields:
            import difflib

            hint = difflib.get_close_matches(key, fields, n=3)
            raise SystemExit(f"--set {item!r}: unknown field {key!r}" + (f" (did you mean {hint}?)" if hint else "")
                             + f"; fields: {sorted(fields)}")
        values[key] = _parse_value(text, fields[key])
    config = config_cls(name=args.name, **values)

    transform = None
    if args.vae_checkpoint:
        from data_pipelines import vae_encode

        if not vae_encode.available():
            raise SystemExit("--vae-checkpoint needs wam_jax.models.vae, which this checkout does not have")
        transform = vae_encode.make_encoder(args.vae_checkpoint, drop_frames=args.drop_frames)
    vocab = None  # highway: the builder's default (sim.highway.INTENTS)
    if args.source == "synthetic" and config.intents:
        vocab = tuple(config.intents)

    with tqdm(total=args.clips or None, desc=f"{args.source} clips", unit="clip", file=sys.stderr) as bar:
        path = builders.build(builder_cls, config, args.out, clip_transform=transform, intent_vocab=vocab,
                              progress=bar.update, overwrite=args.overwrite)
    print(path)
    return 0


def _problem_kind(err) -> str:
    text = err.problem
    if "non-finite" in text:
        return "non-finite values"
    if "missing" in text and "file" in text:
        return "missing file"
    if any(w in text for w in ("cannot read", "cannot open", "truncated", "corrupted", "empty", "not a clip")):
        return "unreadable (truncated/corrupted)"
    return "schema (fields, shapes, dtypes)"


def inspect_main(args: argparse.Namespace) -> int:
    import collections
    import json

    from data_pipelines import pipeline, schema

    pipe = pipeline.make_pipeline({"data_dir": args.data, "split": args.split, "batch_size": 1, "shard_index": 0,
                                   "shard_count": 1, "drop_remainder": False})
    print(f"dataset:  {pipe.dataset_dir}")
    print(f"records:  {len(pipe.source)} in {len(pipe.source.files)} file(s)")
    print(f"spec:     {json.dumps(pipe.spec)}")
    if pipe.intent_vocab:
        print(f"intents:  {list(pipe.intent_vocab)}")
    # Every file is opened (cheap: its header), so a missing or truncated file shows without --validate.
    broken = []
    for path, expected in pipe.source.files:
        try:
            pipe.source._reader(path, expected, 0)
        except schema.RecordError as e:
            broken.append(e)
    bad_shown = 0
    for i in range(min(args.show, len(pipe.source))):
        try:
            clip = schema.deserialize_clip(pipe.source.read(i), decode_frames=False, spec=pipe.spec)
        except schema.RecordError as e:
            e = e if e.file is not None else e.at(*pipe.source.locate(i))
            print(f"  [{i}] BAD: {e}")
            bad_shown += 1
            continue
        print(f"  [{i}] {clip.source}/{clip.clip_id} T={clip.num_frames} N={clip.num_chunks} "
              f"command={clip.command.tolist()} intent={clip.intent}")
    for e in broken:
        print(f"BAD file: {e}")
    if not args.validate:
        if broken or bad_shown:
            print("the dataset is damaged; `--validate` counts the bad records")
            return 1
        print("(files open; `--validate` reads and checks every record)")
        return 0
    counts: collections.Counter = collections.Counter()
    examples: dict[str, str] = {}
    for i in range(len(pipe.source)):
        try:
            schema.deserialize_clip(pipe.source.read(i), decode_frames=True, spec=pipe.spec)
            counts["good"] += 1
        except schema.RecordError as e:
            e = e if e.file is not None else e.at(*pipe.source.locate(i))
            kind = _problem_kind(e)
            counts[kind] += 1
            examples.setdefault(kind, str(e))
    bad = sum(n for k, n in counts.items() if k != "good")
    print(f"validate: {counts['good']} good, {bad} bad of {len(pipe.source)} records")
    for kind, n in sorted(counts.items()):
        if kind != "good":
            print(f"  {n} {kind}, e.g. {examples[kind]}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    from wam_jax import cli as wam_cli

    return wam_cli.user_errors(_main)(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write a clip dataset (TFDS ArrayRecord)")
    b.add_argument("--source", required=True, choices=sorted(SOURCES))
    b.add_argument("--out", required=True, help="TFDS data dir to write under")
    b.add_argument("--clips", type=int, default=0, help="number of clips (0: every clip the source has)")
    b.add_argument("--src", help="source data root (navsim: holds navsim_logs/ and sensor_blobs/; physicalai: "
                                 "local copy of the HF repo)")
    b.add_argument("--name", default="default", help="builder config name (dataset subdirectory)")
    b.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    b.add_argument("--vae-checkpoint", help="Wan VAE params checkpoint: also store latents")
    b.add_argument("--drop-frames", action="store_true", help="with --vae-checkpoint, store latents only")
    b.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
    b.add_argument("--help-config", action="store_true", help="list the source's config fields and exit")
    i = sub.add_parser("inspect", help="summarise a built dataset")
    i.add_argument("--data", required=True)
    i.add_argument("--split", default="train")
    i.add_argument("--show", type=int, default=3)
    i.add_argument("--validate", action="store_true", help="read and check every record; exit 1 if any is bad")
    p = sub.add_parser("prepare", help="fit action statistics (and a PCA latent basis) for training")
    p.add_argument("--data", required=True, help="dataset directory `build` printed (or a dir above it)")
    p.add_argument("--refit", action="store_true", help="fit again even if the dataset holds the results")
    from wam_jax import cli as wam_cli

    wam_cli.add_config_args(p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    if args.command == "build":
        if args.clips == 0 and args.source in ("highway", "synthetic") and not args.help_config:
            raise SystemExit(f"--clips N is required for source {args.source!r}")
        return build_main(args)
    if args.command == "prepare":
        from data_pipelines import prepare

        return prepare.prepare_main(args)
    return inspect_main(args)


if __name__ == "__main__":
    sys.exit(main())
