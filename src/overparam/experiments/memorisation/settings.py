"""The memorisation experiment's settings and presets. Its runs are ordinary study runs (`StudyConfig`) with
the label-error scores probe, dynamics and memorisation, so a store shared with other studies shares every
training, probe and subset model of equal settings; only the removal retrainings are its own."""

from dataclasses import asdict, dataclass, replace
from typing import Any

from overparam.config import ConfigError, StudyConfig, resolve, sigma_grid


@dataclass(frozen=True)
class MemorisationConfig:
    """`base` is the study preset the training settings start from; `models` random-subset models of
    `fraction` of each run's images estimate memorisation; the probe runs `perturbations`; at each rate of
    `removal_rates` every seed retrains without the `removal_k` most memorised and without as many random
    images, `removal_repeats` times each (top and random paired by initialisation)."""

    preset: str
    base: str
    model: str
    width: int
    train_size: int
    test_size: int
    rates: tuple[float, ...]
    seeds: tuple[int, ...]
    max_epochs: int
    lr: float
    batch_size: int
    target_acc: float
    models: int
    fraction: float
    perturbations: tuple[str, ...]
    sigmas: tuple[float, ...]
    levels: tuple[str, ...]
    removal_k: tuple[int, ...]
    removal_rates: tuple[float, ...] = (0.0,)
    removal_repeats: int = 1
    top_images: int = 64

    def study(self, **placement: Any) -> StudyConfig:
        """The study that trains, probes and scores every run (`placement`: out, store, data_dir, device,
        download; report off: this command writes the report once its own steps are done)."""
        overrides = {
            "model": self.model,
            "width": self.width,
            "train_size": self.train_size,
            "test_size": self.test_size,
            "rates": self.rates,
            "seeds": self.seeds,
            "max_epochs": self.max_epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "target_acc": self.target_acc,
            "schedule": "full",
            "perturbations": self.perturbations,
            "sigmas": self.sigmas,
            "levels": self.levels,
            "label_scores": ("probe", "dynamics", "memorisation"),
            "memorisation_models": self.models,
            "memorisation_fraction": self.fraction,
            "report": False,
        }
        return resolve(preset=self.base, overrides={**overrides, **placement})

    def validate(self) -> "MemorisationConfig":
        if self.models < 100 and self.preset != "smoke":
            raise ConfigError(f"--models {self.models}: the estimate needs at least 100 subset models")
        if not 0 < self.fraction < 1:
            raise ConfigError(f"--fraction must lie in (0, 1), got {self.fraction}")
        if any(k < 1 or k >= self.train_size for k in self.removal_k) or self.removal_repeats < 1:
            raise ConfigError(f"--removal-k must lie in 1..{self.train_size - 1}, got {self.removal_k}")
        missing = [rate for rate in self.removal_rates if rate not in self.rates]
        if missing:
            raise ConfigError(f"removal rates {missing} are not among the rates {self.rates}")
        self.study()  # the study's own validation of every setting
        return self

    def record(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds, for the tests: nothing fits, every stage runs.
    "smoke": dict(
        base="smoke",
        model="lenet300",
        width=8,
        train_size=200,
        test_size=100,
        rates=(0.0, 0.05),
        seeds=(0, 1),
        max_epochs=2,
        lr=5e-3,
        batch_size=50,
        target_acc=0.995,
        models=4,
        fraction=0.7,
        perturbations=("blur", "noise", "fgsm"),
        sigmas=(0.0, 1.0, 2.0),
        levels=("noise=0,0.5,1", "fgsm=0,0.1,0.2"),
        removal_k=(10,),
        top_images=8,
    ),
    # The CPU preset (README, "Does the probe measure memorisation?"): LeNet-300-100 on the quick preset's
    # 6000 MNIST images, rates 0 and 5 %, 100 subset models of 70 % per run, 20 epochs at peak lr 0.005
    # (its subsets reach 99.5 %: the target), the quick preset's probe grids; removal at rate 0 of four k
    # (2.5 to 20 % of the images), as Feldman and Zhang compare several memorisation thresholds.
    "quick": dict(
        base="quick",
        model="lenet300",
        width=100,
        train_size=6000,
        test_size=2000,
        rates=(0.0, 0.05),
        seeds=(0, 1, 2),
        max_epochs=20,
        lr=5e-3,
        batch_size=128,
        target_acc=0.995,
        models=100,
        fraction=0.7,
        perturbations=("blur", "noise", "fgsm"),
        sigmas=sigma_grid(0, 5, 0.25),
        levels=("fgsm=0:0.3:0.05",),
        removal_k=(150, 300, 600, 1200),
    ),
    # For a GPU: ResNet-18 width 16 on all of MNIST, 1000 subset models per run (Feldman and Zhang used 2000
    # to 4000 on CIFAR and ImageNet), the study's 40-epoch schedule and blur grid; removal of 1 % and 5 %.
    "paper": dict(
        base="paper",
        model="resnet18",
        width=16,
        train_size=60000,
        test_size=10000,
        rates=(0.0, 0.05),
        seeds=(0, 1, 2),
        max_epochs=40,
        lr=2e-3,
        batch_size=128,
        target_acc=0.999,
        models=1000,
        fraction=0.7,
        perturbations=("blur", "noise", "fgsm"),
        sigmas=sigma_grid(0, 5, 0.1),
        levels=(),
        removal_k=(600, 3000),
    ),
}


def memorisation_config(*, preset: str, **overrides: Any) -> MemorisationConfig:
    """The preset's settings with every non-None override applied, validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = {name: value for name, value in overrides.items() if value is not None}
    config = MemorisationConfig(preset=preset, **PRESETS[preset])
    try:
        config = replace(config, **chosen)
        if "removal_rates" not in chosen:  # the preset's removal rates among the rates chosen
            config = replace(
                config, removal_rates=tuple(r for r in config.removal_rates if r in config.rates)
            )
        return config.validate()
    except TypeError as error:
        raise ConfigError(f"unknown memorisation setting: {error}") from None
