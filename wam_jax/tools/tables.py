"""The one plain-text table and strict-JSON writer every command uses."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left_columns: int = 1,
                 title: str | None = None, notes: Sequence[str] = ()) -> str:
    """Aligned columns: the first `left_columns` left-justified, the rest right; a dashed rule under the header.
    Cells are printed with str(): format numbers before passing them."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) if i < left_columns else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths)))
    lines = [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    if title:
        lines.insert(0, title)
    lines += [f"  {n}" for n in notes]
    return "\n".join(lines)


def json_safe(obj: Any) -> Any:
    """NaN → None, numpy scalars and arrays → Python, tuples → lists, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj


def write_json(path: str, payload: Any, indent: int = 1) -> str:
    """Writes `payload` as strict JSON (see `json_safe`); values JSON cannot hold are written as str()."""
    with open(path, "w") as f:
        json.dump(json_safe(payload), f, indent=indent, default=str, allow_nan=False)
    return path
