"""The report's sections on pruning: one-shot pruning of the over-trained models, and the lottery tickets
(tables from lottery/summary.py, figures from figures.py)."""

import pandas as pd

from overparam import figures
from overparam.experiments.lottery import summary
from overparam.html_kit import (
    Page,
    family_name,
    family_slug,
    fmt,
    interval,
    paragraph,
    select_family,
    table_html,
)
from overparam.results import Study


def lottery_tables(study: Study) -> dict[str, pd.DataFrame]:
    """The analysis tables of the pruning steps a study has: pruning_fit (one-shot pruning), and ticket_fit,
    ticket_limits, ticket_answer, ticket_gap and ticket_gap_change (lottery tickets), the dense models'
    rows (round 0) from the study's runs and curves as loaded."""
    out, tables = study.out, {}
    if (out / "pruning.csv").exists():
        tables["pruning_fit"] = summary.fit_table(pd.read_csv(out / "pruning.csv"), by=["fraction_pruned"])
    if not (out / "tickets.csv").exists():
        return tables
    trained = pd.read_csv(out / "tickets.csv")
    tickets = summary.with_dense(trained, study.runs)
    limits = summary.limits(tickets)
    tables |= {
        "ticket_fit": summary.fit_table(tickets, by=["method", "round"]),
        "ticket_training": summary.training_table(trained),
        "ticket_limits": limits,
        "ticket_answer": summary.answer(limits),
    }
    if (out / "ticket_curves.csv").exists():
        rounds = [
            study.curves.assign(method=method, round=0, remaining=1.0)
            for method in tickets["method"].unique()
        ]
        gaps = summary.curve_gap(pd.concat([pd.read_csv(out / "ticket_curves.csv"), *rounds]))
        tables |= {
            "ticket_gap": summary.gap_table(gaps),
            "ticket_gap_change": summary.gap_change(gaps, limits),
        }
    return tables


def pruning_section(page: Page, tables: dict[str, pd.DataFrame], colours: figures.Colours) -> None:
    """Which group loses its fit first when the over-trained model is pruned in one shot."""
    fit = tables.get("pruning_fit")
    if fit is None or fit.empty:
        return
    blocks = page.section(
        "pruning", "One-shot pruning of the over-trained models: which images lose their fit first"
    )
    blocks.append(
        paragraph(
            "Each over-trained model pruned in one shot by global weight magnitude (convolution and linear "
            "weights, the output layer at half the rate; batch norm as trained), without retraining: the "
            "fraction of mislabelled and clean training images still predicted as their assigned label, and "
            "of test images as their true label, mean over seeds with a 95 % t interval "
            "(analysis/pruning_fit.csv)."
        )
    )
    for key, rows in fit.groupby(summary.family_columns(fit), sort=False):
        caption = (
            f"{family_name(key)}: fraction right against the fraction of weights remaining after one-shot "
            "magnitude pruning, a line per rate with its band over seeds."
        )
        figure = figures.fit_panels(fit=rows, colours=colours)
        blocks.append(page.figure(figure, name=f"pruning-{family_slug(key)}", caption=caption))


def _answer_words(row: pd.Series) -> str:
    def limit(group: str) -> str:
        column = f"{group}_limit_remaining"
        text = interval(row[column], row[f"{column}_low"], row[f"{column}_high"])
        return f"{text} (fit at every round tried)" if row[f"{group}_censored"] else text

    if row["difference_low"] == row["difference_high"]:  # every seed the same: the grid is the resolution
        difference = (
            f"{fmt(row['difference'])} rounds in every one of {row['seeds']} seeds (resolution: a round)"
        )
    else:
        difference = interval(row["difference"], row["difference_low"], row["difference_high"]) + (
            f" rounds over {row['seeds']} seeds (a difference under {fmt(row['detectable'])} rounds could "
            "not have been told from none)"
        )
    return (
        f"rate {row['rate']:.3%}, {row['method']}: the mislabels fit down to {limit('mislabelled')} of the "
        f"weights, the clean images down to {limit('clean')}; clean minus mislabelled limit {difference}."
    )


