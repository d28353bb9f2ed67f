from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torchvision.models import resnet18 as torchvision_resnet18

from overparam.models import (
    MODELS,
    MaxPool2d,
    Normalize,
    build_model,
    count_parameters,
    padded_logits,
    predict,
    resnet18,
)
from overparam.runtime import make_deterministic


def test_width_64_is_torchvisions_resnet18_with_one_input_channel() -> None:
    reference = torchvision_resnet18(num_classes=10)
    reference.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    ours = resnet18(64, 10)
    assert count_parameters(ours) == count_parameters(reference) == 11_175_370
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in reference.parameters()]


def test_narrow_widths_keep_the_topology() -> None:
    wide, narrow = resnet18(64, 10), resnet18(8, 10)
    kinds = lambda net: [type(m).__name__ for m in net.modules()]  # noqa: E731
    assert kinds(wide) == kinds(narrow)
    assert narrow.conv1.out_channels == 8 and narrow.fc.in_features == 64


def test_initialisation_follows_torchvision() -> None:
    net = resnet18(16, 10)
    bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bn)
    conv = net.layer3[0].conv1.weight  # kaiming normal, fan_out: std = sqrt(2 / (out_channels * 3 * 3))
    assert conv.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_images_to_ten_logits(name: str) -> None:
    model = build_model(name=name, width=4, mean=0.13, std=0.31)
    assert isinstance(model[0], Normalize)
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_unknown_model_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="resnet18, cnn, mlp"):
        build_model(name="vgg", width=4, mean=0.0, std=1.0)


def test_normalize_is_applied_inside_the_model() -> None:
    torch.testing.assert_close(Normalize(0.5, 0.25)(torch.tensor([0.5, 1.0])), torch.tensor([0.0, 2.0]))


def test_predict_is_batch_size_independent_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    model = build_model(name="cnn", width=4, mean=0.13, std=0.31)
    images = torch.randint(0, 256, (37, 28, 28), dtype=torch.uint8)
    whole = predict(model, images, batch_size=64)
    pieces = predict(model, images, batch_size=5)
    expected = model.eval()(images[:, None].float() / 255).argmax(dim=1)
    model.train()
    assert torch.equal(whole, pieces) and torch.equal(whole, expected)
    assert model.training


@torch.inference_mode()
def test_padded_logits_are_bitwise_those_of_a_full_batch_whatever_the_count_and_position() -> None:
    torch.manual_seed(0)
    model = build_model(name="resnet18", width=16, mean=0.13, std=0.31).eval()
    inputs = torch.rand(64, 1, 28, 28)
    full = model(inputs)  # unpadded, batches of 1 or 2 round differently here on a 2-core AVX-512 CPU
    for start, count in ((0, 1), (5, 2), (20, 7), (30, 34)):
        chosen = inputs[start : start + count]
        assert torch.equal(padded_logits(model, chosen, size=64), full[start : start + count])


def test_channels_last_max_pool_is_bitwise_the_nchw_pool_forward_and_backward() -> None:
    torch.manual_seed(0)
    pixels = torch.relu(torch.randn(16, 8, 14, 14))  # ReLU zeros: many tied maxima
    pixels[:, :, ::2] = pixels[:, :, 1::2]  # and tied positive ones
    upstream = torch.randn(16, 8, 7, 7)
    results = []
    for pool in (nn.MaxPool2d(3, stride=2, padding=1), MaxPool2d(3, stride=2, padding=1)):
        x = pixels.clone().requires_grad_()
        out = pool(x)
        out.backward(upstream)
        results.append((out, x.grad))
    (nchw, nchw_grad), (ours, ours_grad) = results
    assert ours.is_contiguous() and torch.equal(ours, nchw) and torch.equal(ours_grad, nchw_grad)


# Layers whose CUDA backward PyTorch documents (torch.use_deterministic_algorithms) as nondeterministic or
# as raising in deterministic mode; adaptive average pools are fine at output size 1 (computed as a mean).
NONDETERMINISTIC_LAYERS = (
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AvgPool3d,
    nn.MaxPool3d,
    nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d,
    nn.MaxUnpool1d,
    nn.MaxUnpool2d,
    nn.MaxUnpool3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.ReplicationPad3d,
    nn.EmbeddingBag,
    nn.CTCLoss,
    nn.NLLLoss,
)
# The same, as the autograd nodes of functional calls (a model could call them without such a layer).
NONDETERMINISTIC_BACKWARD = (
    "AdaptiveMaxPool",
    "AdaptiveAvgPool",
    "AvgPool3D",
    "MaxPool3D",
    "FractionalMaxPool",
    "MaxUnpool",
    "ReflectionPad",
    "ReplicationPad",
    "UpsampleLinear",
    "UpsampleBilinear",
    "UpsampleBicubic",
    "UpsampleTrilinear",
    "EmbeddingBag",
    "CtcLoss",
    "GridSampler",
)


def backward_nodes(output: torch.Tensor) -> set[str]:
    """The class names of every node of `output`'s autograd graph."""
    names, seen, pending = set(), set(), [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        pending.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_model_has_a_layer_without_a_deterministic_cuda_backward(name: str) -> None:
    model = build_model(name=name, width=8, mean=0.13, std=0.31)
    for module in model.modules():
        assert not isinstance(module, NONDETERMINISTIC_LAYERS), f"{name}: {module}"
        if isinstance(module, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d):
            size = module.output_size
            assert all(s == 1 for s in (size if isinstance(size, tuple) else (size,))), f"{name}: {module}"
        if isinstance(module, nn.Upsample):
            assert module.mode == "nearest", f"{name}: {module}"
        if isinstance(module, nn.modules.conv._ConvNd):
            assert module.padding_mode in ("zeros", "circular"), f"{name}: {module}"
    # ... nor calls one: ResNet-18's AdaptiveAvgPool2d((1, 1)) must be ATen's mean (MeanBackward), which
    # adaptive_avg_pool2d computes for a 1x1 output on every device.
    nodes = backward_nodes(model(torch.rand(4, 1, 28, 28, requires_grad=True)))
    assert not [node for node in nodes if node.startswith(NONDETERMINISTIC_BACKWARD)], nodes
    if name == "resnet18":
        assert any(node.startswith("MeanBackward") for node in nodes)


@pytest.fixture
def deterministic() -> Iterator[None]:
    """torch.use_deterministic_algorithms(True) (and the rest of the project's settings) for one test."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    fill = torch.utils.deterministic.fill_uninitialized_memory
    make_deterministic()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def test_the_cnn_pools_to_7x7_and_trains_a_step(deterministic: None) -> None:
    torch.manual_seed(0)
    model = build_model(name="cnn", width=4, mean=0.13, std=0.31)
    assert model[1][-1].in_features == 2 * 4 * 7 * 7
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images, labels = torch.rand(8, 1, 28, 28), torch.arange(8)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(images)
    assert logits.shape == (8, 10)
    nn.functional.cross_entropy(logits, labels).backward()
    optimizer.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_on_cuda_in_deterministic_mode(name: str, deterministic: None) -> None:
    """Forward and backward of every registered model on CUDA under use_deterministic_algorithms(True): a
    layer without a deterministic CUDA kernel raises here; two passes give bitwise equal gradients."""
    gradients = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(name=name, width=8, mean=0.13, std=0.31).cuda()
        images = torch.rand(32, 1, 28, 28, device="cuda")
        nn.functional.cross_entropy(model(images), torch.arange(32, device="cuda") % 10).backward()
        gradients.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*gradients, strict=True))
