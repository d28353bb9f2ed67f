"""Across rates (PROTOCOL step 6): does a curve summary change abruptly as the mislabelling rate grows?

Seeds are the unit of replication. Runs of one seed share the initial weights, the data order and (nested)
mislabels, so rates are paired within a seed and the seed is a block: y[s, r] = mu_r + b_s + e[s, r]. The
noise of every comparison of rates is the seed-by-rate residual e, estimated from the two-way additive fit
with (k - 1)(R - 1) degrees of freedom (k seeds, R rates); the seed effects b_s, often far larger, cancel.
With one seed nothing measures that noise: the transition test then takes it from the scatter of the rates
around the fitted trend, jumps carry no z, and every row says that it is within one model.

Every perturbation (overparam.perturb) is its own experiment: a curve is one summary of one set of images
under one perturbation, and nothing is pooled or corrected across perturbations. The searches are
Holm-adjusted within a family and perturbation, so each perturbation's verdict is self-contained and adding a
perturbation to a study leaves the others' verdicts as they were.

Tables (tidy, one observation per row, the family's key columns first, then `perturbation`; see README
"Outputs"):
- `run_values`: per run x curve, the value of a summary (and its bootstrap se over images);
- `rate_summaries`: per curve x rate, the mean over seeds with a t interval from the seed spread;
- `jumps`: per curve x pair of consecutive rates, the paired jump and its t test on the block residual;
- `transitions`: per curve, the search for a step or ramp beyond a smooth trend, the test fixed in advance at
  the paper's claimed place (1.25 % to 1.43 %), and the minimum detectable effect of each;
- `across_widths`: when a study trains several widths (a sweep over `width`), per curve whether the fixed
  test's step differs between the widths.
"""

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import chi2, nct, norm
from scipy.stats import t as student_t

from overparam.probe import GROUPS
from overparam.results import FAMILY, PERTURBATION, percent, with_rate_percent
from overparam.stats import Z95

# one summary of one set of images under one perturbation, across a family's rates
CURVE = (*FAMILY, PERTURBATION, "subset", "group", "summary")
GAP = "mislabelled - clean"  # the group of the gap-adjusted difference (subset "fit", summary "auc")
TESTED_SUMMARIES = ("auc", "half_level")  # of the changed-fraction curves; fit_fraction is only shown
CLAIMED = (1 / 80, 1 / 70)  # the paper's transition: between 1.25 % and 1.43 % mislabelled
ALPHA, POWER = 0.05, 0.8  # of every test, and of every minimum detectable effect
# The smooth trends a transition must stand out from, each a polynomial on its scale (scale, degree). Log rate
# gets a line: on the protocol's grid six of eight rates crowd into a narrow band of log rate, and a quadratic
# there bends inside that band and absorbs a change at the claimed place (simulated power for a ramp of 3
# residual sd with 3 seeds: 63 % against 81 %, at the same size; tests/test_transitions.py).
SMOOTH_MODELS = {
    "linear in log rate": (np.log, 1),
    "quadratic in sqrt rate": (np.sqrt, 2),
    "quadratic in rate": (np.asarray, 2),
}
SIDE = 2  # rates needed on either side of a change: one rate apart from the rest is an outlier, not a level
MIN_RATES = 5  # a quadratic trend, a step and one degree of freedom for the noise level
# The test at the paper's place alone, when seeds measure the noise: a quadratic trend and the step (the
# search needs MIN_RATES, and SIDE rates on either side of each candidate).
CLAIMED_MIN_RATES = 4
TRANSITION_RESAMPLES = 9999  # simulated null studies per design
MDE_RESAMPLES = 2000  # simulated studies per candidate effect size


# --- per run, per rate and per pair of rates ---------------------------------------------------------------


