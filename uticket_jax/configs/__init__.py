"""Named, complete settings of the u-Ticket pipeline (`experiments/lth.py --preset=NAME`).

One module per preset family, each returning a complete `LTHConfig` (every field set) and
documenting its command, runtime and result:

- `digits` (the default; embedded data): `configs/digits.py`;
- `fmnist` (Fashion-MNIST on 2 CPU cores, from the Debian package's files): `configs/fmnist.py`;
- `vgg16_cifar10`, `resnet19_cifar10`, `vgg16_cifar100`, `vgg16_fmnist` (the paper's):
  `configs/paper.py`.

`get(name)` is the one place that turns a name into a config; flags then override fields. A new
preset is a function returning an `LTHConfig` plus one line in `_REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable

from uticket_jax.configs import digits, fmnist, paper
from uticket_jax.pipeline.config import LTHConfig

_REGISTRY: dict[str, Callable[[], LTHConfig]] = {
    "digits": digits.get_config,
    "vgg16_cifar10": paper.vgg16_cifar10,
    "resnet19_cifar10": paper.resnet19_cifar10,
    "vgg16_cifar100": paper.vgg16_cifar100,
    "fmnist": fmnist.get_config,
    "vgg16_fmnist": paper.vgg16_fmnist,
}

NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get(name: str) -> LTHConfig:
    """The preset `name`.

    Args:
      name: one of `NAMES`.

    Returns:
      A fresh, complete `LTHConfig`.

    Raises:
      ValueError: `--preset: unknown 'x'; allowed: ...` for another name.
    """
    if name not in _REGISTRY:
        raise ValueError(f"--preset: unknown {name!r}; allowed: {', '.join(NAMES)}")
    return _REGISTRY[name]()


__all__ = ["NAMES", "get"]
