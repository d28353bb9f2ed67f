"""`overparam label-errors`: train at rate 0, score every training image, rank the suspects and estimate how
many of the data set's own labels are wrong. Light to import: the study is imported inside `run`."""

import argparse
import sys
from dataclasses import fields

from overparam.arguments import JOBS_HELP, add_settings, choose_preset, flatten
from overparam.config import DEFAULT_LABEL_SCORES, PRESETS, ConfigError, StudyConfig, resolve
from overparam.registry import Services

HELP = (
    "find the data set's own label errors: train at rate 0, score every training image "
    "(--label-scores, default probe,dynamics,cleanlab), rank the suspects and estimate how many "
    "labels are wrong"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="starting point for every setting below (default: paper on a GPU, else quick)",
    )
    add_settings(parser)
    parser.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
    parser.add_argument("--top", type=int, default=64, help="suspects shown in suspects.html [64]")


def run(arguments: argparse.Namespace, services: Services) -> int:
    """Run the rate-0 study with label-error scores, then write suspects.csv and suspects.html."""
    from overparam import study
    from overparam.experiments.label_errors.own import write_suspects

    settings = {f.name: flatten(getattr(arguments, f.name)) for f in fields(StudyConfig)}
    if settings["rates"] not in (None, (0.0,)):
        raise ConfigError("label-errors scores the unmodified training set: leave out --rates (it is 0)")
    settings["rates"] = (0.0,)
    settings["label_scores"] = settings["label_scores"] or DEFAULT_LABEL_SCORES
    preset = choose_preset(arguments.preset, settings["device"])
    config = resolve(preset=preset, overrides=settings)
    out = study.reproduce(
        config,
        preset=preset,
        jobs=arguments.jobs,
        progress=sys.stderr.isatty(),
        write_report=services.write_report,
    )
    print(f"results in {out}: config.json, " + ", ".join(study.written_tables(out)))
    summary = write_suspects(out, config, top=arguments.top)
    estimate = summary.get("wrong_fraction")
    if estimate:
        print(
            f"estimated wrong labels: {estimate['mean']:.2%} (95 % interval {estimate['low']:.2%} to "
            f"{estimate['high']:.2%} over {estimate['seeds']} seeds)"
        )
    print(f"suspects in {out / 'suspects.csv'} and {out / 'suspects.html'}")
    return 0
