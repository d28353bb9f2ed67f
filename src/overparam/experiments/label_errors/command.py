"""`overparam label-errors`: out-of-sample probabilities for every image of the training split (K-fold) and
the test split (the fold models fine-tuned by cross-fitting over it), confident learning on each, the
suspects ranked, and how many labels are estimated wrong. Light to import: the work is imported inside
`run`."""

import argparse
import sys
from dataclasses import fields

from overparam.arguments import JOBS_HELP, add_settings, flatten
from overparam.config import PRESETS, ConfigError, StudyConfig, resolve
from overparam.registry import Services

HELP = (
    "find the data set's own label errors in both splits: K-fold out-of-sample probabilities for the "
    "training images, the fold models fine-tuned by cross-fitting for the test images, confident learning "
    "on each; the flagged images and the estimated fraction of wrong labels over seeds"
)
# The stated model of each data set (config.PRESETS): for MNIST a small CNN above 99 % test accuracy; for
# Fashion-MNIST the strongest model measured to fit the CPU budget (README, "Which images are mislabelled").
DEFAULT_PRESETS = {"mnist": "label-errors", "fashion-mnist": "label-errors-fashion"}


def preset_of(*, preset: str | None, dataset: str | None) -> str:
    """The preset a label-errors run starts from: the one asked for, else the data set's stated model."""
    return preset or DEFAULT_PRESETS[dataset or "mnist"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="starting point for every setting below (default: the data set's stated model, "
        + ", ".join(f"{preset} for {dataset}" for dataset, preset in DEFAULT_PRESETS.items())
        + ")",
    )
    add_settings(parser)
    parser.add_argument(
        "--split", default="both", help="which split's labels to check: train, test or both [both]"
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=1,
        help="test split: epochs each fold model is fine-tuned on the other test folds (0: none) [1]",
    )
    parser.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="test split: peak learning rate of the fine-tuning (default: a tenth of --lr)",
    )
    parser.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
    parser.add_argument(
        "--top", type=int, default=400, help="flagged images shown per split in suspects.html [400]"
    )


def run(arguments: argparse.Namespace, services: Services) -> int:
    """Compute the out-of-sample probabilities, then write suspects.csv, suspects.html, label_errors.json."""
    from overparam.experiments.label_errors.crossfit import MODELS_OF_SPLIT
    from overparam.experiments.label_errors.full import check_tuning, find_label_errors, splits_of
    from overparam.experiments.label_errors.issues import interval_text
    from overparam.study import default_out

    splits_of(arguments.split)  # a bad --split fails before anything is trained
    settings = {f.name: flatten(getattr(arguments, f.name)) for f in fields(StudyConfig)}
    if settings["rates"] not in (None, (0.0,)):
        raise ConfigError("label-errors checks the data set's own labels: leave out --rates (it is 0)")
    settings["rates"] = (0.0,)
    preset = preset_of(preset=arguments.preset, dataset=arguments.dataset)
    config = resolve(preset=preset, overrides=settings)
    lr = arguments.finetune_lr if arguments.finetune_lr is not None else config.lr / 10
    check_tuning(arguments.finetune_epochs, lr)
    if arguments.top < 1:
        raise ConfigError(f"--top must be at least 1, got {arguments.top}")
    out = config.out if config.out else default_out(config, f"label-errors-{preset}")
    from pathlib import Path

    summary = find_label_errors(
        config,
        out=Path(out),
        split=arguments.split,
        epochs=arguments.finetune_epochs,
        lr=lr,
        jobs=arguments.jobs,
        progress=sys.stderr.isatty(),
        top=arguments.top,
    )
    for name, found in summary["splits"].items():
        flagged = interval_text(found["flagged"], ".1f")
        estimate = interval_text(found["wrong_fraction"], ".3%")
        print(
            f"{name}: {found['images']} images, test accuracy of the {MODELS_OF_SPLIT[name]} "
            f"{found['model_test_acc']['mean']:.2%}; flagged per seed {flagged}; estimated wrong labels "
            f"{estimate}"
        )
        known = summary.get("known_errors", {}).get(name)
        if known:
            print(
                f"{name}: of the {known['listed']} errors Northcutt lists, {known['present']} checked, "
                f"{known['flagged_in_most_seeds']} flagged in at least half the seeds"
            )
    print(f"suspects in {Path(out) / 'suspects.csv'} and {Path(out) / 'suspects.html'}")
    return 0
