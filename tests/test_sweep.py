"""Sweep files, executors (local pool, Ray, submitit) and status."""

from pathlib import Path

import pandas as pd
import pytest

import overparam.execution
from overparam.cli import main
from overparam.config import ConfigError
from overparam.execution import RunOptions
from overparam.store.executors import ExecutorOptions, local_threads
from overparam.study import RunsFailedError
from overparam.sweep import load_sweep, run_sweep, sweep_status

SWEEP = """
preset = "smoke"
out = "{out}"

[settings]
train_size = 200
test_size = 100
rates = ["0", "1/20"]
max_epochs = 1

[grid]
width = [2, 3]
"""


def write_sweep(folder: Path, text: str = SWEEP) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.toml"
    path.write_text(text.format(out=folder / "out"))
    return path


def run_options(store: Path, data_root: Path) -> RunOptions:
    return RunOptions(store=str(store), data_dir=str(data_root), download=False)


def tables(out: Path) -> dict[str, pd.DataFrame]:
    found = {name: pd.read_csv(out / f"{name}.csv") for name in ("curves", "flips", "mislabels", "metrics")}
    found["metrics"] = found["metrics"].drop(columns=["seconds"])
    return {
        name: frame.sort_values(list(frame.columns)).reset_index(drop=True) for name, frame in found.items()
    }


def test_a_sweep_file_expands_its_grid(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path))
    assert [point for point, _ in sweep.studies] == [{"width": 2}, {"width": 3}]
    assert all(config.rates == (0.0, 0.05) and config.train_size == 200 for _, config in sweep.studies)
    assert len(sweep.runs()) == 4 and sweep.out == tmp_path / "out"
    assert {unit.labels["width"] for unit in sweep.units()} == {2, 3}
    assert {unit.labels["variant"] for unit in sweep.units()} == {"width=2", "width=3"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('preset = "smoke"\nnoise = 1\n', "unknown keys"),
        ("[settings]\nwidht = 3\n", "unknown setting 'widht'"),
        ("[grid]\nwidth = []\n", "non-empty list"),
        ('[settings]\nrates = ["1/0"]\n', "cannot read rate"),
        ("[settings]\nrates = 0.1\n", "takes a list"),
        ("preset = ", "not valid TOML"),
        ('preset = "huge"\n', "unknown preset"),
    ],
)
def test_bad_sweep_files_are_named(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_executors_produce_the_same_tables(data_root: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("submitit")
    # A run's rounding depends on its CPU threads: Ray and SLURM runs get the threads a local run gets when
    # two share this machine, whatever its core count, and Ray gets CPUs for two such runs at a time.
    threads = local_threads(2)
    ray.init(num_cpus=2 * threads, include_dashboard=False, log_to_driver=False)
    results = {}
    for executor in (
        ExecutorOptions(executor="local", jobs=2),
        ExecutorOptions(executor="ray", cpus_per_run=threads),
        ExecutorOptions(executor="slurm", slurm_cluster="local", cpus_per_run=threads, slurm_minutes=10),
    ):
        folder = tmp_path / executor.executor
        sweep = load_sweep(write_sweep(folder))
        outcomes = run_sweep(sweep, options=run_options(folder / "store", data_root), executor=executor)
        assert sorted(o.status for o in outcomes) == ["done"] * 8, executor  # 4 trainings, 4 probes
        results[executor.executor] = tables(sweep.out)
    ray.shutdown()
    for executor in ("ray", "slurm"):
        for name, frame in results["local"].items():
            pd.testing.assert_frame_equal(
                results[executor][name], frame, check_exact=True, obj=f"{executor} {name}"
            )
    assert set(results["local"]["curves"]["width"]) == {2, 3}


def test_a_failed_run_does_not_stop_the_others_and_is_retried_alone(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = load_sweep(write_sweep(tmp_path))
    store = tmp_path / "store"
    doomed = sweep.runs()[1].run_id()
    real_train = overparam.execution.train_run

    def train_unless_doomed(prepared, *args, **kwargs):
        if prepared.run.run_id() == doomed:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_train(prepared, *args, **kwargs)

    monkeypatch.setattr(overparam.execution, "train_run", train_unless_doomed)
    with pytest.raises(RunsFailedError, match="2 of 8 steps failed"):  # its training, and so its probe
        run_sweep(sweep, options=run_options(store, data_root), executor=ExecutorOptions())
    assert len(pd.read_csv(sweep.out / "runs.csv")) == 3
    states = sweep_status(sweep, store=store).set_index("run_id")
    assert states.loc[doomed, "status"] == "failed" and "out of memory" in states.loc[doomed, "error"]
    assert (states.drop(index=doomed)["status"] == "done").all()

    monkeypatch.undo()
    outcomes = run_sweep(sweep, options=run_options(store, data_root), executor=ExecutorOptions())
    computed = {o.step_id.split("/")[0] for o in outcomes if o.status == "done"}
    assert computed == {doomed}
    assert len(pd.read_csv(sweep.out / "runs.csv")) == 4
    assert (sweep_status(sweep, store=store)["status"] == "done").all()


def test_sweep_and_status_commands(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path)
    common = ["--data-dir", str(data_root), "--store", str(tmp_path / "store")]
    assert main(["status", str(path), *common]) == 0
    assert "4 pending" in capsys.readouterr().out
    assert main(["sweep", str(path), *common]) == 0
    assert "8 steps computed" in capsys.readouterr().out
    assert "mnist, resnet18 width 3" in (tmp_path / "out" / "summary.md").read_text()
    assert main(["sweep", str(path), *common, "--no-report"]) == 0
    assert "0 steps computed, 8 cached" in capsys.readouterr().out
    assert main(["status", str(path), *common]) == 0
    assert "4 done" in capsys.readouterr().out
    assert main(["sweep", str(tmp_path / "missing.toml"), *common]) == 2
    assert "cannot read sweep file" in capsys.readouterr().err