def run_values(
    summaries: pd.DataFrame, gap_adjusted: pd.DataFrame, starting_gap: pd.DataFrame
) -> pd.DataFrame:
    """One row per run x curve: the curve summaries of `summaries` (per perturbation, subsets "all" and
    "fit", every group, auc and half_level); the gap-adjusted difference of `gap_adjusted` (subset "fit",
    group GAP, summary "auc": the fit mislabelled images' area under the changed-fraction curve minus the fit
    clean images'); and from `starting_gap` the fraction of each training group fit at level 0 (subset
    "all", summary "fit_fraction"). The fit fraction is the unperturbed model's, the same under every
    perturbation: its rows are repeated for each perturbation of the run's family in `summaries`, so the rows
    of one perturbation are a complete table on their own. Columns: the run keys, perturbation, subset,
    group, summary, value, se, low, high (intervals over images: within one model)."""
    columns = [*FAMILY, "rate", "seed", PERTURBATION, "subset", "group", "summary", "value", "se", "low"]
    columns += ["high"]
    gap = gap_adjusted.assign(subset="fit", group=GAP, summary="auc").rename(
        columns={"auc_difference": "value", "auc_difference_low": "low", "auc_difference_high": "high"}
    )
    probed = summaries[[*FAMILY, PERTURBATION]].drop_duplicates()
    fit = [
        starting_gap.assign(subset="all", group=group, summary="fit_fraction")
        .assign(
            value=1 - starting_gap[f"error_{group}"],
            low=1 - starting_gap[f"error_{group}_high"],
            high=1 - starting_gap[f"error_{group}_low"],
        )
        .loc[starting_gap[f"n_{group}"] > 0]
        .merge(probed, on=list(FAMILY))
        for group in ("mislabelled", "clean")
    ]
    frames = [gap, *fit]
    for frame in frames:
        frame["se"] = (frame["high"] - frame["low"]) / (2 * Z95)
    return pd.concat([summaries[columns], *(frame[columns] for frame in frames)], ignore_index=True)


