"""The one BatchNorm fold: its integer form equals deploy mode's, and the old paths re-export it."""

import numpy as np
import torch
from torch import nn

from lightning_bet.functional.fold import fold_batchnorm, fold_integer, fold_thresholds


def test_fold_integer_is_the_float64_fold_rounded_exactly():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(6).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 3)
        bn.running_var.uniform_(1, 9)
        bn.weight.copy_(torch.tensor([1.0, -0.5, 0.0, 0.0, 2.0, -3.0]))
        bn.bias.copy_(torch.tensor([0.3, 0.1, 0.2, -0.2, -1.0, 0.7]))
    threshold, direction = fold_integer(bn, levels=255, fan_in=784)
    tau, d = fold_batchnorm(bn, mean=bn.running_mean.double(), var=bn.running_var.double())
    assert tau.dtype == torch.float64
    np.testing.assert_array_equal(threshold, fold_thresholds(tau, d, 255, 784))
    np.testing.assert_array_equal(direction, [1, -1, 1, 1, 1, -1])
    assert threshold.dtype == np.int64 and direction.dtype == np.int8
    # gamma = 0: constant sign(beta), thresholds clamped to the reachable range +- 1
    assert threshold[2] == -784 * 255 - 1 and threshold[3] == 784 * 255 + 1
    # exact against BatchNorm itself on integer pre-activations a / 255 (float64 module)
    a = torch.arange(-3000, 3001, dtype=torch.float64).view(-1, 1).expand(-1, 6)
    want = bn.double()(a / 255) >= 0
    got = torch.from_numpy(direction).double() * (a - torch.from_numpy(threshold).double()) >= 0
    assert torch.equal(got, want)


def test_old_import_paths_reexport_the_one_fold():
    import lightning_bet.deploy.fold as deploy_fold
    import lightning_bet.functional as functional
    import lightning_bet.functional.margins as margins

    assert margins.fold_batchnorm is fold_batchnorm
    assert functional.fold_batchnorm is fold_batchnorm
    assert deploy_fold.fold_thresholds is fold_thresholds
