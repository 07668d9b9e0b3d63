"""The real Fashion-MNIST files of Debian's dataset-fashion-mnist package, for the tests on them.

Without the package (a user's machine) those tests skip with the reason; in CI (`CI=true`,
where .ci/run installs the package) they fail instead, so a missing install cannot pass quietly.
"""

import os

import pytest

from uticket_jax.data import fashion_mnist


def fashion_mnist_dir() -> str:
    """The Debian package's folder, or skip (fail under CI=true) naming what is missing."""
    folder = fashion_mnist.DEBIAN_DIR
    missing = [
        f for f in fashion_mnist.FASHION_MNIST_FILES if not os.path.isfile(os.path.join(folder, f))
    ]
    if missing:
        reason = (
            f"real Fashion-MNIST not installed: {folder} lacks {', '.join(missing)} "
            f"({fashion_mnist.APT_INSTALL})"
        )
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{reason}; CI=true, and .ci/run installs the package", pytrace=False)
        pytest.skip(reason)
    return folder
