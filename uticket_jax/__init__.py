"""uticket_jax: workload-balanced lottery-ticket pruning (u-Ticket) of spiking neural networks."""

__version__ = "0.1.0"
