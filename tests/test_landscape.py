"""The loss-landscape experiment: keyed projections, subspace models, paths with batch norm recomputed,
d_int90, and the `landscape` command end to end on the smoke preset (cached on a second call)."""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from overparam.config import ConfigError, resolve
from overparam.experiments.landscape import command
from overparam.experiments.landscape.intrinsic import crossing, d_int90_per_seed, d_int90_summary
from overparam.experiments.landscape.paths import PathStep, bezier, linear, recompute_batch_norm
from overparam.experiments.landscape.projections import (
    DenseProjection,
    FastfoodProjection,
    SparseProjection,
    chosen_projection,
    make_projection,
    walsh_hadamard,
)
from overparam.experiments.landscape.settings import CurveSettings, landscape_config
from overparam.experiments.landscape.subspace import SubspaceModel
from overparam.experiments.landscape.tunnel import filter_normalised_direction, half_radius
from overparam.models import build_model
from overparam.registry import Services
from overparam.report import write_report
from overparam.store.executors import execute_steps
from overparam.store.files import read_json
from overparam.store.steps import RunOptions


def columns_of(projection: torch.nn.Module, columns: list[int]) -> torch.Tensor:
    """P e_j for each j: [D, len(columns)]."""
    eye = torch.eye(projection.d)
    return torch.stack([projection(eye[j]) for j in columns], dim=1)


@pytest.mark.parametrize("kind", [DenseProjection, SparseProjection])
def test_dense_and_sparse_projections_have_unit_norm_columns_and_follow_their_key(kind) -> None:
    projection = kind(d=40, D=3000, key=("k", 0))
    norms = columns_of(projection, list(range(40))).norm(dim=0)
    assert torch.allclose(norms, torch.ones(40), atol=1e-5)
    z = torch.randn(40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(projection(z), kind(d=40, D=3000, key=("k", 0))(z))
    assert not torch.equal(projection(z), kind(d=40, D=3000, key=("k", 1))(z))


def test_sparse_projection_has_density_one_over_sqrt_d() -> None:
    projection = SparseProjection(d=200, D=10000, key=("density",))
    assert len(projection.values) == pytest.approx(200 * 10000 / 100, rel=0.05)


def test_walsh_hadamard_is_the_sylvester_matrix() -> None:
    x = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 0])
    assert walsh_hadamard(x).tolist() == [4, 2, 0, -2, 0, 2, 0, 2]  # Li et al.'s doctest (Wikipedia's case)


def test_fastfood_columns_are_unit_norm_and_it_never_stores_d_by_d() -> None:
    exact = FastfoodProjection(d=16, D=1024, key=("ff",))  # D a power of two: nothing sliced, norms exact
    assert torch.allclose(columns_of(exact, list(range(16))).norm(dim=0), torch.ones(16), atol=1e-5)
    sliced = FastfoodProjection(d=16, D=1500, key=("ff",))  # 1500 of 2048 rows kept, rescaled on average
    assert columns_of(sliced, list(range(16))).norm(dim=0).mean().item() == pytest.approx(1.0, abs=0.05)
    d, D = 10_000, 3_000_000
    large = FastfoodProjection(d=d, D=D, key=("ff",))
    stored = sum(buffer.numel() for buffer in large.buffers())
    assert large.length == 2**22 and stored == 3 * large.length < d * D / 1000
    z = torch.zeros(d)
    z[7] = 1.0
    column = large(z)
    assert column.shape == (D,) and column.norm().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(column, FastfoodProjection(d=d, D=D, key=("ff",))(z))


def test_auto_picks_dense_then_sparse_then_fastfood() -> None:
    assert chosen_projection("auto", d=100, D=10_000) == "dense"
    assert chosen_projection("auto", d=1000, D=200_000) == "sparse"
    assert chosen_projection("auto", d=100_000, D=11_000_000) == "fastfood"
    with pytest.raises(ConfigError, match="unknown projection"):
        chosen_projection("gaussian", d=1, D=1)


@pytest.mark.parametrize(("name", "kind"), [("mlp", "sparse"), ("resnet18", "fastfood"), ("lenet5", "dense")])
def test_subspace_model_at_zero_is_the_initial_network(name: str, kind: str) -> None:
    torch.manual_seed(0)
    network = build_model(name=name, width=4 if name != "lenet5" else 1, mean=0.1307, std=0.3081).eval()
    images = torch.rand(8, 1, 28, 28)
    expected = network(images)
    D = sum(p.numel() for p in network.parameters())
    model = SubspaceModel(network, make_projection(kind, d=20, D=D, key=(name,))).eval()
    assert torch.equal(model(images), expected)
    assert [p.shape for p in model.parameters() if p.requires_grad] == [torch.Size([20])]
    with torch.no_grad():
        model.z[3] = 1.0
    assert not torch.allclose(model(images), expected)


