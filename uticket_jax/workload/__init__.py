"""Workload model of a PE array: mappings, PE loads, metrics and the u-Ticket rebalance kernels."""
