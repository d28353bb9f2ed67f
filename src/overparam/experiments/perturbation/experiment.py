"""The blur study itself (PROTOCOL.md): its analysis tables, report sections and summary lines. Its steps are
the core's own (a run's training and a probe per perturbation)."""

from overparam.registry import Experiment, Section, lazy

SECTION = "overparam.experiments.perturbation.section"

EXPERIMENT = Experiment(
    name="perturbation",
    tables=lazy("overparam.experiments.perturbation.analysis:analyse"),
    sections=(
        Section(order=10, write=lazy(f"{SECTION}:write_sections")),
        Section(order=90, write=lazy(f"{SECTION}:write_methods")),
    ),
    summary=lazy(f"{SECTION}:summary_lines"),
    order=10,
)