def test_lenet5_has_li_et_al_s_44426_parameters() -> None:
    net = build_model(name="lenet5", width=1, mean=0.0, std=1.0)
    assert sum(p.numel() for p in net.parameters()) == 44426


def test_bezier_curve_passes_through_its_ends_and_bends_towards_its_middle() -> None:
    start, middle, end = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(bezier(start=start, middle=middle, end=end, t=0.0), start)
    assert torch.equal(bezier(start=start, middle=middle, end=end, t=1.0), end)
    halfway = bezier(start=start, middle=middle, end=end, t=0.5)
    assert torch.allclose(halfway, 0.25 * start + 0.5 * middle + 0.25 * end)
    assert torch.equal(linear(start=start, end=end, t=0.0), start)


def test_recomputed_batch_norm_statistics_are_the_interpolated_network_s_own() -> None:
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(build_model(name="resnet18", width=4, mean=0.1307, std=0.3081))
    images = (torch.rand(300, 28, 28) * 255).to(torch.uint8)
    for net in nets:  # stored statistics of their own, as a trained model has
        recompute_batch_norm(net, images)
    between = build_model(name="resnet18", width=4, mean=0.1307, std=0.3081)
    with torch.no_grad():
        for mixed, *ends in zip(between.parameters(), *(net.parameters() for net in nets), strict=True):
            mixed.copy_((ends[0] + ends[1]) / 2)
    for name in ("running_mean", "running_var"):
        averaged = (getattr(nets[0][1].bn1, name) + getattr(nets[1][1].bn1, name)) / 2
        getattr(between[1].bn1, name).copy_(averaged)  # what interpolating the stored statistics would give
    stored = between[1].bn1.running_var.clone()
    assert recompute_batch_norm(between, images, batch_size=100)
    with torch.no_grad():
        features = between[1].conv1(between[0](images[:, None].float() / 255))
    assert torch.allclose(between[1].bn1.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not torch.allclose(between[1].bn1.running_var, stored, rtol=0.05)
    assert not between.training


def test_d_int90_is_the_smallest_grid_d_reaching_90_percent_of_the_full_network() -> None:
    rows = []
    accuracy = {0: {0: 0.98, 100: 0.5, 300: 0.87, 750: 0.90, 1000: 0.95}, 1: {0: 0.96, 100: 0.5, 300: 0.865}}
    for seed, table in accuracy.items():
        for dim, value in table.items():
            rows.append(
                {
                    "dataset": "mnist",
                    "model": "mlp",
                    "width": 25,
                    "train_size": 100,
                    "rate": 0.0,
                    "seed": seed,
                }
                | {"dim": dim, "projection": "dense", "group": "test", "n": 1000, "fit": round(value * 1000)}
                | {"agree_true": round(value * 1000)}
            )
    per_seed = d_int90_per_seed(pd.DataFrame(rows))
    # seed 0: threshold 0.882, first reached at 750; seed 1: threshold 0.864, reached at 300
    assert per_seed["threshold"].tolist() == pytest.approx([0.882, 0.864])
    assert per_seed["d_int90"].tolist() == [750, 300]
    summary = d_int90_summary(per_seed).iloc[0]
    assert summary["d_int90"] == 525 and summary["seeds_reached"] == 2
    half = 12.706204736 * np.std([750, 300], ddof=1) / np.sqrt(2)  # t(0.975, 1 degree of freedom)
    assert summary["d_int90_high"] == pytest.approx(525 + half)
    missing = d_int90_per_seed(pd.DataFrame([r for r in rows if r["dim"] < 750 or r["seed"] == 1]))
    assert np.isnan(missing["d_int90"].iloc[0])  # never reached: no d_int90


def test_crossing_interpolates_in_log_d() -> None:
    assert crossing(dims=np.array([100, 1000]), values=np.array([0.8, 1.0]), threshold=0.9) == pytest.approx(
        np.sqrt(100 * 1000)
    )
    assert crossing(dims=np.array([100, 1000]), values=np.array([0.95, 1.0]), threshold=0.9) == 100
    assert np.isnan(crossing(dims=np.array([100, 1000]), values=np.array([0.1, 0.2]), threshold=0.9))


def test_filter_normalised_directions_match_each_filter_s_norm_and_skip_biases() -> None:
    torch.manual_seed(0)
    net = build_model(name="cnn", width=4, mean=0.0, std=1.0)
    direction = filter_normalised_direction(net, key=("d",))
    first = 0
    for parameter in net.parameters():
        piece = direction[first : first + parameter.numel()].view_as(parameter)
        first += parameter.numel()
        if parameter.dim() == 1:
            assert not piece.any()
        else:
            expected = parameter.detach().flatten(1).norm(dim=1)
            assert torch.allclose(piece.flatten(1).norm(dim=1), expected, rtol=1e-4)
    assert half_radius(radii=np.array([0.0, 1.0, 2.0]), fit=np.array([1.0, 0.8, 0.2])) == pytest.approx(1.5)


def test_linear_path_ends_reproduce_the_trained_models(data_root: Path, tmp_path: Path) -> None:
    runs = resolve(
        preset="smoke",
        overrides={"model": "mlp", "width": 4, "rates": (0.1,), "seeds": (0, 1), "max_epochs": 2},
    ).runs()
    step = PathStep(runs[0], runs[1], CurveSettings(epochs=1, points=3))
    options = RunOptions(store=str(tmp_path / "store"), data_dir=str(data_root), download=False)
    assert all(o.status == "done" for o in execute_steps([step], options))
    record = read_json(step.record(tmp_path / "store"))
    path = pd.read_csv(step.folder(tmp_path / "store") / "path.csv")
    assert (
        record["batch_norm_recomputed"] is False
    )  # an MLP has none: the ends are exactly the trained models
    for path_name in ("linear", "bezier"):
        for t, stored in ((0.0, "t0_stored"), (1.0, "t1_stored")):
            at = path[(path["path"] == path_name) & (path["t"] == t)]
            expected = pd.DataFrame(record["endpoints_with_stored_statistics"][stored])
            assert at["correct"].tolist() == expected["correct"].tolist()
            assert at["loss"].to_numpy() == pytest.approx(expected["loss"].to_numpy(), rel=1e-5)
    training = read_json(tmp_path / "store" / runs[0].run_id() / "training.json")["result"]
    clean = path[(path["t"] == 0) & (path["group"] == "test") & (path["path"] == "linear")].iloc[0]
    assert clean["correct"] / clean["n"] == pytest.approx(training["test_acc"])


def test_bad_settings_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="at least two seeds"):
        landscape_config(preset="smoke", seeds=(0,))
    with pytest.raises(ConfigError, match="unknown preset"):
        landscape_config(preset="huge")


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv), Services(write_report=write_report))


