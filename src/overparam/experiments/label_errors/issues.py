"""Label issues of one split from out-of-sample probabilities, and their summary over seeds.

`label_issues` applies confident learning (Northcutt, Jiang and Chuang 2021, via cleanlab) three ways:
- `flagged`: the recipe Northcutt, Athalye and Mueller (2021) used for the MNIST test set (their
  cleanlab/label-errors tutorial, "to match labelerrors.com"): the confident joint without calibration and
  pruning by class (`filter_by="prune_by_class"`). This is their 100 flagged MNIST test images.
- `issue`: cleanlab's current default (`find_label_issues`, pruning by noise rate, calibrated joint).
- `estimated`: cleanlab's estimate of how many labels are wrong (`count.num_label_issues`), the figure whose
  fraction `wrong_fraction` reports with a t interval over seeds.
Per image it also gives the scores every issue is ranked by: self-confidence p(given) (cleanlab's label
quality) and the normalised margin p(given) - max other p (the paper's ranking of flagged images).
"""

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

# score -> +1 when larger is more suspicious, else -1 (ranks: 1 = most suspicious of the split)
SCORES = {"margin": -1, "self_confidence": -1, "aum": -1, "flagged_fraction": 1, "issue_fraction": 1}


def label_issues(given: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Confident learning on one split: given [N] int labels and out-of-sample probabilities [N, C] (rows
    summing to 1). Returns per-image arrays "flagged", "issue" (bool), "self_confidence", "margin",
    "suggested" (argmax), and counts "n_flagged", "n_issues", "estimated"."""
    from cleanlab.count import compute_confident_joint, num_label_issues
    from cleanlab.filter import find_label_issues

    given = np.asarray(given, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    rows = np.arange(len(given))
    self_confidence = probabilities[rows, given]
    others = probabilities.copy()
    others[rows, given] = -np.inf
    joint = compute_confident_joint(labels=given, pred_probs=probabilities, calibrate=False)
    flagged = find_label_issues(
        labels=given, pred_probs=probabilities, filter_by="prune_by_class", confident_joint=joint
    )
    issue = find_label_issues(labels=given, pred_probs=probabilities)
    return {
        "flagged": flagged,
        "issue": issue,
        "self_confidence": self_confidence,
        "margin": self_confidence - others.max(axis=1),
        "suggested": probabilities.argmax(axis=1),
        "n_flagged": int(flagged.sum()),
        "n_issues": int(issue.sum()),
        "estimated": int(num_label_issues(labels=given, pred_probs=probabilities)),
    }


def t_interval(values: list[float]) -> dict[str, Any]:
    """Mean of per-seed values with a 95 % t interval over the seeds (the replicates). With one seed nothing
    measures the spread: low and high are None (null in label_errors.json, which stays strict JSON)."""
    values_ = np.asarray(values, dtype=float)
    k = len(values_)
    mean = float(values_.mean())
    if k < 2:
        return {"per_seed": values_.tolist(), "mean": mean, "low": None, "high": None, "seeds": k}
    half = float(student_t.ppf(0.975, k - 1) * values_.std(ddof=1) / np.sqrt(k))
    return {"per_seed": values_.tolist(), "mean": mean, "low": mean - half, "high": mean + half, "seeds": k}


def interval_text(found: dict[str, Any], spec: str) -> str:
    """A `t_interval` as '0.173 % (95 % interval 0.135 % to 0.211 % over 3 seeds)', each number formatted by
    `spec` (e.g. '.3%'); one seed says it has no interval."""
    mean = format(found["mean"], spec)
    if found["low"] is None:
        return f"{mean} (one seed: no interval)"
    low, high = format(found["low"], spec), format(found["high"], spec)
    return f"{mean} (95 % interval {low} to {high} over {found['seeds']} seeds)"


def split_table(per_seed: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-seed image tables of one split (index, given, flagged, issue, self_confidence, margin, aum and
    probability columns p0..p9) -> one row per image: given and suggested label (argmax of the probabilities
    averaged over seeds), the fraction of seeds flagging it (`flagged_fraction`, paper's recipe;
    `issue_fraction`, cleanlab's default), each score's mean over seeds, and each score's rank in the split
    (rank_<score>, 1 = most suspicious, ties share the lowest); most suspicious by margin first."""
    both = pd.concat(per_seed, ignore_index=True)
    probability_columns = [c for c in both.columns if c.startswith("p") and c[1:].isdigit()]
    table = both.groupby("index", sort=True).agg(
        given_label=("given", "first"),
        seeds=("given", "size"),
        flagged_fraction=("flagged", "mean"),
        issue_fraction=("issue", "mean"),
        self_confidence=("self_confidence", "mean"),
        margin=("margin", "mean"),
        aum=("aum", "mean"),
        **{c: (c, "mean") for c in probability_columns},
    )
    table.insert(1, "suggested_label", table[probability_columns].to_numpy().argmax(axis=1))
    table = table.drop(columns=probability_columns).reset_index()
    for score, direction in SCORES.items():
        table[f"rank_{score}"] = (direction * table[score]).rank(
            ascending=False, method="min", na_option="bottom"
        )
    return table.sort_values(["margin", "index"], ignore_index=True)


def seed_table(given: np.ndarray, index: np.ndarray, probabilities: np.ndarray, aum: np.ndarray) -> tuple:
    """(one seed's image table for `split_table`, its `label_issues` counts)."""
    found = label_issues(given, probabilities)
    frame = pd.DataFrame(
        {
            "index": index,
            "given": given,
            "flagged": found["flagged"],
            "issue": found["issue"],
            "self_confidence": found["self_confidence"],
            "margin": found["margin"],
            "aum": aum,
            **{f"p{c}": probabilities[:, c] for c in range(probabilities.shape[1])},
        }
    )
    counts = {key: found[key] for key in ("n_flagged", "n_issues", "estimated")}
    counts["out_of_sample_acc"] = float((found["suggested"] == given).mean())
    return frame, counts
