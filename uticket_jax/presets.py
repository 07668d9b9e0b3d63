"""Named settings of the u-Ticket pipeline (`experiments/lth.py --preset=NAME`); flags override.

digits (the default; embedded data, no download):
  python experiments/lth.py
  Dense round + 11 rounds x 2 arms on scikit-learn's 8x8 digits with the small conv SNN, to
  95.8 % sparsity (0.75^11 of the weights left). About 3.5 minutes on 2 CPU cores; LTH's PE
  utilization falls to 62 % while u-Ticket stays at 100 % (latency -26 %) at equal accuracy
  (the table is in BUILD_NOTES.md).

vgg16_cifar10 / resnet19_cifar10 / vgg16_cifar100 (the paper's settings, Yin et al. 2024 Sec. V):
  python experiments/lth.py --preset=vgg16_cifar10 --data_dir=/path/to/cifar --workdir=runs/vgg
  T = 5, batch 128, SGD momentum 0.9, lr 0.1, weight decay 5e-4, cosine schedule, 15 rounds of
  25 % (98.7 % sparsity), late rewinding to epoch 20, n_pe = 16, output_channel mapping. The
  epochs per round are ours (the paper does not fix them in the text); these runs need a GPU: a
  round of VGG16 is hours on a CPU.

vgg16_fmnist (the paper's Fashion-MNIST setting, for GPUs like the CIFAR presets):
  python experiments/lth.py --preset=vgg16_fmnist --workdir=runs/vgg_fmnist
  The same settings as vgg16_cifar10, on `fashion_mnist32`: the authors' input pipeline (each
  28x28 image resized to 32x32 by Pillow's bilinear resize as their transforms.Resize(32) does,
  random 32x32 crops of the image padded by 4 black pixels and random horizontal flips in
  training, mean 0.5 / std 0.5) and VGG16-BN with one input channel, all 60,000 training images.
  Files from --data_dir, or without it from the Debian package (apt-get install
  dataset-fashion-mnist). Not run here (no GPU was lent).
"""

from __future__ import annotations

from typing import Any

_PAPER = {
    "timesteps": 5,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "rounds": 15,
    "prune_percent": 25.0,
    "rewind_epoch": 20,
    "epochs": 100,
    "n_pe": 16,
    "mapping": "output_channel",
}

PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "dataset": "digits",
        "arch": "digits_snn",
        "timesteps": 4,
        "batch_size": 64,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "epochs": 8,
        "rounds": 11,
        "prune_percent": 25.0,
        "rewind_epoch": 1,
        "n_pe": 16,
        "mapping": "output_channel",
    },
    "fmnist": {
        "dataset": "fashion_mnist",
        "train_subset": 15000,
        "arch": "fmnist_snn",
        "timesteps": 4,
        "batch_size": 64,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "epochs": 4,
        "rounds": 11,
        "prune_percent": 25.0,
        "rewind_epoch": 1,
        "n_pe": 16,
        "mapping": "output_channel",
        "eval_batch_size": 500,
    },
    "vgg16_cifar10": {"dataset": "cifar10", "arch": "vgg16", **_PAPER},
    "resnet19_cifar10": {"dataset": "cifar10", "arch": "resnet19", **_PAPER},
    "vgg16_cifar100": {"dataset": "cifar100", "arch": "vgg16", **_PAPER},
    "vgg16_fmnist": {"dataset": "fashion_mnist32", "arch": "vgg16", **_PAPER},
}


def get_preset(name: str) -> dict[str, Any]:
    """The settings of preset `name` (a copy); ValueError naming the allowed presets."""
    if name not in PRESETS:
        raise ValueError(f"--preset: unknown {name!r}; allowed: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
