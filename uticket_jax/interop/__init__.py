"""Tickets in and out of the library as NIR graphs (Neuromorphic Intermediate Representation).

`export_nir` writes a trained, masked model as a NIR graph (`nir_export`); `run_ticket` reads a
stage of an `experiments/lth.py` run and exports it; `import_nir` reads the masks, weights and
layer descriptions of any NIR graph (`nir_import`); `arrays` holds the layout conversions and the
batch-norm folding both directions share.
"""

from uticket_jax.interop.arrays import Folded, fold_batch_norm
from uticket_jax.interop.nir_export import FORMAT, POOLINGS, export_nir, layer_plan, lif_parameters
from uticket_jax.interop.nir_import import (
    SUPPORTED,
    NIRTicket,
    import_nir,
    is_nir_file,
    read_nir,
)
from uticket_jax.interop.run_ticket import (
    IMAGE_SHAPES,
    RunTicket,
    export_run_ticket,
    load_run_ticket,
    stage_record,
    write_nir,
)

__all__ = [
    "FORMAT",
    "IMAGE_SHAPES",
    "POOLINGS",
    "SUPPORTED",
    "Folded",
    "NIRTicket",
    "RunTicket",
    "export_nir",
    "export_run_ticket",
    "fold_batch_norm",
    "import_nir",
    "is_nir_file",
    "layer_plan",
    "lif_parameters",
    "load_run_ticket",
    "read_nir",
    "stage_record",
    "write_nir",
]
