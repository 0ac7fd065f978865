"""network.blocks: the block view of any module, against the reference models' own structure."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_bet.functional.binarize import binarize_activation
from lightning_bet.layers import BinaryConv2d, BinaryLinear, Sign
from lightning_bet.models import OutputLayer, build_model
from lightning_bet.module import BNNClassifier
from lightning_bet.network import blocks


def conv_sequential() -> nn.Sequential:
    return nn.Sequential(
        BinaryConv2d(1, 4, 3, padding=1, bias=False, binarize_input=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(4),
        Sign(),
        BinaryConv2d(4, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        Sign(),
        nn.Flatten(),
        BinaryLinear(96, 16, bias=False),
        nn.BatchNorm1d(16),
        BinaryLinear(16, 10, bias=False),  # binarize_input=True binarizes the block above
    )


class AttributeModule(L.LightningModule):
    """Layers as direct attributes, next to a loss and a metric (skipped by the walk)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = BinaryLinear(64, 12, bias=False, binarize_input=False)
        self.bn1 = nn.BatchNorm1d(12)
        self.criterion = nn.CrossEntropyLoss()
        self.acc = MulticlassAccuracy(10)
        self.out = OutputLayer(12, 10)
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(binarize_activation(self.bn1(self.fc1(x.flatten(1)))))


def describe(module: nn.Module) -> list[tuple]:
    view = blocks(module)
    rows = [(b.name, type(b.layer).__name__, b.pool is not None, b.flatten) for b in view.blocks]
    return [*rows, (view.head.name, view.head.flatten, view.head.output is not None)]


def test_reference_models_are_one_case():
    assert describe(build_model("fcnn", (1, 8, 8), 10, (16, 8))) == [
        ("blocks.0.layer", "BinaryLinear", False, True),
        ("blocks.1.layer", "BinaryLinear", False, False),
        ("head.layer", False, True),
    ]
    module = BNNClassifier(arch="vgg3", input_shape=(1, 8, 8), hidden=(8,))
    view = blocks(module)
    assert [b.name for b in view.blocks] == [f"net.blocks.{i}.layer" for i in range(3)]
    assert [b.pool is not None for b in view.blocks] == [True, True, False]
    assert view.module is module.net and view.input_shape == (1, 8, 8)
    assert view.head.scale.item() == pytest.approx(module.net.head.scale.item())
    for block, reference in zip(view.blocks, module.net.blocks, strict=True):
        assert (block.layer, block.bn, block.pool) == (
            reference.layer,
            reference.bn,
            reference.pool,
        )
    no_hidden = blocks(build_model("fcnn", (1, 8, 8), 10, (4,)).head)
    assert no_hidden.blocks == () and no_hidden.head.flatten is False


def test_user_sequential_and_attribute_modules():
    assert describe(conv_sequential()) == [
        ("0", "BinaryConv2d", True, False),
        ("4", "BinaryConv2d", False, False),
        ("8", "BinaryLinear", False, True),
        ("10", False, False),
    ]
    view = blocks(conv_sequential())
    assert view.input_shape is None and view.head.scale.item() == 1.0
    assert [b.fan_in for b in view.blocks] == [9, 36, 96] and view.head.fan_in == 16
    module = AttributeModule()
    assert describe(module) == [("fc1", "BinaryLinear", False, False), ("out.layer", False, True)]
    assert blocks(module).module is module and blocks(module).input_shape == (1, 8, 8)


