"""u-Ticket in your own training loop: a plain Flax model, optax, and three lottery-ticket rounds.

Each round prunes the surviving weights by magnitude (IMP), rebalances the masks so every PE of
a group holds the same number of non-zeros (u-Ticket), rewinds the surviving weights to the
initialization and retrains. The loop, the model and the data are this file's; uticket_jax
provides `sparsity.make_masks`, `sparsity.prune_magnitude`, `sparsity.apply_masks` (the rewind),
`training.masked` (optax: pruned weights get zero updates) and `workload.rebalance`.

    pip install -e '.[experiments]'   # scikit-learn's bundled digits
    python docs/examples/uticket_in_your_loop.py
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
from sklearn.datasets import load_digits

from uticket_jax import sparsity, training, workload


class CNN(nn.Module):
    """Somebody's model: three convs and a classifier on 8x8 digits."""

    @nn.compact
    def __call__(self, x):
        for width in (16, 32, 32):
            x = nn.relu(nn.Conv(width, (3, 3))(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def main(epochs: int = 8, rounds: int = 3, percent: float = 40.0, n_pe: int = 8, seed: int = 0):
    digits = load_digits()
    x, y = (digits.images[..., None] / 16.0).astype(np.float32), digits.target
    (xtr, ytr), (xte, yte) = (x[:1500], y[:1500]), (x[1500:], y[1500:])
    model, tx = CNN(), training.masked(optax.adam(3e-3))
    init = model.init(jax.random.key(seed), xtr[:1])["params"]
    masks = sparsity.make_masks(init)  # every conv and dense kernel is prunable
    # The paper's choice of rebalanced layers: the convs but the first (it sees the image).
    convs = lambda name, mask: mask.ndim == 4 and name != "Conv_0/kernel"  # noqa: E731

    @jax.jit
    def step(params, opt_state, masks, xb, yb):
        def loss(p):
            logits = model.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params, masks=masks)
        return optax.apply_updates(params, updates), opt_state

    def train(params, masks):
        opt_state = tx.init(params)
        for _ in range(epochs):
            for i in range(0, len(xtr), 100):
                params, opt_state = step(
                    params, opt_state, masks, xtr[i : i + 100], ytr[i : i + 100]
                )
        return params

    def accuracy(params):
        return float((model.apply({"params": params}, xte).argmax(-1) == yte).mean())

    params = train(init, masks)
    print(f"dense:   accuracy {accuracy(params):.3f}")
    for r in range(1, rounds + 1):
        masks = sparsity.prune_magnitude(params, masks, percent)  # IMP: |w| of the trained net
        masks, report = workload.rebalance(masks, params, n_pe=n_pe, include=convs)  # u-Ticket
        params = train(sparsity.apply_masks(init, masks), masks)  # rewind, then retrain
        print(
            f"round {r}: sparsity {sparsity.sparsity_report(masks)['global']:.3f}, PE utilization"
            f" {float(report.before.utilization):.3f} -> {float(report.after.utilization):.3f},"
            f" accuracy {accuracy(params):.3f}"
        )
    return masks, params, accuracy(params)


if __name__ == "__main__":
    main()
