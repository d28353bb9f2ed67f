"""The report's section on finding the mislabelled images: each label-error score judged on the injected
mislabels, per rate."""

import pandas as pd

from overparam import figures
from overparam.html_kit import Page, family_name, family_slug, paragraph, table_html
from overparam.results import FAMILY


def write_section(page: Page, tables: dict[str, pd.DataFrame]) -> None:
    """Which label-error score finds the injected mislabels best at which rate, and at what cost."""
    by_rate = tables.get("label_detection_by_rate")
    if by_rate is None or by_rate.empty:
        return
    blocks = page.section("label-errors", "Finding the mislabelled images: label-error scores")
    blocks.append(
        paragraph(
            "Each score ranks the training images of a run (higher = more likely mislabelled) and is judged "
            "on the injected mislabels: AUROC, average precision and precision at k = the number injected, "
            "mean over seeds with a 95 % t interval (per run, with bootstrap intervals over its images, in "
            "analysis/label_detection.csv), and what the score cost per run beyond the trained model: "
            "trainings, probe passes (levels) and seconds on the machine that ran it. Flip levels and the "
            "level-0 margin come from the over-trained model's probe; AUM and forgetting events from its "
            "training; cleanlab needs K more trainings (K-fold), memorisation M more."
        )
    )
    for key, rows in by_rate.groupby([c for c in FAMILY if c in by_rate], sort=False):
        columns = ["rate_percent", "measurement", "seeds", "auroc", "auroc_low", "auroc_high"]
        columns += ["average_precision", "precision_at_k", "trainings", "probe_passes", "seconds"]
        shown = rows.assign(rate_percent=rows["rate"] * 100)[columns].rename(
            columns={"rate_percent": "rate %"}
        )
        blocks.append(table_html(shown, source="analysis/label_detection_by_rate.csv"))
        caption = (
            f"{family_name(key)}: AUROC and average precision of each label-error measurement against the "
            "mislabelling rate, mean over seeds with its 95 % t band (0.5 AUROC: no better than chance)."
        )
        figure = figures.label_detection(by_rate=rows)
        blocks.append(page.figure(figure, name=f"label-detection-{family_slug(key)}", caption=caption))
