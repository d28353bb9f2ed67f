"""Read the finished steps of a configuration from the store (each file checked against its step's record)
and make the experiment's tables."""

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from overparam.experiments.simplicity.boolean import lz_complexity
from overparam.experiments.simplicity.config import SimplicityConfig
from overparam.experiments.simplicity.prior import load_functions
from overparam.experiments.simplicity.summary import (
    noise_summary,
    prior_overview,
    prior_tables,
    sgd_against_prior,
)
from overparam.experiments.simplicity.targets import FORMULAS, target
from overparam.store.files import read_verified


def experiment_tables(
    config: SimplicityConfig, *, store: Path
) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """(the prior's overview, {table name: table}): prior_top, prior_by_complexity, prior_rank, prior_points,
    gp_check, sgd_functions, sgd_summary, noise_trainings, noise_summary."""
    functions = load_functions(config.prior(), store)
    overview = prior_overview(functions, length=2**config.architecture.n_bits)
    tables = prior_tables(functions)
    check = config.gp_check()
    tables["gp_check"] = pd.read_csv(io.BytesIO(read_verified(check.record(store), "gp_check.csv")))
    found, summaries = [], []
    for name, step in config.sgd().items():
        sgd = _arrays(step.record(store), "sgd.npz")
        gp = _arrays(config.gp()[name].record(store), "gp.npz")
        clean = target(name)
        table, summary = sgd_against_prior(
            name=name,
            sgd=sgd,
            functions=functions,
            clean=clean,
            train_index=step.task.train_index(),
            target_complexity=lz_complexity((clean + ord("0")).tobytes().decode()),
            gp=gp,
        )
        found.append(table)
        summaries.append({"formula": FORMULAS[name], **summary})
    tables["sgd_functions"] = pd.concat(found, ignore_index=True)
    tables["sgd_summary"] = pd.DataFrame(summaries)
    trainings = [
        pd.read_csv(io.BytesIO(read_verified(step.record(store), "noise.csv")))
        for step in config.noise().values()
    ]
    tables["noise_trainings"] = pd.concat(trainings, ignore_index=True)
    tables["noise_summary"] = noise_summary(tables["noise_trainings"])
    return overview, tables


def _arrays(record: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(read_verified(record, name))) as saved:
        return {key: saved[key] for key in saved.files}
