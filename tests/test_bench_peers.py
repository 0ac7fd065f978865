"""``bench peers``: the parts that run without the peers venv (which CI does not install)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_bet.bench import peers, peers_worker


def test_the_worker_rebuilds_the_same_float_network(tmp_path):
    """PyTorchFI injects into a plain Linear/BatchNorm/sign stack: it must be our network."""
    net = peers._random_net((1, 6, 6), (20, 12))
    peers._float_weights(net, tmp_path / "w.npz")
    rebuilt = peers_worker._float_network(dict(np.load(tmp_path / "w.npz")))
    q = torch.randint(0, 256, (200, 36), generator=torch.Generator().manual_seed(0))
    x = q.float() / 255
    with torch.no_grad():
        ours = net(x)
        theirs = rebuilt(x)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    assert torch.allclose(ours, theirs * net.head.scale, atol=1e-4)


def test_missing_peers_venv_names_make_peers(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTNING_BET_PEERS_PYTHON", str(tmp_path / "none" / "python"))
    with pytest.raises(FileNotFoundError, match="run `make peers`"):
        peers.peers_python()
    with pytest.raises(FileNotFoundError, match="run `make peers`"):
        peers.run(out_dir=tmp_path)
