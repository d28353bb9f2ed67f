"""The per-run table of benchmarks/gpu_check.sh: phase times, the bf16/compile agreement with eager fp32, and
whether the probe's blur path at sigma 0 repeats the evaluation that ended training on this device (on CPU a
test proves it bitwise; cuDNN may pick other kernels for other batch shapes).

Usage: python benchmarks/gpu_summary.py STUDY_DIR STORE DATA_DIR OUT_CSV
"""

import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from overparam.config import RunConfig
from overparam.execution import load_splits, new_model
from overparam.models import compiled
from overparam.probe import predict_under_blur
from overparam.storage import load_checked, read_json


def sigma0_mismatches(run_folder: Path, data_dir: str, device: str) -> int:
    """Test images whose blur-path prediction at sigma 0 differs from training's last evaluation."""
    record = read_json(run_folder / "training.json")
    settings = {f.name: record["run"][f.name] for f in fields(RunConfig) if f.name in record["run"]}
    run = RunConfig(**{**settings, "sigmas": tuple(settings["sigmas"])})
    model = new_model(run).to(device)
    model.load_state_dict(load_checked(run_folder / "model.pt", map_location=device))
    probe = next(run_folder.glob("probe-*/predictions.npz"))
    with np.load(probe) as saved, np.load(run_folder / "final_predictions.npz") as final:
        test_index, evaluated = saved["test_index"], final["test"]
    splits = load_splits(dataset=run.dataset, data_dir=data_dir, download=False, device=device)
    images = splits.test_images[torch.as_tensor(test_index, device=device)]
    forward = compiled(model, enabled=run.compile)
    blurred = predict_under_blur(forward, images, [0.0], precision=run.precision, progress=False)[0]
    return int((blurred != evaluated).sum())


def main(study: Path, store: Path, data_dir: str, out: Path) -> None:
    runs_table = study / "runs.csv"  # written by reproduce after every finished run
    if not runs_table.exists():
        sys.exit(f"no run finished: {runs_table} is missing")
    table = pd.read_csv(runs_table)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probes = [
        [json.loads(path.read_text()) for path in (store / run_id).glob("probe-*/probe.json")]
        for run_id in table["run_id"]
    ]
    table["probe_seconds"] = [found[0]["seconds"] if found else None for found in probes]
    table["fp32_agreement"] = [
        (found[0].get("fp32_check") or {}).get("agreement") if found else None for found in probes
    ]
    table["sigma0_mismatches"] = [
        sigma0_mismatches(store / run_id, data_dir, device) if found else None
        for run_id, found in zip(table["run_id"], probes, strict=True)
    ]
    columns = [
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
    table[columns].to_csv(out, index=False)
    print(table[columns].to_string(index=False))
    print("sums:", table[["train_seconds", "probe_seconds"]].sum().to_dict())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
