"""Reading JSON files that may be anything: one-line errors naming the file, never a traceback.

`json.load` raises `UnicodeDecodeError` on binary data (a message that names no file),
`RecursionError` on deeply nested arrays, and reads a file of any size into memory. `read_json`
turns each of those into one `ValueError` naming the file.
"""

from __future__ import annotations

import json
import os
from typing import Any

MAX_BYTES = 64 * 2**20  # no JSON file of the project comes near this


def read_json(path: str, what: str, *, max_bytes: int = MAX_BYTES) -> Any:
    """The parsed content of the JSON file `path`.

    Args:
      path: the file.
      what: what messages name first (`spike_rates`, `--resume`).
      max_bytes: larger files are refused before they are read.

    Raises:
      ValueError: naming `what` and `path`: missing, not a file, unreadable, too large, not
        UTF-8, not JSON, nested too deeply.
    """
    where = f"{what}: {path!r}"
    if not os.path.exists(path):
        raise ValueError(f"{what}: no such file {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"{where} is not a file")
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ValueError(
                f"{where} has {size} bytes; a JSON file here holds at most {max_bytes}"
            )
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{where} cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{where} is not usable JSON (nested too deeply)") from None