def test_smoke_run_writes_tables_figures_and_report_and_is_cached(data_root: Path, tmp_path: Path) -> None:
    out, store = tmp_path / "out", tmp_path / "store"
    argv = ["--preset", "smoke", "--out", str(out), "--store", str(store), "--data-dir", str(data_root)]
    assert _run([*argv, "--no-download"]) == 0
    first = json.loads((out / "config.json").read_text())
    assert first["steps"]["done"] == 28 and first["steps"]["failed"] == 0
    assert "environment" in first and first["settings"]["seeds"] == [0, 1]
    for name in ("d_int90", "memorisation_curves", "group_d90", "path_barriers_summary", "tunnel_curves"):
        assert len(pd.read_csv(out / f"{name}.csv"))
    for figure in ("intrinsic_dimension", "memorisation_vs_d", "path_accuracy", "path_loss", "tunnel"):
        assert (out / "figures" / f"{figure}.png").exists() and (out / "figures" / f"{figure}.svg").exists()
    report = (out / "report.html").read_text()
    assert "Intrinsic dimension" in report and "Paths between memorising minima" in report
    curves = pd.read_csv(out / "path_curves.csv")
    assert sorted(curves["t"].unique()) == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert set(curves["pair"]) == {"seeds", "rates"}
    disputed = curves[(curves["group"] == "disputed") & (curves["pair"] == "rates")]
    assert len(disputed) and disputed["accuracy_seeds"].min() >= 1  # the mislabels added at the higher rate
    tables = {p.name for p in out.glob("*.csv")}
    before = (out / "d_int90.csv").read_bytes()
    assert _run(argv) == 0  # the second time every step is in the store
    second = json.loads((out / "config.json").read_text())
    assert second["steps"] == {"done": 0, "cached": 28, "failed": 0}
    assert {p.name for p in out.glob("*.csv")} == tables and (out / "d_int90.csv").read_bytes() == before
