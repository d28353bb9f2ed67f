"""The command line end to end on real MNIST / Fashion-MNIST, at toy sizes."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_blur import direct_blur

from overparam.cli import main
from overparam.data import NORMALIZATION, load_split
from overparam.models import build_model
from overparam.results import load_study
from overparam.store.files import load_checked, read_json

COLUMNS = {
    "runs": [
        "dataset",
        "model",
        "width",
        "rate",
        "seed",
        "n_train",
        "n_mislabelled",
        "epochs",
        "reached_target",
        "train_acc",
        "mislabelled_train_acc",
        "test_acc",
        "train_seconds",
    ],
    "metrics": [
        "dataset",
        "model",
        "width",
        "rate",
        "seed",
        "epoch",
        "loss",
        "train_acc",
        "mislabelled_train_acc",
        "test_acc",
        "seconds",
    ],
    "mislabels": ["dataset", "model", "width", "rate", "seed", "index", "true_label", "assigned_label"],
    "curves": [
        "dataset",
        "model",
        "rate",
        "seed",
        "perturbation",
        "probe_id",
        "group",
        "level",
        "n",
        "changed",
        "agree_assigned",
        "agree_true",
        "changed_fraction",
        "changed_low",
        "changed_high",
        "agree_assigned_fraction",
        "agree_assigned_low",
        "agree_assigned_high",
        "agree_true_fraction",
        "agree_true_low",
        "agree_true_high",
    ],
    "flips": [
        "dataset",
        "model",
        "rate",
        "seed",
        "perturbation",
        "probe_id",
        "split",
        "index",
        "true_label",
        "assigned_label",
        "mislabelled",
        "flip_level",
    ],
}
TINY = [
    "--preset",
    "smoke",
    "--train-size",
    "200",
    "--test-size",
    "100",
    "--rates",
    "0.05",
    "--max-epochs",
    "1",
]


@pytest.fixture(scope="module")
def smoke(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke preset, run once through the CLI."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    assert main(["reproduce", "--preset", "smoke", "--data-dir", str(data_root), "--out", str(out)]) == 0
    return out


def tables(out: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(out / f"{name}.csv") for name in COLUMNS}


def fingerprint(folder: Path) -> dict[str, str]:
    """MD5 of every file under `folder`, following the links to run folders."""
    found = {}
    for root, _, files in os.walk(folder, followlinks=True):
        for name in files:
            path = Path(root) / name
            found[str(path.relative_to(folder))] = hashlib.md5(path.read_bytes()).hexdigest()
    assert found, f"nothing under {folder}"
    return found


def test_every_table_has_its_columns_and_one_row_per_unit(smoke: Path) -> None:
    found = tables(smoke)
    for name, columns in COLUMNS.items():
        assert set(columns) <= set(found[name].columns), name
    runs = found["runs"]
    assert sorted(runs["rate"]) == [0.0, 0.02, 0.1] and (runs["n_train"] == 500).all()
    assert runs["n_mislabelled"].tolist() == [0, 10, 50]
    assert len(found["metrics"]) == runs["epochs"].sum()
    assert len(found["curves"]) == 3 * 3 * 7  # runs x groups x sigmas
    assert len(found["flips"]) == 3 * (500 + 500)
    config = (smoke / "config.json").read_text()
    assert '"preset": "smoke"' in config and '"torch"' in config and '"device": "cpu"' in config


def test_reproduce_ends_with_the_report(smoke: Path) -> None:
    assert (
        "Verdict: is there a transition, and are mislabels treated alike?"
        in (smoke / "report.html").read_text()
    )
    assert (smoke / "summary.md").stat().st_size > 0 and (smoke / "analysis" / "transitions.csv").exists()
    assert len(list((smoke / "figures").glob("*.png"))) >= 8


def test_the_report_command_rewrites_a_report_from_the_tables_alone(
    smoke: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(smoke, copy, symlinks=True)
    (copy / "report.html").unlink()
    assert main(["report", str(copy), "--bootstrap", "100"]) == 0
    assert (copy / "report.html").exists() and "report in" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "run `overparam reproduce` first" in capsys.readouterr().err


def test_mislabels_recomputed_from_the_data(smoke: Path, data_root: Path) -> None:
    _, labels = load_split(dataset="mnist", split="train", data_dir=data_root, download=False)
    mislabels = tables(smoke)["mislabels"]
    for rate, group in mislabels.groupby("rate"):
        assert np.array_equal(labels.numpy()[group["index"]], group["true_label"])
        assert (group["assigned_label"] != group["true_label"]).all()
        k = int(np.floor(rate * 500 / 10 + 0.5))
        assert np.array_equal(np.bincount(group["true_label"], minlength=10), np.full(10, k))


def test_curves_and_flips_agree_with_each_other(smoke: Path) -> None:
    found = tables(smoke)
    curves, flips, runs = found["curves"], found["flips"], found["runs"]
    at_zero = curves[curves.level == 0]
    assert (at_zero["changed"] == 0).all()
    for rate in runs["rate"]:
        run_curves = curves[curves.rate == rate].set_index(["group", "level"])
        run_flips = flips[flips.rate == rate]
        n_mislabelled = int(runs.loc[runs.rate == rate, "n_mislabelled"].iloc[0])
        assert run_curves.loc[("mislabelled", 0.0), "n"] == n_mislabelled
        assert run_curves.loc[("clean", 0.0), "n"] == 500 - n_mislabelled
        assert run_curves.loc[("test", 0.0), "n"] == 500
        test_flips = run_flips[run_flips.split == "test"]
        agree = (test_flips["prediction_at_0"] == test_flips["true_label"]).sum()
        assert run_curves.loc[("test", 0.0), "agree_true"] == agree
        for sigma in sorted(curves.level.unique()):  # changed by sigma s => flip sigma <= s
            flipped = (test_flips["flip_level"] <= sigma).sum()
            assert run_curves.loc[("test", sigma), "changed"] <= flipped


def test_predictions_match_an_independent_direct_blur(smoke: Path, data_root: Path) -> None:
    run = next(p for p in (smoke / "runs").iterdir() if "rate0.1-" in p.name)
    probe = next(run.glob("probe-*"))
    saved = np.load(probe / "predictions.npz")
    images, _ = load_split(dataset="mnist", split="train", data_dir=data_root, download=False)
    model = build_model(
        name="resnet18", width=4, mean=NORMALIZATION["mnist"][0], std=NORMALIZATION["mnist"][1]
    )
    model.load_state_dict(load_checked(run / "model.pt"))
    model.eval()
    for position in (0, 77, 499):
        image = images[saved["train_index"][position]].double().numpy() / 255
        for s, sigma in enumerate(saved["levels"]):
            blurred = torch.tensor(direct_blur(image, sigma), dtype=torch.float32)
            with torch.no_grad():
                assert model(blurred[None, None]).argmax().item() == saved["train"][s, position]


def test_a_second_run_is_cached_and_identical(
    smoke: Path, data_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = fingerprint(smoke / "runs")
    with caplog.at_level("INFO"):
        assert (
            main(["reproduce", "--preset", "smoke", "--data-dir", str(data_root), "--out", str(smoke)]) == 0
        )
    assert caplog.text.count("cached") == 6 and "trained" not in caplog.text  # 3 trainings, 3 probes
    assert fingerprint(smoke / "runs") == before


def test_same_seed_same_numbers_in_a_fresh_folder(smoke: Path, data_root: Path, tmp_path: Path) -> None:
    fresh = ["--store", str(tmp_path / "store"), "--out", str(tmp_path), "--no-report"]  # tables only
    assert main(["reproduce", "--preset", "smoke", "--data-dir", str(data_root), *fresh]) == 0
    for name in ("curves", "flips", "mislabels"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / f"{name}.csv"), pd.read_csv(smoke / f"{name}.csv")
        )
    columns = lambda frame: frame.drop(columns=["seconds"])  # noqa: E731
    pd.testing.assert_frame_equal(
        columns(pd.read_csv(tmp_path / "metrics.csv")), columns(pd.read_csv(smoke / "metrics.csv"))
    )


def test_runs_in_parallel_processes_fill_the_tables_and_record_their_threads(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command = ["reproduce", "--preset", "smoke", "--data-dir", str(data_root), "--out", str(tmp_path / "out")]
    command += ["--store", str(tmp_path / "store"), "--no-report"]
    with caplog.at_level("INFO"):
        assert main([*command, "--jobs", "2"]) == 0
    for run_id in pd.read_csv(tmp_path / "out" / "runs.csv")["run_id"]:  # the workers' lines, named
        assert f"[{run_id}] trained {run_id}" in caplog.text and f"[{run_id}]   epoch 1/" in caplog.text
    caplog.clear()
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert (
        sorted(runs["rate"]) == [0.0, 0.02, 0.1]
        and len(pd.read_csv(tmp_path / "out" / "curves.csv")) == 3 * 3 * 7
    )
    threads = {
        read_json(path)["environment"]["cpu_threads"] for path in (tmp_path / "store").glob("*/training.json")
    }
    assert threads == {max(1, torch.get_num_threads() // 2)}
    with caplog.at_level("INFO"):
        assert main(command) == 0  # one job now: the same runs, all finished
    assert caplog.text.count("cached") == 6 and "trained" not in caplog.text  # 3 trainings, 3 probes


def test_train_then_probe_equals_reproduce(data_root: Path, tmp_path: Path) -> None:
    common = [*TINY, "--data-dir", str(data_root)]
    assert main(["reproduce", *common, "--out", str(tmp_path / "whole")]) == 0
    steps = ["--out", str(tmp_path / "steps"), "--store", str(tmp_path / "store")]
    assert main(["train", *common, *steps]) == 0
    assert not (tmp_path / "steps" / "curves.csv").exists()
    assert main(["probe", *common, *steps]) == 0
    for name in ("curves", "flips"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "steps" / f"{name}.csv"), pd.read_csv(tmp_path / "whole" / f"{name}.csv")
        )


def test_fashion_mnist_runs(data_root: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "reproduce",
                *TINY,
                "--dataset",
                "fashion-mnist",
                "--data-dir",
                str(data_root),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert runs["dataset"].tolist() == ["fashion-mnist"] and runs["n_mislabelled"].tolist() == [10]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dataset", "cifar"], "choose from 'mnist', 'fashion-mnist'"),
        (["--model", "vgg"], "choose from 'resnet18', 'cnn', 'mlp'"),
        (["--preset", "huge"], "choose from 'smoke', 'quick', 'paper'"),
        (["--rates", "abc"], "cannot read rate"),
        (["--rates", "1.5"], "outside [0, 1)"),
        (["--rates", "0.001"], "0 images per class"),
        (["--sigmas", "1", "2"], "must start at 0"),
        (["--train-size", "1005"], "multiple of 10"),
        (["--train-size", "60010"], "smallest class"),
        (["--width", "0"], "--width must be at least 1"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--precision", "fp16"], "choose from 'fp32', 'bf16'"),
    ],
)
def test_bad_arguments_exit_2_with_a_one_line_reason_before_any_training(
    arguments: list[str], message: str, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        code = main(["reproduce", *TINY, "--data-dir", str(data_root), "--out", str(out), *arguments])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert not (out / "runs").exists()


def test_missing_data_names_the_folder_files_and_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(["reproduce", *TINY, "--data-dir", str(empty), "--no-download", "--out", str(tmp_path / "o")])
        == 1
    )
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(empty) in error and "train-images-idx3-ubyte" in error and "OVERPARAM_DATA" in error


def test_one_step_commands_need_one_run_and_probe_needs_a_model(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [*TINY, "--data-dir", str(data_root), "--out", str(tmp_path), "--store", str(tmp_path / "store")]
    assert main(["train", *common, "--rates", "0", "0.05"]) == 2
    assert "one --rates value" in capsys.readouterr().err
    assert main(["probe", *common]) == 2
    assert "no trained model" in capsys.readouterr().err


def test_another_study_cannot_overwrite_a_folder(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reproduce", *TINY, "--data-dir", str(data_root), "--out", str(tmp_path)]) == 0
    before = fingerprint(tmp_path)
    assert (
        main(["reproduce", *TINY, "--width", "3", "--data-dir", str(data_root), "--out", str(tmp_path)]) == 2
    )
    assert "different study" in capsys.readouterr().err
    assert fingerprint(tmp_path) == before


def test_an_unwritable_output_folder_is_a_clear_error(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["reproduce", *TINY, "--data-dir", str(data_root), "--out", str(blocker / "out")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_the_console_script_reports_usage_errors_with_exit_2() -> None:
    command = [sys.executable, "-m", "overparam", "reproduce", "--dataset", "cifar"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "overparam", "reproduce", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        help_text.returncode == 0
        and "--target-acc" in help_text.stdout
        and "--train-size" in help_text.stdout
    )


def test_each_study_reads_its_own_probe_of_a_shared_run(smoke: Path, data_root: Path, tmp_path: Path) -> None:
    """A clean-sample study reuses the smoke study's trained runs and probes them on the same sigma grid:
    each study's analysis must read its own predictions, not the other probe's."""
    sampled = tmp_path / "sampled"
    arguments = ["--preset", "smoke", "--clean-sample", "100", "--no-report", "--data-dir", str(data_root)]
    assert main(["reproduce", *arguments, "--out", str(sampled)]) == 0
    for out in (smoke, sampled):
        flips = pd.read_csv(out / "flips.csv")
        for run in load_study(out).images:
            expected = flips[(flips["rate"] == run.keys["rate"]) & (flips["split"] == "train")]["index"]
            assert sorted(run.index[run.group != "test"]) == sorted(expected)