def test_run_returns_the_preactivations_of_every_block():
    torch.manual_seed(0)
    net = conv_sequential().train()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    view = blocks(net)
    preacts, logits = view.run(x)
    h, want = x, []
    for block in view.blocks:
        a = block.preactivation(h)
        want.append(a)
        h = binarize_activation(block.bn(a))
    assert len(preacts) == 3
    for got, ref in zip(preacts, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(logits, view.head.layer(h), rtol=0, atol=0)
    assert logits.requires_grad  # gradients flow as in the forward pass
    assert not any(b.bn._forward_pre_hooks for b in view.blocks)


def test_recording_refuses_an_execution_order_unlike_the_module_order():
    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = BinaryLinear(8, 8, bias=False)
            self.bn1 = nn.BatchNorm1d(8)
            self.fc2 = BinaryLinear(8, 8, bias=False)
            self.bn2 = nn.BatchNorm1d(8)
            self.out = BinaryLinear(8, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # uses block 2 before block 1
            return self.out(self.bn1(self.fc1(self.bn2(self.fc2(x)))))

    view = blocks(Swapped())
    with pytest.raises(
        RuntimeError, match=r"to run in module order \['fc1', 'fc2'\], but they ran"
    ):
        view.run(torch.rand(4, 8))


PREFIX = (
    r"Expected `module` \(Sequential\) to be made of hidden blocks .* then an output BinaryLinear"
)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            [BinaryLinear(4, 4), nn.ReLU(), BinaryLinear(4, 2)],
            r"`1` \(ReLU\) breaks the pattern: it is not part of the pattern after `0` "
            r"\(BinaryLinear\)",
        ),
        (
            [BinaryLinear(4, 4), nn.BatchNorm1d(4), BinaryLinear(4, 2, binarize_input=False)],
            r"`2` \(BinaryLinear\) breaks the pattern: the output of the block before it \(`1` "
            r"\(BatchNorm1d\)\) is not binarized: put a Sign after its BatchNorm or give this "
            r"layer binarize_input=True",
        ),
        (
            [BinaryConv2d(1, 4, 3), nn.AvgPool2d(2), nn.BatchNorm2d(4), BinaryLinear(4, 2)],
            r"`1` \(AvgPool2d\) breaks the pattern: only max-pooling \(nn.MaxPool2d after a "
            r"BinaryConv2d\) is supported",
        ),
        (
            [BinaryLinear(4, 4), nn.MaxPool2d(2), nn.BatchNorm1d(4), BinaryLinear(4, 2)],
            r"`1` \(MaxPool2d\) breaks the pattern: expected a MaxPool2d only after a BinaryConv2d",
        ),
        (
            [BinaryLinear(4, 4), nn.BatchNorm2d(4), BinaryLinear(4, 2)],
            r"`1` \(BatchNorm2d\) breaks the pattern: expected a BatchNorm1d with 4 features "
            r"after `0` \(BinaryLinear\)",
        ),
        (
            [BinaryLinear(4, 4), nn.BatchNorm1d(5), BinaryLinear(4, 2)],
            r"`1` \(BatchNorm1d\) breaks the pattern: expected 4 features after `0` "
            r"\(BinaryLinear\), but it has 5",
        ),
        (
            [BinaryLinear(4, 4), BinaryLinear(4, 2)],
            r"`1` \(BinaryLinear\) breaks the pattern: expected a BatchNorm after `0`",
        ),
        (
            [BinaryLinear(4, 4), nn.BatchNorm1d(4), Sign(), BinaryConv2d(4, 2, 1)],
            r"`3` \(BinaryConv2d\) breaks the pattern: expected no convolution after a dense",
        ),
        (
            [BinaryLinear(4, 4), nn.BatchNorm1d(4), BinaryLinear(4, 2), nn.Softmax(1)],
            r"`3` \(Softmax\) breaks the pattern: it is not part of the pattern after `2`",
        ),
        (
            [nn.Flatten(2), BinaryLinear(4, 2)],
            r"`0` \(Flatten\) breaks the pattern: expected Flatten\(start_dim=1, end_dim=-1\), "
            r"but got start_dim=2, end_dim=-1",
        ),
        (
            [Sign(), BinaryLinear(4, 2)],
            r"`0` \(Sign\) breaks the pattern: expected a sign only after a BatchNorm",
        ),
        (
            [BinaryLinear(4, 4), nn.BatchNorm1d(4), Sign()],
            r"but it has no output layer: the last module on the pattern is `2` \(Sign\)",
        ),
        (
            [BinaryConv2d(1, 4, 3), nn.BatchNorm2d(4), Sign(), BinaryConv2d(4, 2, 1)],
            r"`3` \(BinaryConv2d\) breaks the pattern: the output layer must be a BinaryLinear "
            r"with no BatchNorm after it, but got BinaryConv2d",
        ),
        (
            [OutputLayer(4, 2), BinaryLinear(2, 2)],
            r"`1` \(BinaryLinear\) breaks the pattern: expected nothing after the output layer "
            r"`0` \(OutputLayer\)",
        ),
    ],
)
def test_error_names_the_first_layer_that_breaks_the_pattern(layers, message):
    with pytest.raises(ValueError, match=PREFIX):
        blocks(nn.Sequential(*layers))
    with pytest.raises(ValueError, match=message):
        blocks(nn.Sequential(*layers))


def test_errors_of_the_reference_blocks_and_of_bad_arguments():
    net = build_model("fcnn", (1, 8, 8), 10, (16, 16))
    net.blocks[1].bn = nn.LayerNorm(16)
    with pytest.raises(
        ValueError,
        match=r"`blocks.1.bn` \(LayerNorm\) breaks the pattern: expected a BatchNorm1d with 16 "
        r"features in the hidden block `blocks.1`",
    ):
        blocks(net)
    with pytest.raises(ValueError, match=r"Expected `net` to contain binary layers .* Linear has"):
        blocks(nn.Linear(2, 2), argument="net")
    with pytest.raises(TypeError, match=r"Expected `module` to be an nn.Module, but got str"):
        blocks("net")
