"""Result files of the launchers: JSON and CSV, written atomically (`files.write_atomic`).

Work directories (recognized, locked, set aside) are `workdir` and `lock`."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from uticket_jax import files


def jsonable(obj: Any) -> Any:
    """Converts numpy/jax scalars and arrays to Python values; NaN and inf become None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` atomically, with the user's umask (`files.write_text`)."""
    files.write_text(path, text)


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON (see `jsonable`), atomically."""
    write_text_atomic(path, json.dumps(jsonable(obj), indent=2) + "\n")


def write_csv(path: str, rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None):
    """Writes dict rows as CSV (columns: `columns`, else all keys in first-seen order)."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: jsonable(v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())
