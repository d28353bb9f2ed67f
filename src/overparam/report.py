"""`overparam report OUT`: the analysis tables (OUT/analysis/*.csv), the figures (OUT/figures/*.png, .svg),
OUT/report.html (one self-contained file: figures embedded, CSS inline, no requests) and OUT/summary.md.

Reads only what a study wrote (README, "Outputs"); never trains or probes. The page opens with the study's
set-up; every other section, table and summary line comes from an experiment in the registry.
"""

from pathlib import Path

import pandas as pd

from overparam import figures, registry
from overparam.html_kit import Page, fmt, listed, paragraph, render, table_html
from overparam.registry import ReportInputs
from overparam.results import Study, load_study
from overparam.store.files import write_csv, write_text


def write_report(out: Path, *, data_dir: Path | None = None, n_bootstrap: int = 1000, seed: int = 0) -> Path:
    """Analyse the study in `out` and write OUT/analysis/*.csv, OUT/figures/, OUT/summary.md and
    OUT/report.html; returns the report's path. Every registered experiment adds its tables, its sections and
    its lines of the summary. `data_dir` (else the study's, else the usual search) is only read for the
    example images; `n_bootstrap` resamples per interval; `seed` fixes every random draw.
    """
    out = Path(out)
    study = load_study(out)
    tables: dict[str, pd.DataFrame] = {}
    for experiment in registry.experiments():
        if experiment.tables is not None:
            tables |= experiment.tables(study, n_bootstrap=n_bootstrap, seed=seed)
    for name, table in tables.items():
        write_csv(table, out / "analysis" / f"{name}.csv")
    inputs = ReportInputs(
        study=study,
        tables=tables,
        colours=figures.rate_colours(study.runs["rate"]),
        data_dir=data_dir,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    page = Page(out)
    _setup(page, study)
    for section in registry.sections():
        section.write(page, inputs)
    summary = list(SUMMARY_HEAD)
    for experiment in registry.experiments():
        if experiment.summary is not None:
            summary += experiment.summary(tables)
    write_text("\n".join(summary), out / "summary.md")
    write_text(render(page, title=f"overparam report: {out.name}"), out / "report.html")
    return out / "report.html"


SUMMARY_HEAD = (
    "# overparam summary",
    "",
    "Full report: report.html; tables: analysis/*.csv. Rates in percent; intervals in brackets (see the "
    "report's method notes).",
    "",
)


def _setup(page: Page, study: Study) -> None:
    blocks = page.section("setup", "Set-up and configuration")
    record = study.config
    config = record.get("config", {})
    settings = pd.DataFrame(
        {
            "setting": list(config),
            "value": [", ".join(map(fmt, v)) if isinstance(v, list) else fmt(v) for v in config.values()],
        }
    )
    environment = record.get("environment", {})
    software = [f"Python {environment.get('python', 'n/a')}"]
    software += [f"{name} {version}" for name, version in environment.get("versions", {}).items()]
    command = " ".join(map(str, record.get("command", [])))
    probed = {tuple(run.keys.values()) for run in study.images}
    blocks += [
        paragraph(
            f"Preset {record.get('preset', 'n/a')}: {len(study.runs)} trained runs, {len(probed)} probed "
            f"(under {listed(study.perturbations)}); started {record.get('started', 'n/a')} with: {command}"
        ),
        paragraph(
            f"Environment: {', '.join(software)}; {environment.get('platform', 'n/a')}, device "
            f"{environment.get('device', 'n/a')}, git commit {environment.get('git_commit', 'n/a')}."
        ),
        table_html(settings, source="config.json"),
    ]
    unprobed = len(study.runs) - len(probed)
    if unprobed:
        blocks.append(
            paragraph(f"{unprobed} runs have no probe on the study's grid and are left out.", "warning")
        )
    for perturbation in study.perturbations:
        missing = len(probed) - sum(run.perturbation == perturbation for run in study.images)
        if missing:
            text = f"{missing} probed runs have no probe under {perturbation} and are left out of its tables."
            blocks.append(paragraph(text, "warning"))
