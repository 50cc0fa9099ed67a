"""Data: driving sources → versioned clip records in TFDS ArrayRecord files → Grain training batches.

    schema.py          the clip record (fields, shapes, serialisation, validation, RecordError)
    builders.py        TFDS GeneratorBasedBuilder base writing clip records; `build(...)`
    sources/           highway-env (expert clips), NAVSIM/OpenScene logs, PhysicalAI-AV repo copies
    fixtures.py        tiny fixtures in the sources' real formats + a synthetic builder (tests, benchmarks)
    pipeline.py        Grain pipeline: make_pipeline(config) → iterator with get_state/set_state;
                       make_train_iterator(config, process_index, process_count) for the trainer
    vae_encode.py      optional Wan VAE pre-encoding of frames into latents
    __main__.py        `python -m data_pipelines build|inspect`
    bench_read.py      `python -m data_pipelines.bench_read --data DIR`: clips/s table
"""
