"""What the lottery tickets say, over seeds (the replicates): each group's fit against the fraction of
weights remaining, the sparsity down to which each group stays fit (`FIT`), and whether the probe's curves
of mislabelled and clean images part once the mislabels no longer fit.

Tables (OUT/analysis/): ticket_fit.csv, ticket_training.csv, ticket_limits.csv, ticket_answer.csv,
ticket_gap.csv, ticket_gap_change.csv; every mean over seeds with its 95 % t interval.
"""

import numpy as np
import pandas as pd

from overparam.results import FAMILY
from overparam.stats import seed_mean

# A group "fits" a ticket when the ticket predicts at least this fraction of it right (assigned labels):
# the 90 % of Li et al. (2018)'s d_int90, fixed here before any ticket was trained.
FIT = 0.9
GROUPS = ("mislabelled", "clean")


def family_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of FAMILY that `frame` has."""
    return [key for key in FAMILY if key in frame]


def fit_table(frame: pd.DataFrame, *, by: list[str]) -> pd.DataFrame:
    """Per `by` (besides the family and the rate) and group: seeds, the mean remaining fraction and the mean
    over seeds of each seed's fraction right (`correct` / `n`), with its 95 % t interval (NaN for one
    seed). frame: one row per seed, group and `by` with columns remaining, group, n, correct."""
    keys = [*family_columns(frame), "rate", *by, "group"]
    rows = frame[frame["n"] > 0].assign(fit=lambda f: f["correct"] / f["n"])
    groups = rows.groupby(keys, sort=False)
    table = groups.agg(seeds=("seed", "nunique"), remaining=("remaining", "mean"), fit=("fit", "mean"))
    table = table.reset_index()
    _, half = seed_mean(groups, "fit")
    return table.assign(fit_low=table["fit"] - half, fit_high=table["fit"] + half)


def training_table(tickets: pd.DataFrame) -> pd.DataFrame:
    """Per family, rate, method and round: seeds, how many of them reached the training target (eval accuracy
    on the assigned labels) and the mean epoch at which they first did (NaN when none did)."""
    keys = [*family_columns(tickets), "rate", "method", "round", "remaining"]
    runs = tickets.drop_duplicates([*keys, "seed"])
    return (
        runs.groupby(keys, sort=False)
        .agg(
            seeds=("seed", "nunique"),
            reached_target=("reached_target", "sum"),
            first_target_epoch=("first_target_epoch", "mean"),
        )
        .reset_index()
    )


def with_dense(tickets: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`tickets` (tickets.csv) with round 0 of every method: the run's over-trained dense model (runs.csv),
    all weights remaining, so that every line starts at the model IMP prunes."""
    dense = runs[runs["run_id"].notna()] if "run_id" in runs else runs
    n_mislabelled, n_train = dense["n_mislabelled"], dense["n_train"]
    mislabelled_right = (dense["mislabelled_train_acc"].fillna(0) * n_mislabelled).round()
    right = {
        "mislabelled": mislabelled_right,
        "clean": (dense["train_acc"] * n_train).round() - mislabelled_right,
        "test": (dense["test_acc"] * dense["n_test"]).round(),
    }
    sizes = {"mislabelled": n_mislabelled, "clean": n_train - n_mislabelled, "test": dense["n_test"]}
    keys = [*family_columns(tickets), "rate", "seed"]
    rows = [
        dense[keys].assign(
            method=method, round=0, remaining=1.0, group=group, n=sizes[group], correct=right[group]
        )
        for method in tickets["method"].unique()
        for group in right
    ]
    return pd.concat([tickets, *rows], ignore_index=True)


def limits(tickets: pd.DataFrame) -> pd.DataFrame:
    """Per run, method and group (mislabelled, clean): the last round down to which the group fits (at least
    FIT of it right at that round and every denser one; 0 when the first round already fails), the fraction
    of weights remaining there, and whether the group still fits at the last round trained (`censored`:
    the limit is sparser than any round tried)."""
    keys = [*family_columns(tickets), "rate", "seed", "method", "group"]
    chosen = tickets[tickets["group"].isin(GROUPS) & (tickets["n"] > 0) & (tickets["round"] > 0)]
    rows = []
    for key, ticket in chosen.sort_values("round").groupby(keys, sort=False):
        fits = (ticket["correct"] / ticket["n"] >= FIT).to_numpy()
        last = int(np.argmin(fits)) if not fits.all() else len(fits)  # rounds that fit before the first miss
        rounds, remaining = ticket["round"].to_numpy(), ticket["remaining"].to_numpy()
        rows.append(
            dict(zip(keys, key, strict=True))
            | {
                "limit_round": int(rounds[last - 1]) if last else 0,
                "limit_remaining": float(remaining[last - 1]) if last else 1.0,
                "censored": bool(fits.all()),
            }
        )
    return pd.DataFrame(rows, columns=[*keys, "limit_round", "limit_remaining", "censored"])


