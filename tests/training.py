"""One plain training loop for the tests that need a briefly trained network (no Trainer)."""

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_bet.layers import clip_latent_weights_


def fit_plain(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    lr: float,
    criterion: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Adam over seeded shuffles in batches, latent weights clipped after every step.

    A Trainer adds seconds of overhead per epoch on these tiny networks. Returns ``net`` in eval
    mode.
    """
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            loss = criterion(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            clip_latent_weights_(net)
    return net.eval()
