"""Model registry. Every model takes float images [B, 1, H, W] in [0, 1] and normalises them itself, so a
perturbation is always applied to raw pixels before normalisation (PROTOCOL step 1)."""

import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)
IMAGE_SIZE = 28  # MNIST and Fashion-MNIST
# Inputs per eval-mode forward pass, evaluation and probe alike (padded up to it). Of 512, 1024 and 2048,
# the fastest on the 2-core CPU at width 16 and second at width 64.
INFERENCE_BATCH_SIZE = 1024


class Normalize(nn.Module):
    """(x - mean) / std with dataset constants stored as buffers (they move with the model)."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d, on CPU computed in channels-last memory: ~5x faster there, and since a maximum has no
    rounding, values and the gradient's routing are bitwise those of the NCHW kernel (tests/test_models.py).
    Other devices keep PyTorch's own path (their kernels' handling of ties is untested)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def resnet18(width: int, n_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 1-channel first convolution; `width` is the first stage's channel count
    (64 is torchvision's; stages have width, 2, 4 and 8 times width), same topology at every width."""
    # Imported here: torchvision takes about a second to import (torch._dynamo with it), which only a
    # ResNet needs, not `overparam --help` or the other models (tests/test_startup.py).
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=n_classes)
    net.inplanes = width
    net.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
    net.layer1 = net._make_layer(BasicBlock, width, 2)
    net.layer2 = net._make_layer(BasicBlock, 2 * width, 2, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 4 * width, 2, stride=2)
    net.layer4 = net._make_layer(BasicBlock, 8 * width, 2, stride=2)
    net.fc = nn.Linear(8 * width, n_classes)
    # torchvision's net.avgpool, AdaptiveAvgPool2d((1, 1)), stays: for a 1x1 output ATen's adaptive_avg_pool2d
    # (aten/src/ATen/native/AdaptiveAveragePooling.cpp, on every device) computes input.mean((-1, -2)), whose
    # CUDA backward is deterministic, not the adaptive kernel that has none (tests/test_models.py).
    # Rebuilt layers need torchvision's initialisation again (ResNet.__init__ applied it to the originals).
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
    return net


def small_cnn(width: int, n_classes: int) -> nn.Module:
    """Two 3x3 convolutions (width, 2 * width channels), each followed by a 2x2 max pool (28 -> 14 -> 7
    pixels), then a linear classifier. Revision 2 (REVISIONS): revision 1 ended in an AdaptiveMaxPool2d(4),
    whose CUDA backward has no deterministic kernel."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (IMAGE_SIZE // 4) ** 2, n_classes),
    )


def mlp(width: int, n_classes: int) -> nn.Module:
    """Two hidden layers of 8 * width units (width 64 -> 512)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(IMAGE_SIZE * IMAGE_SIZE, 8 * width),
        nn.ReLU(),
        nn.Linear(8 * width, 8 * width),
        nn.ReLU(),
        nn.Linear(8 * width, n_classes),
    )


def lenet300(width: int, n_classes: int) -> nn.Module:
    """Frankle and Carbin's (2019) LeNet-300-100 at width 100: fully connected, hidden layers of 3 * width
    and width units."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(IMAGE_SIZE * IMAGE_SIZE, 3 * width),
        nn.ReLU(),
        nn.Linear(3 * width, width),
        nn.ReLU(),
        nn.Linear(width, n_classes),
    )


def lenet5(width: int, n_classes: int) -> nn.Module:
    """The LeNet-5 of Li et al.'s (2018) intrinsic-dimension code (their "mnistlenet"): 5x5 convolutions
    without padding (6 * width, 16 * width channels), each followed by ReLU and a 2x2 max pool (28 -> 24 ->
    12 -> 8 -> 4 pixels), then fully connected layers of 120 * width and 84 * width units. Width 1 is theirs:
    44,426 parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 6 * width, 5),
        nn.ReLU(),
        MaxPool2d(2),
        nn.Conv2d(6 * width, 16 * width, 5),
        nn.ReLU(),
        MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * width * 4 * 4, 120 * width),
        nn.ReLU(),
        nn.Linear(120 * width, 84 * width),
        nn.ReLU(),
        nn.Linear(84 * width, n_classes),
    )


MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "resnet18": resnet18,
    "cnn": small_cnn,
    "mlp": mlp,
    "lenet300": lenet300,
    "lenet5": lenet5,
}
# Architecture revisions, part of a run's identity (config.py), so weights stored for an earlier architecture
# are never loaded into a later one. A model absent here is at its first revision and hashes none.
REVISIONS: dict[str, int] = {"cnn": 2}


def build_model(*, name: str, width: int, mean: float, std: float, n_classes: int = 10) -> nn.Module:
    """A registered model behind a Normalize layer; raises ValueError naming the valid choices."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return nn.Sequential(Normalize(mean, std), MODELS[name](width, n_classes))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """bf16 autocast on `device` for precision "bf16"; a disabled one (plain fp32) for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compiled(model: nn.Module, *, enabled: bool) -> nn.Module:
    """`torch.compile(model)`, sharing the model's parameters, buffers and train/eval mode, when `enabled`;
    otherwise `model` itself. Save and load the state of `model`, whose keys have no compile prefix.

    Shapes are static: a kernel then depends on its input's shape alone, not on which shapes the process
    compiled before (with automatic dynamic shapes, training's two batch sizes would make the evaluation's
    kernels differ from those of a process that only probes)."""
    if not enabled:
        return model
    log.info("torch.compile: each new input shape compiles first (a minute or more on a CPU)")
    return torch.compile(model, dynamic=False)


def padded_logits(model: nn.Module, inputs: torch.Tensor, *, size: int) -> torch.Tensor:
    """model(inputs) [n, classes] for n <= `size` inputs [n, 1, H, W], run as one batch of exactly `size`
    (zero images fill it up). Every eval-mode pass then has one shape, so an input's logits are bitwise the
    same whichever batch it comes in: CPU convolutions round differently for batches under about 16, and
    GPU libraries pick kernels by shape. That the probe's sigma 0 repeats training's last evaluation, and
    that its blurred sigmas share batches, relies on it."""
    n = len(inputs)
    if n > size:
        raise ValueError(f"{n} inputs do not fit a batch of {size}")
    if n < size:
        inputs = torch.cat([inputs, inputs.new_zeros(size - n, *inputs.shape[1:])])
    return model(inputs)[:n]


@torch.inference_mode()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = INFERENCE_BATCH_SIZE,
    precision: str = "fp32",
) -> torch.Tensor:
    """Eval-mode class predictions [N] int64 for uint8 images [N, H, W] (on the model's device)."""
    return predict_with_probabilities(model, images, batch_size=batch_size, precision=precision)[0]


@torch.inference_mode()
def predict_with_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = INFERENCE_BATCH_SIZE,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode class predictions [N] int64 and softmax probabilities [N, classes] float16 (computed in
    float32) for uint8 images [N, H, W]; the predictions are the argmax of the same logits."""
    was_training = model.training
    model.eval()
    with autocast(precision, images.device):
        predictions, probabilities = [], []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size, None].float().div_(255)
            logits = padded_logits(model, batch, size=batch_size)
            predictions.append(logits.argmax(dim=1))
            probabilities.append(logits.float().softmax(dim=1).half())
    model.train(was_training)
    return torch.cat(predictions), torch.cat(probabilities)
