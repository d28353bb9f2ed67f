"""The settings of the loss-landscape experiment (frozen dataclasses) and its presets. Runs are ordinary
`RunConfig`s: the models that paths and tunnels start from are trained by the study's `TrainStep`, so a run
store shared with the main study shares them."""

from dataclasses import dataclass, replace
from typing import Any

from overparam.config import ConfigError, RunConfig, resolve
from overparam.models import MODELS


@dataclass(frozen=True)
class SubspaceSettings:
    """How a subspace (or at dimension 0 the full network) is trained: Li et al.'s Adam at a constant
    learning rate (beta2 0.99) for `epochs`, z from 0; `projection` dense, sparse, fastfood or auto."""

    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    projection: str = "auto"


@dataclass(frozen=True)
class CurveSettings:
    """How the middle point of a quadratic Bezier curve is trained (Garipov et al. 2018, their released
    train.py): SGD with momentum 0.9 and weight decay on the middle point, t uniform per batch, the learning
    rate constant for half the epochs, then linearly down to 1 % at 90 % of them; `points` evenly spaced t
    (ends included) at which each path is evaluated."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.015
    momentum: float = 0.9
    weight_decay: float = 5e-4
    points: int = 21


@dataclass(frozen=True)
class Network:
    """A registered model at a width, and the data its runs train on."""

    model: str
    width: int
    train_size: int
    test_size: int

    def runs(self, *, dataset: str, rates: tuple[float, ...], seeds: tuple[int, ...]) -> list[RunConfig]:
        """One RunConfig per (rate, seed), rates outermost (training settings at the paper preset's: the
        subspace steps train with their own)."""
        study = resolve(
            preset="paper",
            overrides={
                "dataset": dataset,
                "model": self.model,
                "width": self.width,
                "train_size": self.train_size,
                "test_size": self.test_size,
                "rates": rates,
                "seeds": seeds,
            },
        )
        return study.runs()


@dataclass(frozen=True)
class LandscapeConfig:
    """Everything the experiment computes. `anchors`: the networks whose d_int90 is held against Li et al.'s
    (unmislabelled data); `memorisation`: the network whose clean and mislabelled fit is measured against
    d at each of `rates`; `path_study`/`path_overrides`: the study preset and settings whose runs (ordinary
    trainings) the paths and tunnels start from, at `path_rates`."""

    preset: str
    dataset: str
    seeds: tuple[int, ...]
    anchors: tuple[Network, ...]
    anchor_dims: tuple[int, ...]
    anchor_training: SubspaceSettings
    memorisation: Network
    rates: tuple[float, ...]
    memorisation_dims: tuple[int, ...]
    memorisation_training: SubspaceSettings
    path_study: str
    path_overrides: tuple[tuple[str, Any], ...]
    path_rates: tuple[float, ...]
    curve: CurveSettings
    tunnel_directions: int
    tunnel_radii: tuple[float, ...]
    parts: tuple[str, ...] = ("intrinsic", "memorisation", "paths", "tunnel")

    def anchor_runs(self) -> list[RunConfig]:
        return [
            run
            for net in self.anchors
            for run in net.runs(dataset=self.dataset, rates=(0.0,), seeds=self.seeds)
        ]

    def memorisation_runs(self) -> list[RunConfig]:
        return self.memorisation.runs(dataset=self.dataset, rates=self.rates, seeds=self.seeds)

    def path_runs(self) -> list[RunConfig]:
        """The endpoints of every path: runs of the `path_study` preset, one per (path rate, seed)."""
        overrides = {**dict(self.path_overrides), "rates": self.path_rates, "seeds": self.seeds}
        return resolve(preset=self.path_study, overrides=overrides).runs()

    def validate(self) -> "LandscapeConfig":
        for net in (*self.anchors, self.memorisation):
            if net.model not in MODELS:
                raise ConfigError(f"unknown model {net.model!r}; choose one of {', '.join(MODELS)}")
        if any(d < 1 for d in (*self.anchor_dims, *self.memorisation_dims)):
            raise ConfigError("subspace dimensions must be >= 1 (0 is the full network, always included)")
        if len(self.seeds) < 2 and "paths" in self.parts:
            raise ConfigError("paths join two runs of different seeds: give --seeds at least two seeds")
        if self.curve.points < 3:
            raise ConfigError("--points must be at least 3 (21 or more for the report)")
        if list(self.tunnel_radii) != sorted(self.tunnel_radii) or self.tunnel_radii[:1] != (0.0,):
            raise ConfigError("--tunnel-radii must start at 0 and ascend")
        self.path_runs()  # its own validation (rates that coincide at the path train size, ...)
        return self


# Li et al.'s grids and settings: 784-200-200-10 and LeNet-5 on all of MNIST, Adam lr 1e-3, 100 epochs
# (their scripts/more/loop_d_mnist_{fnn,lenet}.sh), batch 128 (their train.py's default).
_FC, _LENET = ("mlp", 25), ("lenet5", 1)
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        seeds=(0, 1),
        anchors=(Network("mlp", 25, 500, 500),),
        anchor_dims=(10, 100),
        anchor_training=SubspaceSettings(epochs=2),
        memorisation=Network("mlp", 25, 500, 500),
        rates=(0.0, 0.1),
        memorisation_dims=(50, 400),
        memorisation_training=SubspaceSettings(epochs=2),
        path_study="smoke",
        path_overrides=(("train_size", 500), ("test_size", 500), ("width", 4), ("max_epochs", 2)),
        path_rates=(0.02, 0.1),
        curve=CurveSettings(epochs=1, points=5),
        tunnel_directions=2,
        tunnel_radii=(0.0, 0.5, 1.0),
    ),
    # The CPU preset: few optimiser steps (about 470 per subspace training, Li et al. took ~47000), so Adam
    # runs at lr 0.01 here, not their 0.001, to come near convergence; its d_int90 is its own, not theirs.
    "quick": dict(
        seeds=(0, 1, 2),
        anchors=(Network(*_FC, 4000, 2000), Network(*_LENET, 4000, 2000)),
        anchor_dims=(100, 200, 300, 400, 500, 750, 1000, 1500),
        anchor_training=SubspaceSettings(epochs=15, lr=1e-2),
        memorisation=Network("mlp", 25, 1000, 2000),
        rates=(0.0, 0.05, 0.1),
        memorisation_dims=(250, 500, 1000, 2000, 4000),
        memorisation_training=SubspaceSettings(epochs=60, lr=1e-2),
        path_study="quick",
        path_overrides=(
            ("train_size", 2000),
            ("test_size", 2000),
            ("width", 8),
            ("max_epochs", 30),
            ("batch_size", 128),
        ),
        path_rates=(0.05, 0.1),
        curve=CurveSettings(epochs=40, points=21),
        tunnel_directions=4,
        tunnel_radii=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
    ),
    "paper": dict(
        seeds=(0, 1, 2),
        anchors=(Network(*_FC, 60000, 10000), Network(*_LENET, 60000, 10000)),
        anchor_dims=(50, 100, 200, 250, 300, 350, 400, 500, 600, 750, 900, 1000, 1250, 1500, 2000),
        anchor_training=SubspaceSettings(epochs=100),
        memorisation=Network(*_FC, 60000, 10000),  # 199,210 parameters: room to memorise 6000 mislabels
        rates=(0.0, 1 / 125, 1 / 50, 1 / 20, 1 / 10),
        memorisation_dims=(500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000),
        memorisation_training=SubspaceSettings(epochs=100),
        path_study="paper",
        path_overrides=(),
        path_rates=(1 / 50, 1 / 20, 1 / 10),
        curve=CurveSettings(epochs=40, points=31),
        tunnel_directions=10,
        tunnel_radii=(0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0),
    ),
}


def landscape_config(*, preset: str, **overrides: Any) -> LandscapeConfig:
    """The preset's settings with every non-None override applied, validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = {name: value for name, value in overrides.items() if value is not None}
    config = LandscapeConfig(preset=preset, dataset="mnist", **PRESETS[preset])
    try:
        return replace(config, **chosen).validate()
    except TypeError as error:
        raise ConfigError(f"unknown landscape setting: {error}") from None
