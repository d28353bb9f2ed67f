"""The benchmark at toy sizes on real MNIST, and the FLOP count it builds on."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from overparam.bench import blur_kernel_size, forward_flops, ordinary_model, ordinary_probe, training_flops
from overparam.cli import main
from overparam.data import NORMALIZATION, load_split
from overparam.models import MaxPool2d, build_model
from overparam.probe import predict_under_blur

ROWS = [
    "matmul_peak",
    "train_throughput",
    "train_flop_rate",
    "train_peak_fraction",
    "probe_throughput",
    "probe_flop_rate",
    "probe_peak_fraction",
]
TINY = ["--images", "64", "--test-images", "32", "--width", "2", "--batch-size", "32", "--epochs", "1"]


def test_benchmark_runs_end_to_end_and_writes_its_table(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.csv"
    arguments = [
        *TINY,
        "--sigmas",
        "0",
        "1",
        "--matmul-size",
        "256",
        "--device",
        "cpu",
        "--profile",
        str(tmp_path),
    ]
    assert main(["bench", *arguments, "--data-dir", str(data_root), "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("name")
    assert table.index.tolist() == ROWS
    measured = table.drop(index="matmul_peak")
    for column in ("ours", "baseline", "ratio"):
        assert np.isfinite(measured[column]).all() and (measured[column] > 0).all()
    assert table.loc["matmul_peak", "ours"] > 0 and math.isnan(table.loc["matmul_peak", "baseline"])
    assert measured["ratio"].to_numpy() == pytest.approx((measured["ours"] / measured["baseline"]).to_numpy())
    peak = table.loc["matmul_peak", "ours"]
    for phase in ("train", "probe"):
        rate, fraction = table.loc[f"{phase}_flop_rate"], table.loc[f"{phase}_peak_fraction"]
        assert fraction["ours"] == pytest.approx(rate["ours"] / peak)
        # Both sides did the same work: the same FLOPs per unit of throughput.
        per_unit = rate[["ours", "baseline"]] / table.loc[f"{phase}_throughput", ["ours", "baseline"]]
        assert per_unit["ours"] == pytest.approx(per_unit["baseline"])
    assert table[["model", "width", "images", "test_images", "batch_size", "sigmas"]].iloc[0].tolist() == [
        "resnet18", 2, 64, 32, 32, 2,
    ]  # fmt: skip
    assert (table["device"] == "cpu").all() and (table["torch_version"] == torch.__version__).all()
    assert (table["torch_threads"] == torch.get_num_threads()).all()
    printed = capsys.readouterr().out
    assert all(name in printed for name in ROWS) and "CPUs" in printed and str(out) in printed
    for phase, operator in (("train", "aten::convolution_backward"), ("probe", "aten::bmm")):
        assert operator in (tmp_path / f"profile-{phase}.txt").read_text()


def test_benchmark_times_our_side_compiled_in_bf16(
    data_root: Path, tmp_path: Path, compiled_models: list[torch.nn.Module]
) -> None:
    out = tmp_path / "bench.csv"
    arguments = [*TINY, "--model", "mlp", "--sigmas", "0", "1", "--matmul-size", "64", "--device", "cpu"]
    arguments += ["--precision", "bf16", "--compile", "--repeats", "1"]
    assert main(["bench", *arguments, "--data-dir", str(data_root), "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("name")
    assert table.index.tolist() == ROWS
    assert (table["precision"] == "bf16").all() and table["compile"].all() and (table["model"] == "mlp").all()
    assert np.isfinite(table.drop(index="matmul_peak")["ratio"]).all()
    assert compiled_models  # our training and probe ran compiled


def test_ordinary_probe_makes_as_many_predictions_as_ours(data_root: Path) -> None:
    images = load_split(dataset="mnist", split="train", data_dir=data_root, download=False)[0][:40]
    torch.manual_seed(0)
    model = build_model(
        name="resnet18", width=2, mean=NORMALIZATION["mnist"][0], std=NORMALIZATION["mnist"][1]
    )
    sigmas = (0.0, 0.7, 2.0, 5.0)
    ours = predict_under_blur(model, images, sigmas, batch_size=64, progress=False)
    ordinary = ordinary_probe(model, images, sigmas, batch_size=16)
    assert ours.shape == ordinary.shape == (len(sigmas), len(images))
    assert ordinary.dtype == ours.dtype == np.int64
    assert np.array_equal(ordinary[0], ours[0])  # unblurred, both see the same pixels (ToTensor = x / 255)
    assert [blur_kernel_size(sigma) for sigma in sigmas[1:]] == [7, 13, 27]


def test_resnet18_forward_flops_match_flop_counter_and_a_count_by_hand() -> None:
    model = build_model(name="resnet18", width=64, mean=0.13, std=0.31)
    image = torch.rand(1, 1, 28, 28)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    flops = forward_flops(model, image)
    assert flops == counter.get_total_flops()

    # By hand: 2 FLOPs per multiply-add. A k x k convolution from c_in to c_out channels producing an
    # s x s map costs 2 s^2 c_out c_in k^2; its output side is floor((in + 2 padding - k) / stride) + 1.
    # 28 -> conv1 (7x7, stride 2, pad 3) -> 14 -> max pool (3x3, stride 2, pad 1) -> 7; layer1 stays at 7,
    # layers 2-4 halve it (3x3 stride 2 pad 1, or the 1x1 stride 2 shortcut): 7 -> 4 -> 2 -> 1.
    # Normalize, batch norm, ReLU, pooling and the residual additions are not matmuls and are not counted.
    def conv(side: int, c_out: int, c_in: int, k: int) -> int:
        return 2 * side**2 * c_out * c_in * k**2

    def stage(side: int, c_out: int, c_in: int) -> int:
        """Two basic blocks; the first (c_in -> c_out) has a 1x1 shortcut when the width changes."""
        shortcut = conv(side, c_out, c_in, 1) if c_in != c_out else 0
        return conv(side, c_out, c_in, 3) + 3 * conv(side, c_out, c_out, 3) + shortcut

    by_hand = (
        conv(14, 64, 1, 7)  # conv1: 1.23 M
        + stage(7, 64, 64)  # layer1: 14.45 M
        + stage(4, 128, 64)  # layer2: 16.78 M
        + stage(2, 256, 128)  # layer3: 16.78 M
        + stage(1, 512, 256)  # layer4: 16.78 M
        + 2 * 512 * 10  # fc
    )  # 66.02 M in all
    assert flops == pytest.approx(by_hand, rel=0.10)

    # A training step adds the backward pass: twice the forward, less conv1's unneeded input gradient.
    # (Two images: batch norm cannot train on one 1 x 1 map.)
    step = training_flops(model, torch.rand(2, 1, 28, 28), torch.tensor([3, 5])) / 2
    assert step == pytest.approx(3 * by_hand - conv(14, 64, 1, 7), rel=0.10)


def test_the_ordinary_model_pools_the_ordinary_way_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    ours = build_model(name="resnet18", width=4, mean=0.13, std=0.31).eval()
    plain = ordinary_model(ours)
    assert any(isinstance(m, MaxPool2d) for m in ours.modules())
    assert not any(isinstance(m, MaxPool2d) for m in plain.modules())
    images = torch.rand(6, 1, 28, 28)
    assert torch.equal(plain(images), ours(images))
