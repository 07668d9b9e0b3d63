"""Workload model of a PE array: mappings, PE loads, metrics and the u-Ticket rebalance.

Modules: `mapping` (a mapping declared as its assignment), `derive` (every view derived from it),
`builtin_mappings`, `registry` (`MAPPINGS`), `mappings` (loads, capacities, layouts), `metrics`,
`targets` (per-PE target loads), `expected` (the cost-weighted target), `priorities`,
`selection` (the compiled choice) and `host_select` (numpy), `rebalance` (the pure transform
`rebalance` on any pytree), `network` (mask-file entry points: `rebalance_network`, reports),
`synthetic` (test nets).
"""

from uticket_jax.workload.expected import COST_UNITS, EXPECTED_WORK, expected_work
from uticket_jax.workload.kernel import Coords, Hwio, kernel_dims
from uticket_jax.workload.mapping import ColPaths, FastPaths, PEMapping, SlotPaths, TablePaths
from uticket_jax.workload.mappings import (
    INPUT_SPLIT,
    MAPPINGS,
    OUTPUT_CHANNEL,
    check_mapping,
    count_table,
    from_slots,
    get_mapping,
    pe_capacity,
    pe_loads,
    register_mapping,
    registered_mapping,
    slot_valid,
    to_slots,
    unregister_mapping,
)
from uticket_jax.workload.metrics import (
    Metrics,
    analysed_layers,
    group_figures,
    layer_metrics,
    loads_metrics,
    network_metrics,
)
from uticket_jax.workload.network import (
    network_loads,
    network_workload,
    rebalance_network,
    report_to_json,
)
from uticket_jax.workload.priorities import POLICIES, random_priorities
from uticket_jax.workload.rebalance import (
    BACKENDS,
    REBALANCE_TARGETS,
    NetworkReport,
    RebalanceReport,
    check_finite,
    rebalance,
    rebalance_layer,
)
from uticket_jax.workload.targets import TARGETS, pe_targets

__all__ = [
    "BACKENDS",
    "COST_UNITS",
    "EXPECTED_WORK",
    "INPUT_SPLIT",
    "MAPPINGS",
    "OUTPUT_CHANNEL",
    "POLICIES",
    "REBALANCE_TARGETS",
    "TARGETS",
    "ColPaths",
    "Coords",
    "FastPaths",
    "Hwio",
    "Metrics",
    "NetworkReport",
    "PEMapping",
    "RebalanceReport",
    "SlotPaths",
    "TablePaths",
    "analysed_layers",
    "check_finite",
    "check_mapping",
    "count_table",
    "expected_work",
    "from_slots",
    "get_mapping",
    "group_figures",
    "kernel_dims",
    "layer_metrics",
    "loads_metrics",
    "network_loads",
    "network_metrics",
    "network_workload",
    "pe_capacity",
    "pe_loads",
    "pe_targets",
    "random_priorities",
    "rebalance",
    "rebalance_layer",
    "rebalance_network",
    "register_mapping",
    "registered_mapping",
    "report_to_json",
    "slot_valid",
    "to_slots",
    "unregister_mapping",
]
