"""Workload model of a PE array: mappings, PE loads, metrics and the u-Ticket rebalance kernels."""

from uticket_jax.workload.mappings import (
    INPUT_SPLIT,
    MAPPINGS,
    OUTPUT_CHANNEL,
    PEMapping,
    channel_counts,
    check_mapping,
    from_slots,
    get_mapping,
    kernel_dims,
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
    NetworkReport,
    network_loads,
    network_workload,
    rebalance_network,
    report_to_json,
)
from uticket_jax.workload.rebalance import (
    POLICIES,
    TARGETS,
    RebalanceReport,
    pe_targets,
    random_priorities,
)
from uticket_jax.workload.rebalance import rebalance as rebalance_layer

# `rebalance` stays the submodule (`uticket_jax.workload.rebalance.rebalance` is the one-layer
# function, re-exported as `rebalance_layer`), so `from uticket_jax.workload import rebalance`
# always means the same thing.

__all__ = [
    "INPUT_SPLIT",
    "MAPPINGS",
    "OUTPUT_CHANNEL",
    "POLICIES",
    "TARGETS",
    "Metrics",
    "NetworkReport",
    "PEMapping",
    "RebalanceReport",
    "analysed_layers",
    "channel_counts",
    "check_mapping",
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
    "rebalance_layer",
    "rebalance_network",
    "register_mapping",
    "registered_mapping",
    "report_to_json",
    "slot_valid",
    "to_slots",
    "unregister_mapping",
]