def seed_matrix(curve: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rates [R], seeds [k], values [k, R]) of one curve's run values, keeping the rates with a finite value
    and then the seeds that have every one of them (a block design needs complete blocks)."""
    table = curve.pivot_table(index="seed", columns="rate", values="value", aggfunc="first", dropna=False)
    table = table.loc[:, table.notna().any(axis=0)]
    table = table[table.notna().all(axis=1)]
    return table.columns.to_numpy(float), table.index.to_numpy(), table.to_numpy(float)


def block_noise(values: np.ndarray) -> tuple[float, int]:
    """Variance of the seed-by-rate residual of `values` [k, R] (two-way additive fit) and its degrees of
    freedom (k - 1)(R - 1); (NaN, 0) with fewer than 2 seeds or rates."""
    k, count = values.shape
    dof = (k - 1) * (count - 1)
    if dof == 0:
        return np.nan, 0
    residual = values - values.mean(axis=0) - values.mean(axis=1, keepdims=True) + values.mean()
    return float((residual**2).sum() / dof), dof


def rate_summaries(values: pd.DataFrame) -> pd.DataFrame:
    """Per curve x rate: n_seeds, value (mean over seeds; NaN when any seed's is censored), seed_sd, se and a
    95 % interval. With k >= 2 seeds: se = seed_sd / sqrt(k) and value +- t(k - 1) se, seeds as replicates
    (basis "seeds"). With one seed: the run's bootstrap interval over images (basis "one model": images of
    one model are not replicates of the experiment)."""
    grouped = values.groupby([*CURVE, "rate"], sort=False)
    table = grouped.agg(
        n_seeds=("value", "size"),
        value=("value", lambda v: v.mean(skipna=False)),
        seed_sd=("value", "std"),
        single_se=("se", "first"),
        single_low=("low", "first"),
        single_high=("high", "first"),
    ).reset_index()
    several = table["n_seeds"] > 1
    half = (
        student_t.ppf(0.975, np.maximum(table["n_seeds"] - 1, 1))
        * table["seed_sd"]
        / np.sqrt(table["n_seeds"])
    )
    table["se"] = np.where(several, table["seed_sd"] / np.sqrt(table["n_seeds"]), table["single_se"])
    table["low"] = np.where(several, table["value"] - half, table["single_low"])
    table["high"] = np.where(several, table["value"] + half, table["single_high"])
    table["basis"] = np.where(several, "seeds", "one model")
    table["censored"] = table["value"].isna()
    order = table["group"].map(lambda group: [*GROUPS, GAP].index(group))
    perturbations = list(pd.unique(values[PERTURBATION]))
    table = table.assign(order=order, perturbation_order=table[PERTURBATION].map(perturbations.index))
    table = table.sort_values([*FAMILY, "perturbation_order", "subset", "order", "summary", "rate"])
    columns = [*CURVE, "rate", "n_seeds", "value", "low", "high", "se", "seed_sd", "basis", "censored"]
    return with_rate_percent(table[columns].reset_index(drop=True))


def jumps(values: pd.DataFrame) -> pd.DataFrame:
    """Per curve x pair of consecutive rates: jump = mean over seeds of the paired difference value(high) -
    value(low); with k >= 2 complete seeds its se is sqrt(2 v / k), v the block residual variance over the
    curve's rates, t = jump / se on (k - 1)(R - 1) degrees of freedom, a 95 % interval and a two-sided p. No
    se, t or p with one seed (basis "one model"). `control` marks the step from rate 0, which no transition
    test uses."""
    rows = []
    for key, curve in values.groupby(list(CURVE), sort=False):
        rates, _, matrix = seed_matrix(curve)
        if len(rates) < 2 or len(matrix) == 0:
            continue
        k = len(matrix)
        variance, dof = block_noise(matrix)
        jump = np.diff(matrix, axis=1).mean(axis=0)
        se = np.full(len(jump), np.sqrt(2 * variance / k) if dof else np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = jump / se
        p = 2 * student_t.sf(np.abs(t), max(dof, 1)) if dof else np.full(len(jump), np.nan)
        half = student_t.ppf(0.975, max(dof, 1)) * se
        rows.append(
            pd.DataFrame(
                dict(zip(CURVE, key, strict=True))
                | {"rate_low": rates[:-1], "rate_high": rates[1:], "n_seeds": k, "dof": dof}
                | {
                    "jump": jump,
                    "jump_low": jump - half,
                    "jump_high": jump + half,
                    "se": se,
                    "t": t,
                    "p_value": p,
                }
                | {"basis": "seeds" if dof else "one model", "control": rates[:-1] == 0}
            )
        )
    columns = [*CURVE, "rate_low", "rate_high", "n_seeds", "dof", "jump", "jump_low", "jump_high", "se", "t"]
    columns += ["p_value", "basis", "control"]
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    table.insert(table.columns.get_loc("rate_high") + 1, "rate_low_percent", 100 * table["rate_low"])
    table.insert(table.columns.get_loc("rate_low_percent") + 1, "rate_high_percent", 100 * table["rate_high"])
    return table


def gap_overall(values: pd.DataFrame) -> pd.DataFrame:
    """The paper's second question in one number per family and perturbation: once the starting gap is
    accounted for, do fit mislabelled and fit clean images change alike? estimate = mean over the non-zero
    rates and the seeds of
    the gap-adjusted AUC difference (mislabelled - clean, group GAP). With k >= 2 seeds each seed's mean over
    rates is one replicate: a t interval and two-sided t test on k - 1 degrees of freedom, and the minimum
    difference that test detects with POWER at ALPHA. With one seed the interval is over images only
    (independent bootstrap se's of the rates combined; basis "one model")."""
    rows = []
    gap = values[(values["group"] == GAP) & (values["rate"] > 0)]
    for key, family in gap.groupby([*FAMILY, PERTURBATION], sort=False):
        rates, seeds, matrix = seed_matrix(family)
        row = dict(zip([*FAMILY, PERTURBATION], key, strict=True)) | {"n_rates": len(rates)}
        row["n_seeds"] = len(seeds)
        if len(rates) == 0:
            rows.append(row)
            continue
        if len(seeds) >= 2:
            per_seed = matrix.mean(axis=1)
            se, dof = per_seed.std(ddof=1) / np.sqrt(len(seeds)), len(seeds) - 1
            basis = "seeds"
        elif len(seeds) == 1:
            per_seed = matrix.mean(axis=1)
            ses = family.set_index("rate").loc[rates, "se"].to_numpy(float)
            se, dof = float(np.sqrt((ses**2).sum()) / len(rates)), 0
            basis = "one model"
        else:
            rows.append(row)
            continue
        estimate = float(per_seed.mean())
        quantile = student_t.ppf(0.975, dof) if dof else Z95
        with np.errstate(invalid="ignore", divide="ignore"):
            statistic = np.divide(estimate, se)  # inf (or NaN for 0 / 0) when every image agrees
        p_value = 2 * (student_t.sf(abs(statistic), dof) if dof else norm.sf(abs(statistic)))
        row |= {
            "estimate": estimate,
            "low": estimate - quantile * se,
            "high": estimate + quantile * se,
            "se": se,
            "p_value": float(p_value),
            "mde": _t_mde(se, dof) if dof else (Z95 + norm.ppf(POWER)) * se,
            "basis": basis,
        }
        rows.append(row)
    columns = [*FAMILY, PERTURBATION, "n_rates", "n_seeds", "estimate", "low", "high", "se", "p_value"]
    return pd.DataFrame(rows).reindex(columns=[*columns, "mde", "basis"])


# --- the transition tests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """The regressors of a transition test over R rates: for each smooth model [R, P] (a polynomial on its
    scale, standardised) and each change a [R] regressor: a step between consecutive rates, or a ramp over two
    intervals (0, then 1/2 at the middle rate, then 1) whose midpoint is a grid rate. Each change has SIDE
    rates on either side."""

    rates: tuple[float, ...]
    smooth: dict[str, np.ndarray]
    changes: np.ndarray  # [C, R]
    shapes: tuple[str, ...]  # "step" or "ramp", per change
    starts: tuple[int, ...]  # the change rises after rates[start], per change
    ends: tuple[int, ...]  # and is complete at rates[end]


@functools.lru_cache(maxsize=64)
def design(rates: tuple[float, ...]) -> Design:
    count = len(rates)
    smooth = {}
    for name, (scale, degree) in SMOOTH_MODELS.items():
        x = scale(np.asarray(rates))
        x = (x - x.mean()) / x.std()
        smooth[name] = np.stack([x**power for power in range(degree + 1)], axis=1)
    index = np.arange(count)
    changes, shapes, starts, ends = [], [], [], []
    for start in range(SIDE - 1, count - SIDE):
        changes.append((index > start).astype(float))
        shapes.append("step"), starts.append(start), ends.append(start + 1)
    for start in range(SIDE - 1, count - SIDE - 1):
        changes.append(np.clip((index - start) / 2, 0, 1))
        shapes.append("ramp"), starts.append(start), ends.append(start + 2)
    return Design(tuple(rates), smooth, np.array(changes), tuple(shapes), tuple(starts), tuple(ends))


def _residual_maker(x: np.ndarray) -> np.ndarray:
    """[R, R] matrix mapping data to the least-squares residuals of design `x` [R, P]."""
    return np.eye(len(x)) - x @ np.linalg.pinv(x)


def _explained(smooth: np.ndarray, changes: np.ndarray) -> np.ndarray:
    """[C, R] rows u_c such that (u_c . y)^2 is how much change c reduces the residual sum of squares of the
    smooth model: u_c = M c / |M c|, M the smooth model's residual maker."""
    projected = changes @ _residual_maker(smooth).T
    return projected / np.linalg.norm(projected, axis=1, keepdims=True)


