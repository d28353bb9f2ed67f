"""The experiment's steps, from its settings: a subspace training per (network, run, d), paths between pairs
of trained runs, a tunnel per trained run; and the raw tables gathered back from their records."""

import io
from dataclasses import dataclass
from itertools import combinations, pairwise
from pathlib import Path

import pandas as pd

from overparam.config import RunConfig
from overparam.experiments.landscape.paths import PathStep
from overparam.experiments.landscape.settings import LandscapeConfig
from overparam.experiments.landscape.subspace import SubspaceTraining
from overparam.experiments.landscape.tunnel import TunnelStep
from overparam.store.files import read_verified
from overparam.store.steps import Step


@dataclass(frozen=True)
class Pair:
    """Two runs a path joins: `kind` "seeds" (one rate, two seeds) or "rates" (one seed, consecutive "
    "rates)."""

    kind: str
    a: RunConfig
    b: RunConfig


def subspace_steps(config: LandscapeConfig) -> dict[str, list[SubspaceTraining]]:
    """Per part ("intrinsic", "memorisation"): every subspace training, the full network (d = 0) included."""
    chosen: dict[str, list[SubspaceTraining]] = {}
    if "intrinsic" in config.parts:
        chosen["intrinsic"] = [
            SubspaceTraining(run, dim, config.anchor_training)
            for run in config.anchor_runs()
            for dim in (0, *config.anchor_dims)
        ]
    if "memorisation" in config.parts:
        chosen["memorisation"] = [
            SubspaceTraining(run, dim, config.memorisation_training)
            for run in config.memorisation_runs()
            for dim in (0, *config.memorisation_dims)
        ]
    return chosen


def pairs(config: LandscapeConfig) -> list[Pair]:
    """Every pair of seeds at each path rate, then each seed's consecutive path rates (nested mislabels)."""
    runs = {(run.rate, run.seed): run for run in config.path_runs()}
    rates = sorted({rate for rate, _ in runs})
    found = [
        Pair("seeds", runs[rate, first], runs[rate, second])
        for rate in rates
        for first, second in combinations(config.seeds, 2)
    ]
    found += [
        Pair("rates", runs[low, seed], runs[high, seed])
        for seed in config.seeds
        for low, high in pairwise(rates)
    ]
    return found


def path_steps(config: LandscapeConfig) -> list[tuple[Pair, PathStep]]:
    if "paths" not in config.parts:
        return []
    return [(pair, PathStep(pair.a, pair.b, config.curve)) for pair in pairs(config)]


def tunnel_steps(config: LandscapeConfig) -> list[TunnelStep]:
    if "tunnel" not in config.parts:
        return []
    return [TunnelStep(run, config.tunnel_directions, config.tunnel_radii) for run in config.path_runs()]


def all_steps(config: LandscapeConfig) -> list[Step]:
    subspace = [step for steps in subspace_steps(config).values() for step in steps]
    return [*subspace, *(step for _, step in path_steps(config)), *tunnel_steps(config)]


def _table(step: Step, store: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(read_verified(step.record(store), name)))


def gather(config: LandscapeConfig, store: Path) -> dict[str, pd.DataFrame]:
    """The raw tables of finished steps (steps not finished are left out): `subspace_<part>` (rows of every
    subspace.csv), `paths` (path.csv rows with the pair's kind, rates and seeds), `tunnel`."""
    tables: dict[str, pd.DataFrame] = {}
    for part, steps in subspace_steps(config).items():
        found = [_table(step, store, "subspace.csv") for step in steps if step.record(store).exists()]
        if found:
            tables[f"subspace_{part}"] = pd.concat(found, ignore_index=True)
    paths = []
    for pair, step in path_steps(config):
        if step.record(store).exists():
            frame = _table(step, store, "path.csv")
            columns = {"pair": pair.kind, "rate_a": pair.a.rate, "rate_b": pair.b.rate}
            columns |= {"seed_a": pair.a.seed, "seed_b": pair.b.seed}
            paths.append(frame.assign(**columns))
    if paths:
        tables["paths"] = pd.concat(paths, ignore_index=True)
    tunnels = [
        _table(step, store, "tunnel.csv") for step in tunnel_steps(config) if step.record(store).exists()
    ]
    if tunnels:
        tables["tunnel"] = pd.concat(tunnels, ignore_index=True)
    return tables
