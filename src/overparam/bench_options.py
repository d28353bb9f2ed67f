"""The flags of `overparam bench` and the workload they describe, apart from the benchmark itself (bench.py)
so that building the command line never imports what measuring needs (torch.profiler, torchvision, the
trainer): `overparam --help` stays as quick as importing torch (tests/test_startup.py)."""

import argparse
from dataclasses import dataclass
from pathlib import Path

from overparam.config import DEVICES, PRECISIONS, ConfigError, StudyConfig, sigma_grid
from overparam.data import DATASETS
from overparam.models import INFERENCE_BATCH_SIZE, MODELS

PAPER = StudyConfig()


@dataclass(frozen=True)
class Workload:
    """What both sides compute: the first `images` training and `test_images` test images of `dataset`,
    `epochs` timed training epochs at `batch_size`, then a probe of the training images at every sigma
    (pixels). Model, width, batch size and learning rate default to the paper preset's."""

    dataset: str = PAPER.dataset
    model: str = PAPER.model
    width: int = PAPER.width
    images: int = 1024
    test_images: int = INFERENCE_BATCH_SIZE  # one evaluation batch: both sides compute the same
    batch_size: int = PAPER.batch_size
    epochs: int = 2
    sigmas: tuple[float, ...] = sigma_grid(0.5, 4, 0.5)  # as many as a study's probe blurs per pass
    lr: float = PAPER.lr
    workers: int = 0  # DataLoader worker processes of the ordinary side
    precision: str = "fp32"  # of our side; the ordinary side is eager fp32
    compile: bool = False  # our side through torch.compile (its first epoch and warm-up compile, untimed)

    def validate(self) -> "Workload":
        """Self, or ConfigError naming the first invalid setting."""
        for name in ("width", "images", "test_images", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be at least 0, got {self.workers}")
        if not self.sigmas or min(self.sigmas) < 0:
            raise ConfigError(f"--sigmas needs values >= 0, got {self.sigmas}")
        return self


SIZES = {
    "width": "base channel count",
    "images": "training images, each probed at every sigma",
    "test_images": "test images of the accuracy pass after every epoch",
    "batch_size": "training batch size",
    "epochs": "timed training epochs (each side runs one more, untimed, first)",
    "workers": "DataLoader worker processes of the ordinary side",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `overparam bench` (defaults: a width-64 workload of about 2 minutes on 2 CPU cores)."""
    defaults = Workload()
    sizes = {name: getattr(defaults, name) for name in SIZES}
    parser.add_argument("--dataset", choices=DATASETS, default=defaults.dataset, help="[%(default)s]")
    parser.add_argument("--model", choices=tuple(MODELS), default=defaults.model, help="[%(default)s]")
    for name, default in sizes.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), type=int, default=default, help=f"{SIZES[name]} [{default}]"
        )
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate [%(default)s]")
    parser.add_argument(
        "--sigmas",
        nargs="+",
        default=["0.5:4:0.5"],
        help="probe sigmas, values or START:STOP:STEP [0.5:4:0.5]",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=defaults.precision,
        help="our side's arithmetic [%(default)s]",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=defaults.compile,
        help="our side through torch.compile (the ordinary side stays eager) [%(default)s]",
    )
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the peak matmul [%(default)s]")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of both sides; the best of each counts [%(default)s]"
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="[%(default)s]")
    parser.add_argument("--data-dir", help="data folder (else $OVERPARAM_DATA, else a per-user cache)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench.csv"), help="the CSV [%(default)s]")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also profile our training epoch and probe (torch.profiler), top operators to DIR/profile-*.txt",
    )
    parser.add_argument(
        "--quick", action="store_true", help="also time the quick preset end to end (about 7 more minutes)"
    )
