"""Sparsity: boolean mask pytrees and the project's `.npz` mask files (`masks`), and magnitude
pruning of the surviving weights (`pruning`)."""

from uticket_jax.sparsity.masks import (
    LAYOUTS,
    apply_masks,
    check_same_keys,
    default_prunable,
    flatten,
    from_hwio,
    load_mask_file,
    load_weight_file,
    make_masks,
    save_mask_file,
    save_npz_atomic,
    sparsity_report,
    to_hwio,
    unflatten,
)
from uticket_jax.sparsity.pruning import SCOPES, prune_magnitude

__all__ = [
    "LAYOUTS",
    "SCOPES",
    "apply_masks",
    "check_same_keys",
    "default_prunable",
    "flatten",
    "from_hwio",
    "load_mask_file",
    "load_weight_file",
    "make_masks",
    "prune_magnitude",
    "save_mask_file",
    "save_npz_atomic",
    "sparsity_report",
    "to_hwio",
    "unflatten",
]
