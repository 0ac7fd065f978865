import itertools
import math

import pytest
import torch
from torch import nn

from lightning_bet.functional.faults import FaultModel, make_generator, sample_fault_indices
from lightning_bet.functional.margins import (
    binary_preactivation,
    flip_probability,
    fold_batchnorm,
    neuron_margins,
    output_margin,
    tolerated_flips,
    tolerated_flips_real,
)


def _rand_signs(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(*shape, generator=g) < 0.5, -1.0, 1.0)


def _brute_force_tolerated(x, w_row, tau, d):
    """Largest k such that no set of <= k flips in w_row changes sign(d (a - tau) >= 0)."""
    n = w_row.numel()

    def out(w):
        return bool(d * (float(w @ x) - tau) >= 0)

    ref = out(w_row)
    for k in range(1, n + 1):
        for subset in itertools.combinations(range(n), k):
            w = w_row.clone()
            w[list(subset)] *= -1
            if out(w) != ref:
                return k - 1
    return n


def test_tolerated_flips_matches_exhaustive_enumeration():
    n = 5
    x = _rand_signs(8, n, seed=1)
    w = _rand_signs(1, n, seed=2)
    # integer (tie) and fractional thresholds, inside and outside [-n, n], both directions
    taus = [-7.0, -5.0, -4.5, -3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.0, 3.5, 5.0, 6.0]
    a = binary_preactivation(x, w)  # (8, 1)
    for tau, d in itertools.product(taus, (1.0, -1.0)):
        t = tolerated_flips(a, torch.tensor([tau]), torch.tensor([d]), n)
        for i in range(x.shape[0]):
            expected = _brute_force_tolerated(x[i], w[0], tau, d)
            assert int(t[i, 0]) == expected, (tau, d, i)


def test_tolerated_flips_gamma_zero_is_all():
    bn = nn.BatchNorm1d(2).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.0, 0.0]))
        bn.bias.copy_(torch.tensor([0.3, -0.2]))
    tau, d = fold_batchnorm(bn)
    a = torch.tensor([[3, -3], [0, 1]])
    assert tolerated_flips(a, tau, d, 4).tolist() == [[4, 4], [4, 4]]


@pytest.mark.parametrize("gamma_sign", [1.0, -1.0])
def test_fold_batchnorm_agrees_with_batchnorm_sign(gamma_sign):
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(16).eval()
    with torch.no_grad():
        bn.weight.copy_(gamma_sign * (torch.rand(16) + 0.1))
        bn.bias.copy_(torch.randn(16))
        bn.running_mean.copy_(torch.randn(16) * 3)
        bn.running_var.copy_(torch.rand(16) + 0.5)
    a = torch.arange(-20, 21, dtype=torch.float32).view(-1, 1).expand(-1, 16)
    tau, d = fold_batchnorm(bn)
    folded = d * (a - tau) >= 0
    assert torch.equal(folded, bn(a) >= 0)


def test_binary_preactivation_is_exact_and_validates():
    x = _rand_signs(4, 33, seed=3)
    w = torch.randn(7, 33)
    w[0, 0] = 0.0  # sign(0) = +1
    expected = (x.double() @ torch.where(w >= 0, 1.0, -1.0).double().T).long()
    assert torch.equal(binary_preactivation(x, w), expected)
    with pytest.raises(ValueError, match="only -1 and \\+1"):
        binary_preactivation(x * 0.5, w)
    with pytest.raises(ValueError, match="Expected `x` of shape"):
        binary_preactivation(x, w[:, :5])


def test_margins_and_output_margin():
    a = torch.tensor([[3, -1]])
    assert neuron_margins(a, torch.tensor([0.5, 1.0])).tolist() == [[2.5, 2.0]]
    logits = torch.tensor([[5, 1, 3], [0, 4, 4]])
    assert output_margin(logits, torch.tensor([0, 2])).tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match="Expected `logits` of shape"):
        output_margin(logits, torch.tensor([0]))


def test_tolerated_flips_real_matches_brute_force_worst_case():
    g = torch.Generator().manual_seed(4)
    n = 5
    x = torch.rand(6, n, generator=g)
    x[0, 1] = 0.0
    w = _rand_signs(2, n, seed=5)
    a = x @ w.T
    tau = torch.tensor([0.3, -0.4])
    d = torch.tensor([1.0, -1.0])
    t = tolerated_flips_real(a, tau, d, x)
    for i in range(6):
        for j in range(2):
            # worst case over *any* weight signs: brute force over subsets of size k moving a
            # by 2|x_i| toward the threshold
            s = float(d[j] * (a[i, j] - tau[j]))
            best = n
            for k in range(1, n + 1):
                worst = max(
                    sum(2 * float(x[i, q]) for q in subset)
                    for subset in itertools.combinations(range(n), k)
                )
                survives = (s - worst >= 0) if s >= 0 else (s + worst < 0)
                if not survives:
                    best = k - 1
                    break
            assert int(t[i, j]) == best


@pytest.mark.parametrize("p", [0.01, 0.05])
def test_flip_probability_agrees_with_monte_carlo(p):
    n, out, samples, trials = 256, 32, 64, 200
    x = _rand_signs(samples, n, seed=6)
    w = _rand_signs(out, n, seed=7)
    a = binary_preactivation(x, w)
    g = torch.Generator().manual_seed(8)
    # thresholds spread around the pre-activations so margins range from 0 to large
    tau = torch.randn(out, generator=g) * 12
    d = torch.where(torch.rand(out, generator=g) < 0.3, -1.0, 1.0)
    clean = d * (a - tau) >= 0
    changed = torch.zeros(samples, out)
    model = FaultModel(p=p)
    for trial in range(trials):
        idx = sample_fault_indices(w, model, make_generator(0, p, trial))
        wf = w.flatten().clone()
        wf[idx] *= -1
        af = binary_preactivation(x, wf.view(out, n))
        changed += ((d * (af - tau) >= 0) != clean).float()
    mc = changed / trials
    lattice = flip_probability(a, tau, d, p, float(n), n=n)
    gaussian = flip_probability(a, tau, d, p, float(n))
    assert abs(float(lattice.mean() - mc.mean())) < 0.02
    assert abs(float(gaussian.mean() - mc.mean())) < 0.02
    # per neuron (averaged over samples) the lattice form stays within 2 points too
    assert float((lattice.mean(0) - mc.mean(0)).abs().max()) < 0.02
    assert float(mc.mean()) > 0.005  # the test exercises real flips


def test_flip_probability_edge_cases():
    a = torch.tensor([[4, -4]])
    tau = torch.tensor([0.0, float("inf")])
    d = torch.tensor([1.0, 1.0])
    assert torch.equal(
        flip_probability(a, tau, d, 0.0, 16.0), torch.zeros(1, 2, dtype=torch.float64)
    )
    prob = flip_probability(a, tau, d, 0.1, 16.0)
    assert prob[0, 1] == 0.0 and 0 < prob[0, 0] < 0.5
    expected = 0.5 * math.erfc((0.8 * 4) / math.sqrt(4 * 0.1 * 0.9 * 16) / math.sqrt(2))
    assert math.isclose(float(prob[0, 0]), expected, rel_tol=1e-9)
    with pytest.raises(ValueError, match=r"Expected `p` to be a float in \[0, 1\], but got 1.5"):
        flip_probability(a, tau, d, 1.5, 16.0)
