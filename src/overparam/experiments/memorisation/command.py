"""`overparam memorisation`: does a perturbation probe measure memorisation? Runs the study (the core's
training and probes, label scores probe, dynamics and memorisation from >= 100 random-subset models per run)
through `study.reproduce`, then retrains each removal-rate run without its k most memorised images and
without k random ones (`RemovalTraining`), writes the tidy tables memorisation_images.csv,
memorisation_models.csv and memorisation_removal.csv into --out, memorised.html (the most memorised clean
images), and the report with this experiment's section. Light to import: the work is imported inside `run`."""

import argparse
import logging
import sys

from overparam.arguments import add_placement, add_preset
from overparam.config import parse_rate
from overparam.registry import Services

log = logging.getLogger(__name__)
HELP = (
    "Feldman-Zhang memorisation at scale against the perturbation probe: rank correlations, the long tail, "
    "and removing the most memorised images"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_preset(parser)
    add_placement(parser, name="memorisation")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (replicates)")
    parser.add_argument("--rates", type=parse_rate, nargs="+", default=None, help="label-noise rates")
    parser.add_argument("--models", type=int, default=None, help="random-subset models per run (>= 100)")
    parser.add_argument(
        "--removal-k", type=int, nargs="+", default=None, help="images removed per retraining"
    )
    parser.add_argument("--removal-repeats", type=int, default=None, help="retrainings per seed, k and kind")


def run(arguments: argparse.Namespace, services: Services) -> int:
    """0 when everything finished, 1 when some step failed (what finished is reported); bad settings raise
    ConfigError (the shell: one line, exit status 2)."""
    from pathlib import Path

    import pandas as pd
    import torch

    from overparam import study
    from overparam.data import resolve_data_dir
    from overparam.experiments.memorisation.analysis import memorisation_tables, verdict
    from overparam.experiments.memorisation.report import write_page
    from overparam.experiments.memorisation.settings import memorisation_config
    from overparam.experiments.memorisation.steps import REMOVED, RemovalTraining, subset_counts
    from overparam.runs import load_splits, prepare
    from overparam.store.executors import ExecutorOptions, execute_steps
    from overparam.store.files import with_keys, write_csv

    # bad settings raise ConfigError: the shell prints it as one line and exits with 2
    preset = arguments.preset or ("paper" if torch.cuda.is_available() else "quick")
    config = memorisation_config(
        preset=preset,
        seeds=tuple(arguments.seeds) if arguments.seeds else None,
        rates=tuple(arguments.rates) if arguments.rates else None,
        models=arguments.models,
        removal_k=tuple(arguments.removal_k) if arguments.removal_k else None,
        removal_repeats=arguments.removal_repeats,
    )
    placement = {
        "store": arguments.store,
        "data_dir": arguments.data_dir,
        "device": arguments.device,
        "download": arguments.download,
    }
    settings = config.study(**placement)
    out = Path(arguments.out or f"runs/memorisation-{preset}-{settings.study_id()}")
    settings = config.study(**placement, out=str(out))
    failed = False
    try:
        study.reproduce(
            settings, preset=settings_preset(config), jobs=arguments.jobs, progress=sys.stderr.isatty()
        )
    except study.RunsFailedError as error:
        log.error("%s", error)
        failed = True
    options = study.run_options(settings, progress=sys.stderr.isatty())
    store = Path(options.store)
    runs = settings.runs()
    removal = [
        RemovalTraining(run, removed, k, repeat)
        for run in runs
        if run.rate in config.removal_rates
        for k in config.removal_k
        for repeat in range(config.removal_repeats)
        for removed in REMOVED
    ]
    outcomes = execute_steps(removal, options, ExecutorOptions(jobs=arguments.jobs))
    failed |= any(outcome.status == "failed" for outcome in outcomes)
    splits = load_splits(
        dataset=settings.dataset, data_dir=settings.data_dir, download=settings.download, device="cpu"
    )
    images, models, removed = [], [], []
    for run in runs:
        prepared = prepare(run, splits, store)
        if not all(step.record(store).exists() for step in _samples(run)):
            log.warning("%s: its subset models are not all finished; left out", run.run_id())
            continue
        counts, fits = subset_counts(run, store, prepared.assigned_labels)
        labels = pd.DataFrame(
            {
                "index": prepared.train_index,
                "true_label": prepared.true_labels,
                "assigned_label": prepared.assigned_labels,
                "mislabelled": prepared.mislabelled,
            }
        )
        images.append(with_keys(run.keys(), pd.concat([labels, counts], axis=1)))
        models.append(with_keys(run.keys(), fits))
    for step in removal:
        if step.record(store).exists():
            removed.append(pd.read_csv(step.record(store).parent / "removal.csv"))
    if not images:
        print("overparam memorisation: no run has all its subset models; nothing to analyse", file=sys.stderr)
        return 1
    table = pd.concat(images, ignore_index=True)
    write_csv(table, out / "memorisation_images.csv")
    write_csv(pd.concat(models, ignore_index=True), out / "memorisation_models.csv")
    if removed:
        write_csv(pd.concat(removed, ignore_index=True), out / "memorisation_removal.csv")
    page = write_page(
        out,
        table,
        dataset=settings.dataset,
        data_dir=resolve_data_dir(settings.data_dir),
        top=config.top_images,
    )
    report = services.write_report(out, data_dir=resolve_data_dir(settings.data_dir))
    for sentence in verdict(memorisation_tables(out)):
        print(sentence)
    print(f"memorisation: {report}, {page}; tables in {out}")
    return 1 if failed else 0


def settings_preset(config: object) -> str:
    """The name the study records as its preset."""
    return f"memorisation-{config.preset}"  # type: ignore[attr-defined]


def _samples(run: object) -> list:
    from overparam.experiments.memorisation.steps import samples

    return samples(run)  # type: ignore[arg-type]
