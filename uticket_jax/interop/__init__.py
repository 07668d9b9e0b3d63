"""Tickets in and out of the library as NIR graphs (Neuromorphic Intermediate Representation).

`export_nir` writes a trained, masked model as a NIR graph (`nir_export`); `run_ticket` reads a
stage of an `experiments/lth.py` run and exports it; `import_nir` reads the masks, weights and
layer descriptions of any NIR graph (`nir_import`); `arrays` holds the layout conversions and the
batch-norm folding both directions share.

The import side needs neither Flax nor the models, so the launchers that only read NIR files
(`experiments/sweep.py`, `experiments/rebalance.py`) do not pay for them: the export-side names
are imported on first use.
"""

import importlib

from uticket_jax.files import is_nir_file
from uticket_jax.interop.arrays import Folded, fold_batch_norm
from uticket_jax.interop.nir_import import SUPPORTED, NIRTicket, import_nir, read_nir

# Export-side names -> their module (imported on first use: they need Flax and the models).
_LAZY = {
    "FIRINGS": "nir_export",
    "FORMAT": "nir_export",
    "POOLINGS": "nir_export",
    "export_nir": "nir_export",
    "layer_plan": "nir_export",
    "lif_parameters": "nir_export",
    "IMAGE_SHAPES": "run_ticket",
    "RunTicket": "run_ticket",
    "export_run_ticket": "run_ticket",
    "load_run_ticket": "run_ticket",
    "record_run_trace": "run_ticket",
    "stage_record": "run_ticket",
    "write_nir": "run_ticket",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SUPPORTED",
    "Folded",
    "NIRTicket",
    "fold_batch_norm",
    "import_nir",
    "is_nir_file",
    "read_nir",
    *_LAZY,
]