def answer(limits_table: pd.DataFrame) -> pd.DataFrame:
    """Per family, rate and method: the mean over seeds of each group's limit (rounds, and the fraction of
    weights remaining there) with 95 % t intervals, and the paired difference clean minus mislabelled in
    rounds (positive: a band of sparsities where the ticket fits the clean images but not the mislabels),
    with its interval; `detectable` is the interval's half-width, the smallest difference in rounds these
    seeds could have told from none. Censored limits (a group fit at every round) count at the last round
    and are flagged."""
    keys = [*family_columns(limits_table), "rate", "method"]
    wide = limits_table.pivot_table(
        index=[*keys, "seed"],
        columns="group",
        values=["limit_round", "limit_remaining", "censored"],
        aggfunc="first",
    )
    wide.columns = [f"{group}_{value}" for value, group in wide.columns]
    wide = wide.reset_index()
    if not {"mislabelled_limit_round", "clean_limit_round"} <= set(wide):
        return pd.DataFrame()
    wide = wide.dropna(subset=["mislabelled_limit_round", "clean_limit_round"])  # rate 0: no mislabels
    wide["difference"] = wide["clean_limit_round"] - wide["mislabelled_limit_round"]
    groups = wide.groupby(keys, sort=False)
    table = groups.agg(seeds=("seed", "nunique")).reset_index()
    for column in (
        "mislabelled_limit_round",
        "clean_limit_round",
        "mislabelled_limit_remaining",
        "clean_limit_remaining",
        "difference",
    ):
        mean, half = seed_mean(groups, column)
        table[column], table[f"{column}_low"], table[f"{column}_high"] = mean, mean - half, mean + half
    table["detectable"] = table["difference_high"] - table["difference"]
    for group in GROUPS:
        table[f"{group}_censored"] = groups[f"{group}_censored"].any().to_numpy()
    return table


def curve_gap(curves: pd.DataFrame) -> pd.DataFrame:
    """Per run, ticket and perturbation: how much more often mislabelled images change prediction than
    clean ones, averaged over the perturbation's levels above 0 (a difference of fractions; 0: the two
    curves coincide). curves: ticket_curves.csv rows (or a dense run's curves.csv with method and round
    added)."""
    keys = [*family_columns(curves), "rate", "seed", "method", "round", "remaining", "perturbation"]
    moved = curves[(curves["level"] > 0) & curves["group"].isin(GROUPS) & (curves["n"] > 0)]
    mean = moved.groupby([*keys, "group"], sort=False)["changed_fraction"].mean().unstack("group")
    if not set(GROUPS) <= set(mean):
        return pd.DataFrame(columns=[*keys, "gap"])
    return (mean["mislabelled"] - mean["clean"]).rename("gap").dropna().reset_index()


def gap_table(gaps: pd.DataFrame) -> pd.DataFrame:
    """Per family, rate, method, round and perturbation: the mean gap over seeds with its 95 % t interval."""
    keys = [*family_columns(gaps), "rate", "method", "round", "remaining", "perturbation"]
    groups = gaps.groupby(keys, sort=False)
    table = groups.agg(seeds=("seed", "nunique"), gap=("gap", "mean")).reset_index()
    _, half = seed_mean(groups, "gap")
    return table.assign(gap_low=table["gap"] - half, gap_high=table["gap"] + half)


def gap_change(gaps: pd.DataFrame, limits_table: pd.DataFrame) -> pd.DataFrame:
    """The paper's hypothesis, tested: per family, rate, method and perturbation, the gap of each seed's
    first ticket past the mislabels' limit (the sparsest round at which they no longer fit) minus the gap
    of its dense model (round 0), mean over seeds with its 95 % t interval and the smallest change these
    seeds could have detected (`detectable`, the half-width). Seeds whose mislabels fit at every round
    have no such ticket and are left out (`seeds`)."""
    keys = [*family_columns(gaps), "rate", "seed", "method"]
    mislabelled = limits_table[(limits_table["group"] == "mislabelled") & ~limits_table["censored"]]
    past = mislabelled.assign(round=mislabelled["limit_round"] + 1)[[*keys, "round"]]
    below = gaps.merge(past, on=[*keys, "round"])
    dense = gaps[gaps["round"] == 0][[*keys, "perturbation", "gap"]].rename(columns={"gap": "dense_gap"})
    paired = below.merge(dense, on=[*keys, "perturbation"])
    paired = paired.assign(change=paired["gap"] - paired["dense_gap"])
    by = [*family_columns(gaps), "rate", "method", "perturbation"]
    groups = paired.groupby(by, sort=False)
    table = groups.agg(
        seeds=("seed", "nunique"),
        dense_gap=("dense_gap", "mean"),
        gap=("gap", "mean"),
        change=("change", "mean"),
    ).reset_index()
    _, half = seed_mean(groups, "change")
    return table.assign(
        change_low=table["change"] - half, change_high=table["change"] + half, detectable=half
    )
