"""The per-run table of benchmarks/gpu_check.sh: phase times, the bf16/compile agreement with eager fp32, and
whether the probe's predictions at sigma 0, taken from the evaluation that ended training, are what the
probe's own blur path gives on this device with sigma 0 among blurred sigmas in its batches (on CPU a test
proves it; GPU libraries choose kernels by shape).

Also the per-phase table: loading the data onto the device, training per epoch, probing a run, the analysis
and the whole report (analysis, figures and page), each timed here or read from the runs' records.

Usage, from the repository root:
    PYTHONPATH=src python3 benchmarks/gpu_summary.py STUDY_DIR STORE DATA_DIR OUT_CSV
writes OUT_CSV (one row per run) and phases.csv beside it.
"""

import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from overparam.config import RunConfig
from overparam.execution import LEVEL_CHUNK
from overparam.experiments.perturbation.analysis import analyse
from overparam.models import compiled
from overparam.probe import predict_under_blur
from overparam.report import write_report
from overparam.results import load_study
from overparam.runs import load_splits, trained_model
from overparam.runtime import make_deterministic, select_device
from overparam.store.files import read_json, run_paths

COLUMNS = [
    "run_id",
    "rate",
    "epochs",
    "reached_target",
    "train_acc",
    "train_seconds",
    "probe_seconds",
    "fp32_agreement",
    "sigma0_mismatches",
]


def recorded_run(store: Path, run_id: str) -> RunConfig:
    """The RunConfig of a trained run, from its training record."""
    settings = read_json(store / run_id / "training.json")["run"]
    known = {f.name: settings[f.name] for f in fields(RunConfig) if f.name in settings}
    return RunConfig(**{**known, "sigmas": tuple(known["sigmas"])})


def sigma0_mismatches(run: RunConfig, store: Path, data_dir: str, device: torch.device) -> int:
    """Probed images, train and test, whose prediction at sigma 0 through the blur path, in batches mixed
    with the next blurred sigmas as the probe runs them, differs from the stored sigma-0 prediction."""
    paths = run_paths(store, run_id=run.run_id(), probe_id=run.probe_id())
    forward = compiled(trained_model(run, paths, device), enabled=run.compile)
    splits = load_splits(dataset=run.dataset, data_dir=data_dir, download=False, device=str(device))
    mismatches = 0
    with np.load(paths.predictions) as saved:
        for split in ("train", "test"):
            index = torch.as_tensor(saved[f"{split}_index"], device=device)
            images = getattr(splits, f"{split}_images")[index]
            mixed = predict_under_blur(
                forward, images, run.sigmas[:LEVEL_CHUNK], precision=run.precision, progress=False
            )
            mismatches += int((mixed[0] != saved[split][0]).sum())
    return mismatches


def main(study: Path, store: Path, data_dir: str, out: Path) -> None:
    runs_table = study / "runs.csv"  # written by reproduce after every finished run
    if not runs_table.exists():
        sys.exit(f"no run finished: {runs_table} is missing")
    make_deterministic()  # as the runs had it: deterministic kernels, cuBLAS workspace
    device = select_device("auto")
    table = pd.read_csv(runs_table)
    agreements, seconds, mismatches = [], [], []
    for run_id in table["run_id"]:
        run = recorded_run(store, run_id)
        probe = read_json(run_paths(store, run_id=run_id, probe_id=run.probe_id()).probe_record)
        seconds.append(probe["seconds"])
        agreements.append((probe.get("fp32_check") or {}).get("agreement"))
        mismatches.append(sigma0_mismatches(run, store, data_dir, device))
    table = table.assign(probe_seconds=seconds, fp32_agreement=agreements, sigma0_mismatches=mismatches)
    table[COLUMNS].to_csv(out, index=False)
    print(table[COLUMNS].to_string(index=False))
    print("sums:", table[["train_seconds", "probe_seconds"]].sum().to_dict())
    phases = phase_table(study, store, data_dir, device, table)
    phases.to_csv(out.parent / "phases.csv", index=False)
    print(phases.to_string(index=False))


def phase_table(
    study: Path, store: Path, data_dir: str, device: torch.device, runs: pd.DataFrame
) -> pd.DataFrame:
    """Seconds of each phase: data (both splits onto the device, from the files), training per epoch and
    probe per run (median and total over the runs' records), analysis and report (timed here)."""
    load_splits.cache_clear()
    began = time.perf_counter()
    load_splits(dataset="mnist", data_dir=data_dir, download=False, device=str(device))
    data = time.perf_counter() - began
    epochs = pd.concat(
        pd.read_csv(run_paths(store, run_id=run_id, probe_id="").metrics) for run_id in runs["run_id"]
    )["seconds"]
    began = time.perf_counter()
    analyse(load_study(study))
    analysis = time.perf_counter() - began
    began = time.perf_counter()
    write_report(study, data_dir=Path(data_dir))
    report = time.perf_counter() - began
    rows = [
        ("data", "both splits to the device", data, data),
        ("training epoch", f"{len(epochs)} epochs of {len(runs)} runs", epochs.median(), epochs.sum()),
        ("probe", f"{len(runs)} runs", runs["probe_seconds"].median(), runs["probe_seconds"].sum()),
        ("analysis", "the study's analysis tables", analysis, analysis),
        ("report", "analysis, figures and page", report, report),
    ]
    return pd.DataFrame(rows, columns=["phase", "of", "median_seconds", "total_seconds"])


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
