"""Read throughput of a clip dataset on this machine.

    python -m data_pipelines.bench_read --data DIR [--workers 0 2] [--batch-size 8] [--seconds 5]
    python -m data_pipelines.bench_read --synthetic [--clips 64]     # builds a synthetic dataset first

Prints one table row per stage: raw record reads (ArrayRecord + TFDS example parse), reads with full decode
(msgpack + PNG/JPEG frames, validation), and the whole Grain pipeline (shuffle, decode, window, batch) with each
worker count. clips/s counts clip records for the first two rows and training examples (windows) for the
pipeline rows; MB/s is decoded frame/latent bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def _timed(fn, seconds: float, max_items: int) -> tuple[int, float, int]:
    """Calls fn() (which returns (items, bytes)) until `seconds` pass or max_items are done."""
    start = time.perf_counter()
    items = nbytes = 0
    while items < max_items and time.perf_counter() - start < seconds:
        n, b = fn()
        items, nbytes = items + n, nbytes + b
    return items, time.perf_counter() - start, nbytes


def bench(data_dir: str, workers: list[int], batch_size: int, seconds: float, chunks_per_example: int = 0,
          split: str = "train") -> list[dict]:
    from data_pipelines import pipeline, schema

    base = dict(data_dir=data_dir, split=split, batch_size=batch_size, shard_index=0, shard_count=1,
                chunks_per_example=chunks_per_example)
    pipe = pipeline.make_pipeline(base)
    n = len(pipe.source)
    order = np.random.default_rng(0).permutation(n)
    rows = []

    position = [0]

    def read_raw():
        i = order[position[0] % n]
        position[0] += 1
        return 1, len(pipe.source.read(int(i)))

    items, dt, nbytes = _timed(read_raw, seconds, 10 * n)
    rows.append({"stage": "read (raw bytes)", "workers": 0, "items": items, "seconds": dt, "bytes": nbytes})

    position[0] = 0

    def read_decode():
        i = order[position[0] % n]
        position[0] += 1
        clip = schema.deserialize_clip(pipe.source.read(int(i)), spec=pipe.spec)
        size = sum(a.nbytes for a in (clip.frames, clip.latents) if a is not None)
        return 1, size

    items, dt, nbytes = _timed(read_decode, seconds, 10 * n)
    rows.append({"stage": "read + decode", "workers": 0, "items": items, "seconds": dt, "bytes": nbytes})

    for w in workers:
        p = pipeline.make_pipeline(dict(base, num_workers=w))
        with p.iterator() as it:
            next(it)  # worker start-up and first batch are not throughput

            def one_batch():
                batch = next(it)
                return len(batch["waypoints"]), sum(v.nbytes for k, v in batch.items() if k in ("frames", "latents"))

            items, dt, nbytes = _timed(one_batch, seconds, 10 ** 9)
        rows.append({"stage": "pipeline (batched)", "workers": w, "items": items, "seconds": dt, "bytes": nbytes})
    return rows


def format_table(rows: list[dict]) -> str:
    from wam_jax.tools import tables
    body = []
    for r in rows:
        rate = r["items"] / r["seconds"] if r["seconds"] else float("nan")
        mb = r["bytes"] / r["seconds"] / 1e6 if r["seconds"] else float("nan")
        body.append([r["stage"], r["workers"], r["items"], f"{r['seconds']:.2f}", f"{rate:.1f}", f"{mb:.1f}"])
    return tables.format_table(["stage", "workers", "items", "seconds", "clips/s", "MB/s"], body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.bench_read", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset directory (or a directory holding one)")
    parser.add_argument("--synthetic", action="store_true", help="build a synthetic dataset in a temp dir first")
    parser.add_argument("--clips", type=int, default=64, help="with --synthetic: number of clips")
    parser.add_argument("--image-size", type=int, nargs=2, default=(64, 64), help="with --synthetic: H W")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunks-per-example", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=5.0, help="time per stage")
    parser.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    if not args.data and not args.synthetic:
        parser.error("pass --data DIR or --synthetic")
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if args.synthetic:
            from data_pipelines import fixtures

            data = fixtures.build_synthetic(tmp, num_clips=args.clips, image_hw=tuple(args.image_size),
                                            num_chunks=3, frames_per_chunk=8, head_frames=1)
        rows = bench(data, args.workers, args.batch_size, args.seconds, args.chunks_per_example, args.split)
        print(f"dataset: {os.path.abspath(data)}   cpus: {os.cpu_count()}   batch_size: {args.batch_size}")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
