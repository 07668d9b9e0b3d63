"""Spiking neurons: SpikingJelly-compatible LIF dynamics as pure JAX functions and Flax modules."""

from uticket_jax.snn.lif import (
    DEFAULT_SURROGATE,
    DEFAULT_TAU,
    LIF,
    LIFConfig,
    lif_init,
    lif_multistep,
    lif_multistep_with_v,
    lif_step,
)
from uticket_jax.snn.surrogate import (
    SURROGATES,
    ATan,
    Sigmoid,
    Surrogate,
    get_surrogate,
    heaviside,
    spike,
)

__all__ = [
    "DEFAULT_SURROGATE",
    "DEFAULT_TAU",
    "LIF",
    "LIFConfig",
    "SURROGATES",
    "ATan",
    "Sigmoid",
    "Surrogate",
    "get_surrogate",
    "heaviside",
    "lif_init",
    "lif_multistep",
    "lif_multistep_with_v",
    "lif_step",
    "spike",
]