def lottery_section(page: Page, tables: dict[str, pd.DataFrame], colours: figures.Colours) -> None:
    """How sparse a ticket can be and still store the mislabels, against its controls and the dual ticket;
    and whether the probe's curves of mislabelled and clean images part beyond that sparsity."""
    fit = tables.get("ticket_fit")
    if fit is None or fit.empty:
        return
    curves_path = page.out / "ticket_curves.csv"
    ticket_curves = pd.read_csv(curves_path) if curves_path.exists() else None
    blocks = page.section(
        "lottery", "Lottery tickets: how sparse can the network be and still store the mislabels?"
    )
    blocks.append(
        paragraph(
            "Iterative magnitude pruning with rewinding (imp; round 0 is the over-trained dense model), "
            "beside the same mask with a fresh initialisation (reinit), a random mask with the same number "
            "of weights per layer (random) and the dual lottery ticket (dual: a random mask at the same "
            "sparsity, information extruded into it by a growing L2 penalty before the cut), every one "
            "trained with the dense run's schedule. A group counts as fit by a ticket when at least "
            f"{summary.FIT:.0%} of it is predicted right (assigned labels); a group's limit is the sparsest "
            "round down to which every round fits it. Means over seeds with 95 % t intervals "
            "(analysis/ticket_fit.csv, ticket_limits.csv, ticket_answer.csv)."
        )
    )
    answer = tables.get("ticket_answer", pd.DataFrame())
    for key, rows in fit.groupby(summary.family_columns(fit), sort=False):
        chosen = select_family(answer, key) if not answer.empty else answer
        for _, row in chosen[chosen["rate"] > 0].iterrows():
            blocks.append(paragraph(_answer_words(row)))
        if not chosen.empty:
            columns = ["rate", "method", "seeds", "mislabelled_limit_remaining", "clean_limit_remaining"]
            columns += ["difference", "difference_low", "difference_high", "detectable"]
            blocks.append(table_html(chosen[columns], source="analysis/ticket_answer.csv"))
        caption = (
            f"{family_name(key)}: fraction right against the fraction of weights remaining, a row per "
            "ticket kind and a line per rate with its band over seeds (round 0: the dense model)."
        )
        figure = figures.fit_panels(fit=rows, colours=colours, row="method")
        blocks.append(page.figure(figure, name=f"tickets-{family_slug(key)}", caption=caption))
        blocks.append(_anchor(rows))
        if ticket_curves is not None:
            blocks += _sparsest_curves(page, select_family(ticket_curves, key), key, colours)
        blocks.append(_reached(select_family(tables["ticket_training"], key)))
    gaps = tables.get("ticket_gap")
    if gaps is not None and not gaps.empty:
        blocks.append(
            paragraph(
                "The paper's hypothesis: a ticket too small to store the mislabels as exceptions. Below, the "
                "probe's curves of each ticket: how much more often mislabelled than clean images change "
                "prediction under each perturbation, averaged over its levels above 0 "
                "(analysis/ticket_gap.csv), and the change of that gap from the dense model to each seed's "
                "first ticket past the mislabels' limit, paired by seed (analysis/ticket_gap_change.csv)."
            )
        )
        for key, rows in gaps.groupby(summary.family_columns(gaps), sort=False):
            caption = (
                f"{family_name(key)}: mislabelled minus clean fraction changed, against weights remaining."
            )
            blocks.append(
                page.figure(
                    figures.gap_panels(gaps=rows, colours=colours),
                    name=f"ticket-gap-{family_slug(key)}",
                    caption=caption,
                )
            )
        change = tables.get("ticket_gap_change", pd.DataFrame())
        if not change.empty:
            shown = change[
                [
                    "rate",
                    "method",
                    "perturbation",
                    "seeds",
                    "dense_gap",
                    "gap",
                    "change",
                    "change_low",
                    "change_high",
                    "detectable",
                ]
            ]
            blocks.append(table_html(shown, source="analysis/ticket_gap_change.csv"))


def _sparsest_curves(page: Page, curves: pd.DataFrame, key: tuple, colours: figures.Colours) -> list[str]:
    """The probe's curves of the sparsest IMP tickets of one family (`curves`: its ticket_curves.csv rows),
    per perturbation."""
    sparsest = curves[(curves["method"] == "imp") & (curves["round"] == curves["round"].max())]
    blocks = []
    for perturbation, rows in sparsest.groupby("perturbation", sort=False):
        figure = figures.curve_panels(
            curves=rows, outcome="changed", colours=colours, missed=set(), perturbation=perturbation
        )
        caption = (
            f"{family_name(key)}: fraction of images whose prediction changes under {perturbation}, IMP "
            f"tickets of round {rows['round'].iloc[0]} ({rows['remaining'].iloc[0]:.2%} of the weights), a "
            "line per rate with its band over seeds (ticket_curves.csv)."
        )
        name = f"ticket-curves-{perturbation}-{family_slug(key)}"
        blocks.append(page.figure(figure, name=name, caption=caption))
    return blocks


def _reached(training: pd.DataFrame) -> str:
    """Per rate, round and ticket kind: seeds that reached the training target of seeds trained."""
    cells = training.assign(
        cell=[f"{r}/{s}" for r, s in zip(training["reached_target"], training["seeds"], strict=True)]
    )
    table = cells.pivot_table(
        index=["rate", "round", "remaining"], columns="method", values="cell", aggfunc="first"
    )
    return paragraph(
        "Seeds whose ticket reached the training target (eval accuracy on the assigned labels) of seeds "
        "trained, per rate, round and ticket kind:"
    ) + table_html(table.reset_index(), source="analysis/ticket_training.csv")


def _anchor(fit: pd.DataFrame) -> str:
    """Test accuracy at rate 0 per round and ticket kind: the published anchor (tickets keep the dense
    accuracy to high sparsity; reinitialised ones fall behind)."""
    test = fit[(fit["rate"] == 0) & (fit["group"] == "test")]
    if test.empty:
        return ""
    cells = test.assign(
        cell=[
            interval(f, lo, hi)
            for f, lo, hi in zip(test["fit"], test["fit_low"], test["fit_high"], strict=True)
        ]
    )
    table = cells.pivot_table(
        index=["round", "remaining"], columns="method", values="cell", aggfunc="first"
    ).reset_index()
    return paragraph(
        "Without mislabels (rate 0), test accuracy per ticket kind and round, mean over seeds "
        "[95 % t interval]:"
    ) + table_html(table, source="analysis/ticket_fit.csv")
