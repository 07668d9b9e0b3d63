"""The paper's settings (Yin et al., IEEE TETCI 2024, Sec. V): `vgg16_cifar10`,
`resnet19_cifar10`, `vgg16_cifar100`, `vgg16_fmnist`.

  python experiments/lth.py --preset=vgg16_cifar10 --data_dir=/path/to/cifar --workdir=runs/vgg

T = 5, batch 128, SGD momentum 0.9, lr 0.1, weight decay 5e-4, cosine schedule, 15 rounds of
25 % global magnitude pruning (98.7 % sparsity), late rewinding to epoch 20, 16 PEs per group,
output-channel mapping, magnitude policy, `ceil_mean` target, `sata` energy model; each pruning
round retrains all epochs with a fresh schedule (`retrain="full"`, as the authors' code does).
The 100 epochs per round are ours (the paper does not fix them in the text). Runtime: these
runs need a GPU (a round of VGG16 is hours on a CPU); none has been run to the end in this
project, so there is no result of ours to quote: the paper reports u-Ticket's latency and
energy reductions over LTH at equal accuracy.
"""

from __future__ import annotations

from uticket_jax.pipeline.config import ARMS, LTHConfig


def _paper(dataset: str, arch: str) -> LTHConfig:
    """The paper's settings for `arch` on `dataset`."""
    return LTHConfig(
        dataset=dataset,
        train_subset=0,
        arch=arch,
        timesteps=5,
        epochs=100,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        rounds=15,
        prune_percent=25.0,
        scope="global",
        prunable="conv_dense",
        rewind_epoch=20,
        retrain="full",
        arms=ARMS,
        n_pe=16,
        mapping="output_channel",
        energy_model="sata",
        policy="magnitude",
        target="ceil_mean",
        et=False,
        et_candidates=(1, 2, 3),
        et_threshold=0.05,
        skip_first_layer=True,
        seed=0,
        eval_batch_size=256,
        eval_every=1,
        trace_images=256,
    )


def vgg16_cifar10() -> LTHConfig:
    """VGG16-BN on CIFAR-10.

    Returns:
      The complete `LTHConfig`.
    """
    return _paper("cifar10", "vgg16")


def resnet19_cifar10() -> LTHConfig:
    """ResNet19 on CIFAR-10.

    Returns:
      The complete `LTHConfig`.
    """
    return _paper("cifar10", "resnet19")


def vgg16_cifar100() -> LTHConfig:
    """VGG16-BN on CIFAR-100.

    Returns:
      The complete `LTHConfig`.
    """
    return _paper("cifar100", "vgg16")


def vgg16_fmnist() -> LTHConfig:
    """VGG16-BN with one input channel on Fashion-MNIST, the authors' input pipeline.

      python experiments/lth.py --preset=vgg16_fmnist --workdir=runs/vgg_fmnist

    The dataset `fashion_mnist32`: each 28x28 image resized to 32x32 by Pillow's bilinear resize
    (as the authors' `transforms.Resize(32)`), random 32x32 crops of the image padded by 4 black
    pixels and random horizontal flips in training, mean 0.5 / std 0.5; all 60,000 training
    images. Files from --data_dir, or without it from the Debian package (`apt-get install
    dataset-fashion-mnist`). Needs a GPU like the CIFAR presets; not run here.

    Returns:
      The complete `LTHConfig`.
    """
    return _paper("fashion_mnist32", "vgg16")
