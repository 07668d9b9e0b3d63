"""One place that checks each kind of input at the public boundary, with one-line `ValueError`s
naming the argument (or flag) and what is allowed: integers against the int32 / 32-bit-seed
ranges the kernels hold and training hyper-parameters (`numbers`), masks (`masks`: boolean or
exactly 0/1), layer specs and kernel layouts against the network's geometry (`geometry`).
Files are read by `uticket_jax.files` (which uses these checks)."""

from uticket_jax.checks.geometry import (
    check_layout,
    check_spec,
    check_specs,
    first_break,
    hwio_shape,
    other_reading,
)
from uticket_jax.checks.masks import bool_mask, bool_masks, check_bool_mask, check_rank
from uticket_jax.checks.numbers import (
    INT32_MAX,
    MAX_N_PE,
    SEED_MAX,
    check_float,
    check_int,
    check_int_array,
    check_int_tuple,
    check_optimizer_settings,
    check_run_sizes,
    check_seed,
    check_seed_value,
    check_total_steps,
    parse_int,
    parse_int_list,
)

__all__ = [
    "INT32_MAX",
    "MAX_N_PE",
    "SEED_MAX",
    "bool_mask",
    "bool_masks",
    "check_bool_mask",
    "check_float",
    "check_int",
    "check_int_array",
    "check_int_tuple",
    "check_layout",
    "check_optimizer_settings",
    "check_rank",
    "check_run_sizes",
    "check_seed",
    "check_seed_value",
    "check_spec",
    "check_specs",
    "check_total_steps",
    "first_break",
    "hwio_shape",
    "other_reading",
    "parse_int",
    "parse_int_list",
]
