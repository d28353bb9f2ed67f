"""The width experiment's settings (frozen dataclasses) and presets. Every trained network is an ordinary
`RunConfig` (model and width are part of its identity), so a run store shared with other studies shares
the trainings of equal settings."""

from dataclasses import dataclass, field, replace
from typing import Any

from overparam.config import ConfigError, RunConfig, resolve, sigma_grid
from overparam.experiments.width.belkin import BelkinSettings, default_counts
from overparam.models import MODELS

PARTS = ("sweep", "belkin")


@dataclass(frozen=True)
class Sweep:
    """A model and the widths it is trained at (models.py: ResNet-18's base channels; the MLP's hidden
    layers have 8 x width units each)."""

    model: str
    widths: tuple[int, ...]


@dataclass(frozen=True)
class WidthConfig:
    """Everything `overparam width` computes. The sweep trains every dataset x sweep x width x rate x seed
    for the whole one-cycle schedule of `max_epochs` (schedule "full": no early stop); `probe` adds the
    core's blur probe on `sigmas`; `belkin` is the random-Fourier-features reproduction."""

    preset: str
    datasets: tuple[str, ...]
    sweeps: tuple[Sweep, ...]
    train_size: int
    test_size: int
    rates: tuple[float, ...]
    seeds: tuple[int, ...]
    max_epochs: int
    batch_size: int
    sigmas: tuple[float, ...]
    probe: bool
    belkin: BelkinSettings
    target_acc: float = 0.999
    parts: tuple[str, ...] = field(default=PARTS)

    def runs(self) -> list[RunConfig]:
        """Every run of the sweep: datasets, then models, widths, rates and seeds (training settings other
        than these are the study's defaults: Adam's one-cycle schedule at its peak learning rate)."""
        if "sweep" not in self.parts:
            return []
        found = []
        for dataset in self.datasets:
            for sweep in self.sweeps:
                for width in sweep.widths:
                    overrides = {"dataset": dataset, "model": sweep.model, "width": width}
                    overrides |= {"train_size": self.train_size, "test_size": self.test_size}
                    overrides |= {"rates": self.rates, "seeds": self.seeds, "max_epochs": self.max_epochs}
                    overrides |= {"batch_size": self.batch_size, "sigmas": self.sigmas, "schedule": "full"}
                    overrides |= {"target_acc": self.target_acc}
                    found += resolve(preset="paper", overrides=overrides).runs()
        return found

    def validate(self) -> "WidthConfig":
        for sweep in self.sweeps:
            if sweep.model not in MODELS:
                raise ConfigError(f"unknown model {sweep.model!r}; choose one of {', '.join(MODELS)}")
            if list(sweep.widths) != sorted(set(sweep.widths)) or min(sweep.widths) < 1:
                raise ConfigError(f"widths of {sweep.model} must ascend from 1 or more, got {sweep.widths}")
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ConfigError(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
        self.runs()  # the study's own validation of every run's settings
        return self


RATES = (0.0, 0.1, 0.2)  # 0.1 is the paper's; 0.2 lies beyond it
_MLP_WIDTHS = tuple(2**k for k in range(10))  # 8 ... 4096 hidden units per layer
_RESNET_WIDTHS = (1, 2, 4, 8, 16, 32, 64)
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds, for the tests: nothing is meant to interpolate.
    "smoke": dict(
        datasets=("mnist",),
        sweeps=(Sweep("mlp", (1, 2, 4)),),
        train_size=100,
        test_size=100,
        rates=(0.0, 0.1),
        seeds=(0, 1),
        max_epochs=1,
        batch_size=50,
        sigmas=(0.0, 1.0),
        probe=True,
        belkin=BelkinSettings("mnist", 200, 200, default_counts(200), sigma=5.0, seed=0),
    ),
    # The CPU preset (README): the MLP only, 8 to 512 hidden units, on 1000 MNIST images for 60 epochs;
    # the RFF reproduction at the 4000 images.
    "quick": dict(
        datasets=("mnist",),
        sweeps=(Sweep("mlp", _MLP_WIDTHS[:7]),),
        train_size=1000,
        test_size=2000,
        rates=RATES,
        seeds=(0, 1, 2),
        max_epochs=60,
        batch_size=128,
        sigmas=sigma_grid(0, 3, 0.5),
        probe=True,
        belkin=BelkinSettings("mnist", 4000, 2000, default_counts(4000), sigma=5.0, seed=0),
    ),
    # ResNet-18 on the CPU: base widths 1 to 32 with the blur study's quick settings (6000 images, 20 epochs,
    # batch 256, its sigma grid), so the trainings at rates 0 and 10 % are those of `reproduce --preset quick
    # --width W` (and of examples/transitions-by-width.toml) and a store holding them is reused.
    "quick-resnet": dict(
        datasets=("mnist",),
        sweeps=(Sweep("resnet18", _RESNET_WIDTHS[:6]),),
        train_size=6000,
        test_size=2000,
        rates=RATES,
        seeds=(0, 1, 2),
        max_epochs=20,
        batch_size=256,
        sigmas=sigma_grid(0, 5, 0.25),
        probe=True,
        belkin=BelkinSettings("mnist", 4000, 2000, default_counts(4000), sigma=5.0, seed=0),
        parts=("sweep",),
    ),
    # For a GPU: ResNet-18 at base widths 1 to 64 and the MLP at 8 to 4096 hidden units, all of MNIST and
    # Fashion-MNIST, the study's 40-epoch schedule and blur grid; RFF on Belkin et al.'s 10^4 images.
    "paper": dict(
        datasets=("mnist", "fashion-mnist"),
        sweeps=(Sweep("resnet18", _RESNET_WIDTHS), Sweep("mlp", _MLP_WIDTHS)),
        train_size=60000,
        test_size=10000,
        rates=RATES,
        seeds=(0, 1, 2),
        max_epochs=40,
        batch_size=128,
        sigmas=sigma_grid(0, 5, 0.1),
        probe=True,
        belkin=BelkinSettings("mnist", 10000, 10000, default_counts(10000), sigma=5.0, seed=0),
    ),
}


def width_config(*, preset: str, **overrides: Any) -> WidthConfig:
    """The preset's settings with every non-None override applied, validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = {name: value for name, value in overrides.items() if value is not None}
    config = WidthConfig(preset=preset, **PRESETS[preset])
    try:
        return replace(config, **chosen).validate()
    except TypeError as error:
        raise ConfigError(f"unknown width setting: {error}") from None
