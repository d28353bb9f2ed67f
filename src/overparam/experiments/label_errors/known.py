"""MNIST images that a person judged mislabelled: how many of them our flags find.

Curtis Northcutt listed, by eye, some of the more blatant MNIST training and test label errors ("Finding
Label Errors in MNIST train and test datasets", cleanlab's MNIST examples, v1): 17 blatant and 3 less
blatant training images, 8 blatant and 4 less blatant test images, by their index in torchvision's order.
No setting of this project was chosen with them in view: they are a check, not a target.
"""

from typing import Any

import pandas as pd

LISTED: dict[str, dict[str, dict[str, tuple[int, ...]]]] = {
    "mnist": {
        "train": {
            "blatant": (
                *(21601, 40466, 29922, 40144, 51248, 43454, 59915, 57662, 25678, 2676, 24798, 31727),
                *(7080, 26560, 10994, 53396, 54264),
            ),
            "less blatant": (59701, 42566, 26940),
        },
        "test": {
            "blatant": (947, 5937, 3520, 4163, 2597, 9729, 4874, 3776),
            "less blatant": (2130, 9642, 449, 659),
        },
    }
}
SHOWN = ("given_label", "suggested_label", "flagged_fraction", "issue_fraction", "rank_margin")
COLUMNS = ["split", "index", "listed_as", *SHOWN]


def known_errors(suspects: pd.DataFrame, *, dataset: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every listed error of `dataset` that `suspects` (suspects.csv's rows: split, index, SHOWN columns)
    checked -> (a row per listed image: split, index, listed_as and SHOWN; per split the counts "listed",
    "present" (checked here: a subset run may leave some out), "flagged_in_most_seeds" (flagged_fraction >=
    0.5, the paper's recipe) and "issue_in_most_seeds" (cleanlab's default)). Empty for a data set with no
    list, and for a split not checked."""
    rows, counts = [], {}
    for split, groups in LISTED.get(dataset, {}).items():
        checked = suspects[suspects["split"] == split].set_index("index")
        if checked.empty:
            continue
        listed = [(index, kind) for kind, indices in groups.items() for index in indices]
        found = [(index, kind) for index, kind in listed if index in checked.index]
        table = checked.loc[[index for index, _ in found], list(SHOWN)].reset_index()
        table.insert(0, "split", split)
        table.insert(2, "listed_as", [kind for _, kind in found])
        if found:
            rows.append(table)
        counts[split] = {
            "listed": len(listed),
            "present": len(found),
            "flagged_in_most_seeds": int((table["flagged_fraction"] >= 0.5).sum()),
            "issue_in_most_seeds": int((table["issue_fraction"] >= 0.5).sum()),
        }
    return (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS)), counts
