"""The experiment's tables: the prior's shape, SGD against the prior conditioned on the training labels,
and the label-noise measures over trainings. Intervals are 95 %: t over trainings (the replicates) for
means, Wilson for proportions of draws or trainings."""

import numpy as np
import pandas as pd
from scipy.stats import pearsonr
from scipy.stats import t as student_t

from overparam.experiments.simplicity.boolean import (
    complexities,
    entropy,
    hex_keys,
    pack_array,
    strings,
    unpack,
)
from overparam.stats import wilson_interval


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean of `values` [n] and its 95 % t interval; NaN bounds for fewer than 2 values."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(student_t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def prior_overview(functions: dict[str, np.ndarray], *, length: int, min_count: int = 10) -> dict[str, float]:
    """Draws, distinct functions, mass of the two constant functions, of the top 10 and top 1 % of functions,
    how many functions hold half and 90 % of the mass, and the fitted upper bound log2 P <= -a K - b: least
    squares through the highest log2 P at each complexity K among values drawn at least `min_count` times,
    raised until no such point lies above it."""
    counts, complexity = functions["counts"], functions["complexity"]
    draws, ones = int(counts.sum()), functions["ones"]
    mass = np.sort(counts)[::-1].cumsum() / draws
    table = pd.DataFrame({"complexity": complexity, "log2_p": np.log2(counts / draws), "counts": counts})
    tops = table.groupby("complexity").agg(log2_p=("log2_p", "max"), counts=("counts", "max")).reset_index()
    fitted = tops[tops["counts"] >= min_count]
    slope, intercept = np.nan, np.nan
    if len(fitted) >= 2:  # the least-squares slope, raised to touch the highest point: a bound, not a trend
        slope, intercept = np.polyfit(fitted["complexity"], fitted["log2_p"], 1)
        intercept += (fitted["log2_p"] - slope * fitted["complexity"] - intercept).max()
    return {
        "draws": draws,
        "distinct_functions": len(counts),
        "p_constant_0": float(counts[ones == 0].sum() / draws),
        "p_constant_1": float(counts[ones == length].sum() / draws),
        "constant_most_likely": bool(ones[np.argmax(counts)] in (0, length)),
        "mass_top_10": float(mass[min(9, len(mass) - 1)]),
        "mass_top_1_percent": float(mass[max(0, len(mass) // 100 - 1)]),
        "functions_for_half_the_mass": int(np.searchsorted(mass, 0.5) + 1),
        "functions_for_90_percent": int(np.searchsorted(mass, 0.9) + 1),
        "seen_once_fraction": float((counts == 1).mean()),
        "bound_slope_a": float(-slope),
        "bound_intercept_b": float(-intercept),
        "bound_bins": len(fitted),
        "bound_min_count": min_count,
        "spearman_complexity_log_p": float(table[["complexity", "log2_p"]].corr("spearman").iloc[0, 1]),
    }


def prior_tables(functions: dict[str, np.ndarray], *, top: int = 100) -> dict[str, pd.DataFrame]:
    """prior_top (the `top` most frequent functions), prior_by_complexity (per complexity value: functions,
    draws, probability mass, highest and mean log10 P) and prior_rank (rank-frequency at log-spaced ranks)."""
    keys, counts, complexity, ones = (functions[name] for name in ("keys", "counts", "complexity", "ones"))
    draws = counts.sum()
    order = np.lexsort((np.arange(len(counts)), -counts))
    chosen = order[:top]
    prior_top = pd.DataFrame(
        {
            "rank": np.arange(1, len(chosen) + 1),
            "key": hex_keys(keys[chosen]),
            "function": strings(keys[chosen], length=128),
            "count": counts[chosen],
            "probability": counts[chosen] / draws,
            "complexity": complexity[chosen],
            "entropy": entropy(ones[chosen], length=128),
            "ones": ones[chosen],
        }
    )
    log10_p = np.log10(counts / draws)
    by_complexity = (
        pd.DataFrame({"complexity": complexity, "count": counts, "log10_p": log10_p})
        .groupby("complexity")
        .agg(
            functions=("count", "size"),
            draws=("count", "sum"),
            max_log10_p=("log10_p", "max"),
            mean_log10_p=("log10_p", "mean"),
        )
        .reset_index()
    )
    by_complexity["mass"] = by_complexity["draws"] / draws
    ranks = np.unique(np.geomspace(1, len(counts), num=min(400, len(counts))).astype(int))
    rank = pd.DataFrame({"rank": ranks, "count": counts[order][ranks - 1]})
    rank["probability"] = rank["count"] / draws
    points = (
        pd.DataFrame({"complexity": complexity, "count": counts})
        .value_counts()
        .rename("functions")
        .reset_index()
    )
    points["log10_p"] = np.log10(points["count"] / draws)
    return {
        "prior_top": prior_top,
        "prior_by_complexity": by_complexity,
        "prior_rank": rank,
        "prior_points": points,
    }


def log_correlation(first: pd.Series, second: pd.Series) -> float:
    """Pearson correlation of log10 first and log10 second; NaN for fewer than 3 pairs or a constant side."""
    x, y = np.log10(np.asarray(first, dtype=float)), np.log10(np.asarray(second, dtype=float))
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(pearsonr(x, y).statistic)


def _held_out_error(keys: np.ndarray, clean: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    return (unpack(keys, length=len(clean))[:, held_out] != clean[held_out]).mean(axis=1)


def sgd_against_prior(
    *,
    name: str,
    sgd: dict[str, np.ndarray],
    functions: dict[str, np.ndarray],
    clean: np.ndarray,
    train_index: np.ndarray,
    target_complexity: float,
    gp: dict[str, np.ndarray],
) -> tuple[pd.DataFrame, dict[str, object]]:
    """For target `name`: a row per function found by SGD or by the prior conditioned on the training labels
    (rejection: prior draws that agree with the target on every training input), with both counts and
    probabilities and, for those in `gp` (keys, log10_p), the Gaussian-process log10 P(f | S); and a summary
    row: trainings, functions, prior support of SGD's mass (Wilson), log-probability correlations of
    P_SGD with the sampled and with the GP P(f | S), and the mean held-out error under each (t intervals)."""
    held_out = np.setdiff1d(np.arange(len(clean)), train_index)
    on_train = np.zeros((1, len(clean)), dtype=np.uint8)
    on_train[0, train_index] = 1
    differs = functions["keys"] ^ pack_array(clean[None, :])
    consistent = ((differs & pack_array(on_train)) == 0).all(axis=1)
    prior_keys, prior_counts = functions["keys"][consistent], functions["counts"][consistent]
    found = pd.DataFrame(
        {
            "key": hex_keys(sgd["keys"]),
            "sgd_count": sgd["counts"],
            "sgd_complexity": complexities(strings(sgd["keys"], length=len(clean))),
        }
    )
    conditioned = pd.DataFrame(
        {
            "key": hex_keys(prior_keys),
            "prior_count": prior_counts,
            "complexity": functions["complexity"][consistent],
        }
    )
    table = found.merge(conditioned, on="key", how="outer").fillna({"sgd_count": 0, "prior_count": 0})
    all_keys = np.concatenate([sgd["keys"], prior_keys]) if len(prior_keys) else sgd["keys"]
    error = dict(zip(hex_keys(all_keys), _held_out_error(all_keys, clean, held_out), strict=True))
    table["held_out_error"] = table["key"].map(error)
    table["complexity"] = table["complexity"].fillna(table.pop("sgd_complexity"))
    reached, prior_total = int(sgd["counts"].sum()), int(prior_counts.sum())
    table["p_sgd"] = table["sgd_count"] / max(reached, 1)
    table["p_prior"] = table["prior_count"] / prior_total if prior_total else np.nan
    table["log10_p_gp"] = table["key"].map(dict(zip(hex_keys(gp["keys"]), gp["log10_p"], strict=True)))
    table.insert(0, "target", name)
    table = table.sort_values(["sgd_count", "prior_count"], ascending=False, ignore_index=True)
    both = table[(table["sgd_count"] > 0) & (table["prior_count"] > 0)]
    supported = int(both["sgd_count"].sum())
    share, low, high = wilson_interval(successes=np.array(supported), trials=np.array(reached))
    r = log_correlation(both["p_sgd"], both["p_prior"])
    with_gp = table[table["log10_p_gp"].notna() & (table["sgd_count"] > 0)]
    gp_r = log_correlation(with_gp["p_sgd"], 10 ** with_gp["log10_p_gp"])
    repeated = with_gp[with_gp["sgd_count"] > 1]
    gp_r2 = log_correlation(repeated["p_sgd"], 10 ** repeated["log10_p_gp"])
    sgd_errors = np.repeat(table["held_out_error"], table["sgd_count"].astype(int))
    prior_errors = np.repeat(table["held_out_error"], table["prior_count"].astype(int))
    summary: dict[str, object] = {
        "target": name,
        "target_complexity": target_complexity,
        "trainings": len(sgd["epochs"]),
        "reached_zero_error": reached,
        "sgd_functions": int((table["sgd_count"] > 0).sum()),
        "prior_draws_consistent": prior_total,
        "prior_functions_consistent": int((table["prior_count"] > 0).sum()),
        "sgd_mass_with_prior_support": float(share),
        "sgd_mass_with_prior_support_low": float(low),
        "sgd_mass_with_prior_support_high": float(high),
        "functions_in_both": len(both),
        "log_probability_correlation": float(r),
        "gp_functions": len(with_gp),
        "gp_mass": float(with_gp["p_sgd"].sum()),
        "gp_log_probability_correlation": float(gp_r),
        "gp_functions_found_twice": len(repeated),
        "gp_correlation_found_twice": float(gp_r2),
    }
    for label, errors in (("sgd", sgd_errors), ("prior", prior_errors)):
        mean, low, high = t_interval(errors.to_numpy())
        summary |= {f"{label}_error": mean, f"{label}_error_low": low, f"{label}_error_high": high}
    return table, summary


def noise_summary(trainings: pd.DataFrame) -> pd.DataFrame:
    """Per target and number of flips, over the trainings that reached zero error: means with 95 % t
    intervals over trainings of the held-out error, the complexity of the learned and of the lookup function,
    the per-training fraction of informative held-out neighbours that follow a flipped label (and the same
    fraction next to clean training inputs), and their paired difference, whose half-width is the smallest
    difference these trainings could detect; and the pooled fractions with Wilson intervals."""
    rows = []
    for (name, flips), group in trainings.groupby(["target", "flips"], sort=True):
        done = group[group["epoch"] >= 0]
        row: dict[str, object] = {
            "target": name,
            "flips": flips,
            "trainings": len(group),
            "reached_zero_error": len(done),
            "target_complexity": float(group["target_complexity"].iloc[0]),
        }
        for column in ("held_out_error", "complexity", "lookup_complexity"):
            mean, low, high = t_interval(done[column].to_numpy())
            row |= {column: mean, f"{column}_low": low, f"{column}_high": high}
        with_pairs = done[(done["flipped_pairs"] > 0) & (done["clean_pairs"] > 0)]
        flipped = with_pairs["flipped_follow"] / with_pairs["flipped_pairs"]
        clean = (done["clean_follow"] / done["clean_pairs"]).where(done["clean_pairs"] > 0).dropna()
        paired = flipped - with_pairs["clean_follow"] / with_pairs["clean_pairs"]
        for label, values in (("follow_flipped", flipped), ("follow_clean", clean), ("difference", paired)):
            mean, low, high = t_interval(values.to_numpy())
            row |= {label: mean, f"{label}_low": low, f"{label}_high": high}
        row["difference_detectable"] = (row["difference_high"] - row["difference_low"]) / 2
        for label in ("flipped", "clean"):
            share, low, high = wilson_interval(
                successes=np.array(done[f"{label}_follow"].sum()),
                trials=np.array(done[f"{label}_pairs"].sum()),
            )
            row |= {
                f"pooled_{label}": float(share),
                f"pooled_{label}_low": float(low),
                f"pooled_{label}_high": float(high),
            }
        rows.append(row)
    return pd.DataFrame(rows)
