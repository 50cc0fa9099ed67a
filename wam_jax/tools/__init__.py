"""Tools around the model: benchmarks, tables, video files."""
