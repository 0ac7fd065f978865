import numpy as np
import pytest
import torch

from lightning_bet.functional.binarize import binarize_activation, binarize_weight, sign

# exact zeros, -0.0 and the STE boundaries +-1 are always part of the data
EDGE = [-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 1.5]


def test_sign_is_zero_free_and_keeps_dtype():
    x = torch.tensor(EDGE, dtype=torch.float64)
    out = sign(x)
    assert out.dtype == torch.float64
    assert out.tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("fn", [binarize_weight, binarize_activation])
def test_ste_gradient_matches_numpy_reference(fn):
    rng = np.random.default_rng(0)
    values = np.concatenate([np.array(EDGE), rng.uniform(-2, 2, size=40)])
    upstream = rng.normal(size=values.shape)
    x = torch.tensor(values, requires_grad=True)
    y = fn(x)
    y.backward(torch.tensor(upstream))
    expected_forward = np.where(values >= 0, 1.0, -1.0)
    expected_grad = upstream * (np.abs(values) <= 1)
    np.testing.assert_array_equal(y.detach().numpy(), expected_forward)
    np.testing.assert_allclose(x.grad.numpy(), expected_grad, rtol=0, atol=0)