@functools.lru_cache(maxsize=64)
def _null_statistics(
    rates: tuple[float, ...], dof: int, n_resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """Per smooth model, the sorted maxima over changes of F = (u_c . z)^2 / s^2 in `n_resamples` studies
    with no change: z ~ N(0, I), s^2 ~ chi2(dof) / dof independent (dof = 0: s^2 is the smooth + change
    model's own residual mean square, as with one seed). F does not depend on the smooth curve or the noise
    level, so one simulation per design serves every curve."""
    plan, rng = design(rates), np.random.default_rng([seed, len(rates), dof])
    z = rng.standard_normal((n_resamples, len(rates)))
    scale = rng.chisquare(dof, n_resamples) / dof if dof else None
    return {
        name: np.sort(_statistics(z, smooth, plan.changes, scale).max(axis=1))
        for name, smooth in plan.smooth.items()
    }


def _statistics(
    z: np.ndarray, smooth: np.ndarray, changes: np.ndarray, scale: np.ndarray | None
) -> np.ndarray:
    """[B, C] F statistics of each change for data z [B, R] (already in units of the noise sd). `scale` [B]:
    the replicate estimate of the noise variance; None: each change's own residual mean square."""
    explained = (z @ _explained(smooth, changes).T) ** 2
    if scale is not None:
        return explained / scale[:, None]
    residual = ((z @ _residual_maker(smooth).T) ** 2).sum(axis=1, keepdims=True) - explained
    dof = len(smooth) - smooth.shape[1] - 1
    return explained / np.maximum(residual / dof, 1e-12 * (1 + explained))


@dataclass(frozen=True)
class Search:
    """The strongest change beyond a smooth trend, and how surprising it is."""

    shape: str  # "step" or "ramp"
    rate_low: float  # the change rises after this rate
    rate_high: float  # and is complete here
    jump: float  # its height beyond the trend, units of the summary (no interval: the place was chosen)
    statistic: float
    p_value: float  # Monte Carlo, the largest over the smooth models
    smooth_model: str  # the model that gave that p-value


def search_transition(
    *, rates: np.ndarray, means: np.ndarray, noise_var: float, dof: int, n_seeds: int,
    n_resamples: int = TRANSITION_RESAMPLES, seed: int = 0,
) -> Search:  # fmt: skip
    """Search every step and ramp (see `design`) beyond each smooth model of the rate means [R] (rates > 0,
    ascending). With replicate noise (dof > 0) F_c = (RSS_smooth - RSS_smooth+c) / (noise_var / n_seeds);
    with dof = 0 (one seed) the noise is each fit's own residual mean square (R - 4 degrees of freedom), much
    less powerful. The statistic is the maximum over changes, so the p-value includes the choice of place
    and shape; its null distribution is simulated (`_null_statistics`, exact for normal errors). A trend
    that is smooth on any of the scales is not a transition: the p-value is the largest of the models'."""
    rates, means = np.asarray(rates, float), np.asarray(means, float)
    if len(rates) < MIN_RATES or not np.all(np.isfinite(means)):
        raise ValueError(f"need at least {MIN_RATES} finite rate means; got {means}")
    plan = design(tuple(rates))
    sd = np.sqrt(noise_var / n_seeds) if dof else 1.0
    null = _null_statistics(tuple(rates), dof, n_resamples, seed)
    best = None
    for name, smooth in plan.smooth.items():
        observed = _statistics((means / sd)[None], smooth, plan.changes, np.ones(1) if dof else None)[0]
        statistic = float(observed.max())
        exceed = len(null[name]) - np.searchsorted(null[name], statistic, side="left")
        p_value = (1 + exceed) / (1 + len(null[name]))
        if best is None or p_value > best.p_value:
            chosen = int(observed.argmax())
            coefficients = np.linalg.lstsq(np.c_[smooth, plan.changes[chosen]], means)[0]
            best = Search(
                shape=plan.shapes[chosen],
                rate_low=float(rates[plan.starts[chosen]]),
                rate_high=float(rates[plan.ends[chosen]]),
                jump=float(coefficients[-1]),
                statistic=statistic,
                p_value=float(p_value),
                smooth_model=name,
            )
    return best


def search_mde(
    *, rates: np.ndarray, noise_var: float, dof: int, n_seeds: int, place: int,
    n_resamples: int = MDE_RESAMPLES, seed: int = 0,
) -> float:  # fmt: skip
    """The smallest step after rates[place] (units of the summary) that `search_transition` detects at
    ALPHA with probability POWER, by simulation at this noise level (NaN with one seed: the noise level is
    then estimated around each fit, not known in advance)."""
    if not dof or not np.isfinite(noise_var) or noise_var <= 0:
        return np.nan
    plan, rates_key = design(tuple(rates)), tuple(np.asarray(rates, float))
    null = _null_statistics(rates_key, dof, TRANSITION_RESAMPLES, seed)
    critical = {
        name: statistics[int(np.ceil((1 - ALPHA) * len(statistics))) - 1] for name, statistics in null.items()
    }
    rng = np.random.default_rng([seed, place, dof])
    noise = rng.standard_normal((n_resamples, len(rates)))
    scale = rng.chisquare(dof, n_resamples) / dof
    step = (np.arange(len(rates)) > place).astype(float)

    def power(height: float) -> float:  # height in units of the rate means' sd
        z = noise + height * step
        detected = np.ones(n_resamples, bool)
        for name, smooth in plan.smooth.items():
            detected &= _statistics(z, smooth, plan.changes, scale).max(axis=1) > critical[name]
        return float(detected.mean())

    high = 1.0
    while power(high) < POWER:
        high *= 2
        if high > 1e4:
            return np.inf
    return float(brentq(lambda h: power(h) - POWER, 0.0, high, xtol=1e-3)) * np.sqrt(noise_var / n_seeds)


@dataclass(frozen=True)
class Claimed:
    """The test fixed in advance at one place: a step there beyond a smooth trend (no search)."""

    estimate: float
    low: float
    high: float
    p_value: float  # two-sided t, the largest over the smooth models
    dof: int
    mde: float  # the step that this test detects with probability POWER at ALPHA
    smooth_model: str


def claimed_step(
    *, rates: np.ndarray, means: np.ndarray, noise_var: float, dof: int, n_seeds: int, place: int
) -> Claimed:
    """t test of a step after rates[place] beyond each smooth model of the rate means [R]. With replicate
    noise (dof > 0) its se is sqrt(noise_var / n_seeds [(X'X)^-1]_cc) on dof degrees of freedom; with dof = 0
    (one seed) the noise is the smooth + step fit's residual mean square on R - 4. The estimate, interval and
    minimum detectable effect (noncentral t) are those of the model with the largest p-value."""
    rates, means = np.asarray(rates, float), np.asarray(means, float)
    plan = design(tuple(rates))
    step = (np.arange(len(rates)) > place).astype(float)
    best = None
    for name, smooth in plan.smooth.items():
        x = np.c_[smooth, step]
        coefficients, *_ = np.linalg.lstsq(x, means)
        if dof:
            variance, freedom = noise_var / n_seeds, dof
        else:
            freedom = len(rates) - x.shape[1]
            variance = float(((means - x @ coefficients) ** 2).sum() / freedom)
        se = np.sqrt(variance * np.linalg.inv(x.T @ x)[-1, -1])
        estimate = float(coefficients[-1])
        statistic = estimate / se if se > 0 else np.inf * np.sign(estimate)
        p_value = float(2 * student_t.sf(abs(statistic), freedom))
        if best is None or p_value > best.p_value:
            half = student_t.ppf(0.975, freedom) * se
            best = Claimed(
                estimate, estimate - half, estimate + half, p_value, freedom, _t_mde(se, freedom), name
            )
    return best


def _t_mde(se: float, dof: int) -> float:
    """The effect a two-sided t test at ALPHA with this se and dof detects with probability POWER."""
    if not se > 0:
        return 0.0
    critical = student_t.ppf(1 - ALPHA / 2, dof)

    def power(ncp: float) -> float:  # the lower tail underflows to NaN in scipy's nct: there it is 0
        return float(nct.sf(critical, dof, ncp) + np.nan_to_num(nct.cdf(-critical, dof, ncp)))

    high = 1.0
    while power(high) < POWER:  # nct is accurate where it is needed, not at noncentralities of 100
        high *= 2
    return float(brentq(lambda ncp: power(ncp) - POWER, 0.0, high)) * se


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of p-values [M] for M tests (family-wise error)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    result = np.empty_like(p)
    result[order] = adjusted
    return result


def transitions(
    values: pd.DataFrame, *, runs: pd.DataFrame | None = None, n_resamples: int = TRANSITION_RESAMPLES,
    seed: int = 0, with_mde: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """One row per curve of `values` (`run_values`): over the non-zero rates (rate 0 is the control: a
    log-rate trend cannot include it) and the seeds that have all of them,
    - the search (`search_transition`): shape, rate_low, rate_high, jump (no interval: the place was chosen
      for looking best), statistic, p_value, Holm-adjusted over the searches of the family and perturbation
      (p_holm), `detected`;
    - the test fixed in advance at the paper's claim, 1.25 % to 1.43 % (`claimed_step`; when both rates are
      in the study): claimed_estimate, claimed_low, claimed_high, claimed_p. With seeds it runs from
      CLAIMED_MIN_RATES non-zero rates, where the search needs MIN_RATES (`tested` is the search's);
    - noise_sd (the seed-by-rate residual sd; with one seed the sd of the rate means around the trend),
      noise_dof, n_seeds, basis ("seeds" or "one model"), and the minimum detectable step of each test
      (mde_search at the claimed place, or mid-grid without it; mde_claimed), in units of the summary;
    - epochs_change: with `runs` (runs.csv), whether the stopping epoch differs between rate_low and
      rate_high in any seed: a step there may be the schedule's, not the mislabels';
    - reason, when not tested (too few rates, a censored value).
    Randomness: each search's simulations are seeded by `seed` + the curve's position among its
    perturbation's curves, so one perturbation's p-values do not depend on which others were probed."""
    rows, numbers = [], Counter()
    tested = values[values["summary"].isin(TESTED_SUMMARIES)]
    for key, curve in tested.groupby(list(CURVE), sort=False):
        number = numbers[key[len(FAMILY)]]
        numbers[key[len(FAMILY)]] += 1
        curve = curve[curve["rate"] > 0]
        rates, seeds, matrix = seed_matrix(curve)
        row: dict[str, Any] = dict(zip(CURVE, key, strict=True)) | {
            "n_rates": len(rates),
            "n_seeds": len(seeds),
        }
        row["reason"] = ""
        if curve["value"].isna().any():
            row["reason"] = (
                "undefined at some rate and seed (half the images never flip, or no images to compare)"
            )
        elif len(rates) < MIN_RATES:
            row["reason"] = f"needs at least {MIN_RATES} non-zero rates"
            place = _claimed_place(rates)
            if len(seeds) > 1 and len(rates) >= CLAIMED_MIN_RATES and place is not None:
                row["reason"] = f"the search needs at least {MIN_RATES} non-zero rates; the fixed test ran"
                common = _test_inputs(rates, matrix)
                row |= {"basis": "seeds", "noise_sd": np.sqrt(common["noise_var"])}
                row |= _claimed_tests(**common, place=place)
        if not row["reason"]:
            row |= _tests(rates, matrix, seed=seed + number, n_resamples=n_resamples, with_mde=with_mde)
            if runs is not None:
                row["epochs_change"] = _epochs_change(runs, key, row["rate_low"], row["rate_high"])
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=[*CURVE, *TRANSITION_COLUMNS])
    table["tested"] = table["reason"] == ""
    table["p_holm"] = np.nan
    for _, family in table[table["tested"]].groupby([*FAMILY, PERTURBATION]):
        table.loc[family.index, "p_holm"] = holm(family["p_value"].to_numpy())
    table["detected"] = table["p_holm"] < ALPHA
    table["rate_low_percent"], table["rate_high_percent"] = 100 * table["rate_low"], 100 * table["rate_high"]
    return table


TRANSITION_COLUMNS = (
    "n_rates", "n_seeds", "reason", "basis", "noise_sd", "noise_dof",
    "shape", "rate_low", "rate_high", "jump", "statistic", "p_value", "smooth_model", "mde_search",
    "claimed_estimate", "claimed_low", "claimed_high", "claimed_p", "mde_claimed", "epochs_change",
)  # fmt: skip


def _tests(
    rates: np.ndarray, matrix: np.ndarray, *, seed: int, n_resamples: int, with_mde: bool
) -> dict[str, Any]:
    common = _test_inputs(rates, matrix)
    noise_var, dof, k = common["noise_var"], common["dof"], common["n_seeds"]
    found = search_transition(**common, n_resamples=n_resamples, seed=seed)
    row = {
        "basis": "seeds" if dof else "one model",
        "noise_sd": np.sqrt(noise_var) if dof else np.nan,
        "noise_dof": dof,
        "shape": found.shape,
        "rate_low": found.rate_low,
        "rate_high": found.rate_high,
        "jump": found.jump,
        "statistic": found.statistic,
        "p_value": found.p_value,
        "smooth_model": found.smooth_model,
    }
    place = _claimed_place(rates)
    if place is not None:
        row |= _claimed_tests(**common, place=place)  # with one seed, its own residual degrees of freedom
    if with_mde:
        where = place if place is not None else len(rates) // 2 - 1
        row["mde_search"] = search_mde(
            rates=rates, noise_var=noise_var, dof=dof, n_seeds=k, place=where, seed=seed
        )
    return row


def _test_inputs(rates: np.ndarray, matrix: np.ndarray) -> dict[str, Any]:
    """What both tests take from the seeds x rates `matrix`: the rate means and the block noise."""
    noise_var, dof = block_noise(matrix)
    return {
        "rates": rates,
        "means": matrix.mean(axis=0),
        "noise_var": noise_var,
        "dof": dof,
        "n_seeds": len(matrix),
    }


def _claimed_tests(**inputs: Any) -> dict[str, Any]:
    """The columns of the test fixed at the paper's place (`claimed_step` of `_test_inputs` and the place);
    its noise_dof is the seeds' (or with one seed the fit's own residual degrees of freedom)."""
    claimed = claimed_step(**inputs)
    return {
        "claimed_estimate": claimed.estimate,
        "claimed_low": claimed.low,
        "claimed_high": claimed.high,
        "claimed_p": claimed.p_value,
        "mde_claimed": claimed.mde,
        "noise_dof": claimed.dof,
    }


def _claimed_place(rates: np.ndarray) -> int | None:
    """Index of 1.25 % when 1.43 % is the next rate of the grid, else None."""
    low = np.flatnonzero(np.isclose(rates, CLAIMED[0]))
    if len(low) and low[0] + 1 < len(rates) and np.isclose(rates[low[0] + 1], CLAIMED[1]):
        return int(low[0])
    return None


def _epochs_change(runs: pd.DataFrame, key: tuple, rate_low: float, rate_high: float) -> bool:
    family = runs[np.logical_and.reduce([runs[c] == v for c, v in zip(FAMILY, key, strict=False)])]
    epochs = family[family["rate"].isin([rate_low, rate_high])].pivot_table(
        index="seed", columns="rate", values="epochs", aggfunc="first"
    )
    return bool(epochs.shape[1] == 2 and (epochs.iloc[:, 0] != epochs.iloc[:, 1]).any())


# --- across widths -----------------------------------------------------------------------------------------

ACROSS = tuple(c for c in CURVE if c not in ("variant", "width"))  # a curve, whatever the width


def across_widths(transitions: pd.DataFrame) -> pd.DataFrame:
    """Does the test fixed at the paper's place give a different answer at different widths? Per curve of
    `transitions` (the table above) measured at two or more widths, each width in one study of its own
    (a sweep over `width`): Cochran's Q of the widths' step estimates, sum_w (estimate_w - pooled)^2 /
    se_w^2 with the inverse-variance pooled estimate, against chi-square on n_widths - 1 degrees of
    freedom; se_w is the fixed test's (from its interval and noise_dof). The widths' runs share seeds (the
    same mislabels and data order), which makes their estimates positively correlated and Q conservative;
    the chi-square reference ignores that the se_w are estimated (noise_dof each), which makes it liberal;
    both are small with 3 seeds and 9 rates next to the effects in question. `mde_pair` is the difference
    between the two least precise widths that a two-sided t test at ALPHA finds with POWER (the largest
    difference between two widths the comparison could miss). Curves measured at one width, or at one width
    in several studies (a grid over something else too), get no row; a width whose curve is constant (no
    se) is left out."""
    spread = transitions["claimed_high"] - transitions["claimed_low"]
    claimed = transitions[transitions["claimed_p"].notna() & (spread > 0)]  # a constant curve has no se
    rows = []
    for key, curve in claimed.groupby(list(ACROSS), sort=False):
        if curve["width"].nunique() < 2 or curve["width"].duplicated().any():
            continue
        curve = curve.sort_values("width")
        estimates = curve["claimed_estimate"].to_numpy(float)
        dofs = curve["noise_dof"].to_numpy(int)
        half = (curve["claimed_high"] - curve["claimed_low"]).to_numpy(float) / 2
        se = half / student_t.ppf(0.975, dofs)
        weights = 1 / se**2
        pooled = float((weights * estimates).sum() / weights.sum())
        q = float((weights * (estimates - pooled) ** 2).sum())
        least = np.argsort(se)[-2:]
        rows.append(
            dict(zip(ACROSS, key, strict=True))
            | {
                "n_widths": len(curve),
                "widths": ", ".join(str(w) for w in curve["width"]),
                "lowest_estimate": float(estimates.min()),
                "highest_estimate": float(estimates.max()),
                "pooled_estimate": pooled,
                "q_statistic": q,
                "q_dof": len(curve) - 1,
                "p_value": float(chi2.sf(q, len(curve) - 1)),
                "mde_pair": _t_mde(float(np.sqrt((se[least] ** 2).sum())), int(dofs[least].min())),
                "n_widths_with_step": int((curve["claimed_p"] < ALPHA).sum()),
            }
        )
    table = pd.DataFrame(rows).reindex(columns=[*ACROSS, *ACROSS_WIDTH_COLUMNS])
    table["differs"] = table["p_value"] < ALPHA
    return table


ACROSS_WIDTH_COLUMNS = (
    "n_widths", "widths", "lowest_estimate", "highest_estimate", "pooled_estimate", "q_statistic", "q_dof",
    "p_value", "mde_pair", "n_widths_with_step",
)  # fmt: skip


# --- in words -----------------------------------------------------------------------------------------------


def verdict(row: pd.Series) -> str:
    """A transitions row in words: what was found, and how large a change could have been missed."""
    if not row["tested"]:
        return f"not tested: {row['reason']}"
    where = f"between {percent(row['rate_low'])} and {percent(row['rate_high'])}"
    within = " (one seed: within one model)" if row["basis"] == "one model" else ""
    if row["detected"]:
        found = f"transition ({row['shape']}) {where}, height {row['jump']:.3g}"
        if row.get("epochs_change"):
            found += "; the stopping epoch changes there too, so the schedule may cause it"
        return found + within
    if np.isfinite(row["mde_search"]):
        missed = f"; a step larger than {row['mde_search']:.2g} would have been found with 80 % power"
    elif np.isfinite(row["mde_claimed"]):
        missed = f"; at the claimed place a step larger than {row['mde_claimed']:.2g} would likely be found"
    else:
        missed = ""
    return f"no transition detected (strongest candidate {where}){missed}{within}"
