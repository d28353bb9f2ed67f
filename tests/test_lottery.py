"""Pruning masks (global magnitude, the output layer at half the rate) and one-shot pruning of the
over-trained models in a study."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from overparam.cli import main
from overparam.experiments.lottery.masks import (
    apply_mask,
    full_mask,
    magnitude_mask,
    output_layer,
    prunable,
    remaining,
)
from overparam.models import build_model


def model(name: str = "mlp") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name=name, width=4, mean=0.1307, std=0.3081)


def test_only_convolution_and_linear_weights_are_prunable() -> None:
    names = list(prunable(model("resnet18")))
    assert all(name.endswith(".weight") for name in names) and not any("bn" in name for name in names)
    assert output_layer(model("resnet18")) == names[-1] == "1.fc.weight"
    assert list(prunable(model("mlp"))) == ["1.1.weight", "1.3.weight", "1.5.weight"]


def test_magnitude_pruning_is_global_with_the_output_layer_at_half_the_rate() -> None:
    net = model()
    weights, output = prunable(net), output_layer(net)
    mask = magnitude_mask(net, fraction=0.5)
    hidden = [name for name in weights if name != output]
    total = sum(weights[name].numel() for name in hidden)
    assert sum(int(mask[name].sum()) for name in hidden) == total - round(0.5 * total)
    assert int(mask[output].sum()) == weights[output].numel() - round(0.25 * weights[output].numel())
    kept = torch.cat([weights[n].detach().abs()[mask[n]] for n in hidden])
    dropped = torch.cat([weights[n].detach().abs()[~mask[n]] for n in hidden])
    assert kept.min() >= dropped.max()  # one threshold over every hidden layer: global
    again = magnitude_mask(net, fraction=0.5, mask=mask)  # 50 % of what remains
    assert all((again[name] <= mask[name]).all() for name in weights)
    assert sum(int(again[name].sum()) for name in hidden) == round(
        0.5 * sum(int(mask[n].sum()) for n in hidden)
    )
    assert remaining(full_mask(net)) == 1.0 and remaining(again) < remaining(mask) < 1.0


def test_applying_a_mask_zeroes_the_pruned_weights() -> None:
    net = model()
    mask = magnitude_mask(net, fraction=0.8)
    apply_mask(net, mask)
    assert all((weight[~mask[name]] == 0).all() for name, weight in prunable(net).items())
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        magnitude_mask(net, fraction=1.0)


def test_one_shot_pruning_of_a_study_tables_and_reports_the_fit_of_each_group(
    placement: list[str], tmp_path: Path
) -> None:
    command = ["reproduce", "--preset", "smoke", "--train-size", "300", "--test-size", "100", "--rates", "0"]
    command += ["0.1", "--max-epochs", "2", "--sigmas", "0", "1", "--oneshot-pruning", "0", "0.5", "0.9"]
    command += placement
    assert main(command) == 0
    pruning = pd.read_csv(tmp_path / "out" / "pruning.csv")
    assert len(pruning) == 2 * 3 * 3  # runs x fractions x groups
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("rate")
    unpruned = pruning[pruning["fraction_pruned"] == 0].set_index(["rate", "group"])
    for rate in (0.0, 0.1):  # pruning nothing leaves the trained model: its last evaluation
        train = unpruned.loc[[(rate, "clean"), *([(rate, "mislabelled")] if rate else [])]]
        assert train["correct"].sum() / train["n"].sum() == pytest.approx(runs.loc[rate, "train_acc"])
        assert unpruned.loc[(rate, "test"), "correct"] / 100 == pytest.approx(runs.loc[rate, "test_acc"])
    assert pruning.groupby("fraction_pruned")["remaining"].first().is_monotonic_decreasing
    fit = pd.read_csv(tmp_path / "out" / "analysis" / "pruning_fit.csv")
    assert set(fit["group"]) == {"clean", "mislabelled", "test"} and fit["fit"].between(0, 1).all()
    assert "which images lose their fit first" in (tmp_path / "out" / "report.html").read_text()
