"""One place that checks each kind of input at the public boundary, with one-line `ValueError`s
naming the argument (or flag) and what is allowed: integers against the int32 / 32-bit-seed
ranges the kernels hold (`numbers`), training hyper-parameters (`training`), masks (`masks`:
boolean or exactly 0/1), layer specs (`specs`), kernel layouts against the network's geometry
(`layout`). Files are read by `uticket_jax.files` (which uses these checks)."""

from uticket_jax.checks.layout import check_layout, first_break, hwio_shape
from uticket_jax.checks.masks import bool_mask, bool_masks, check_bool_mask, check_rank
from uticket_jax.checks.numbers import (
    INT32_MAX,
    MAX_N_PE,
    SEED_MAX,
    check_float,
    check_int,
    check_int_array,
    check_int_tuple,
    check_seed,
    parse_int,
    parse_int_list,
)
from uticket_jax.checks.specs import check_spec, check_specs
from uticket_jax.checks.training import (
    check_optimizer_settings,
    check_run_sizes,
    check_seed_value,
    check_total_steps,
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
    "parse_int",
    "parse_int_list",
]
