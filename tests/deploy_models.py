"""Random deploy-mode networks whose thresholds hit real pre-activations (shared test builder)."""

from collections.abc import Callable

import numpy as np

from lightning_bet.deploy.model import DeployLayer, DeployModel


def random_deploy_model(
    sizes,
    levels: int,
    rng: np.random.Generator,
    q: np.ndarray,
    constants: Callable[[int, int], list[int]],
    scale: float = 0.25,
    input_shape=None,
) -> DeployModel:
    """Random +-1 weights; thresholds taken from the real pre-activations of ``q`` (so that
    ``a == T`` occurs), constant neurons first and random directions.

    ``constants(layer, n_in)`` gives the thresholds of the first neurons of hidden layer
    ``layer`` (beyond the reachable range: outputs that never change).
    """
    layers = []
    v = q.reshape(len(q), -1).astype(np.int64)
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        w = rng.choice(np.array([-1, 1], np.int8), size=(n_out, n_in))
        if i == len(sizes) - 2:
            layers.append(DeployLayer(w, None, None, i > 0))
            break
        a = v @ w.astype(np.int64).T
        t = a[rng.integers(0, len(a), n_out), np.arange(n_out)].copy()
        fixed = constants(i, n_in)[:n_out]
        t[: len(fixed)] = fixed
        d = rng.choice(np.array([-1, 1], np.int8), size=n_out)
        layers.append(DeployLayer(w, t.astype(np.int64), d, i > 0))
        v = np.where(d * (a - t) >= 0, 1, -1)
    return DeployModel(tuple(layers), levels, scale, input_shape or (sizes[0],))
