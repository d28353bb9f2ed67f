"""The simplicity experiment's settings, its presets and the steps they make."""

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from overparam.config import ConfigError
from overparam.experiments.simplicity.network import Architecture
from overparam.experiments.simplicity.noise import NoiseStep
from overparam.experiments.simplicity.prior import PriorStep
from overparam.experiments.simplicity.sgd import GpCheckStep, GpStep, SgdStep, Task
from overparam.experiments.simplicity.targets import N_BITS, TARGETS
from overparam.experiments.simplicity.training import Training


@dataclass(frozen=True)
class SimplicityConfig:
    """Everything that decides the experiment's results (`seed` seeds every step; the training inputs are
    drawn from `split_seed`)."""

    preset: str
    draws: int  # prior samples
    batch: int  # prior samples per forward pass (part of the prior's identity: it cuts the random stream)
    sgd_trainings: int  # per target
    noise_trainings: int  # per target and number of flips
    gp_functions: int  # per target: the functions SGD finds most often, given their GP probability
    flips: tuple[int, ...] = (0, 2, 4, 8, 16)  # flipped training labels; up to a quarter of train_size
    targets: tuple[str, ...] = ("low", "medium", "high")  # SGD against the prior
    noise_targets: tuple[str, ...] = ("low", "medium")
    train_size: int = 64
    split_seed: int = 0
    seed: int = 0
    architecture: Architecture = field(default_factory=Architecture)
    training: Training = field(default_factory=lambda: Training(learning_rate=1e-2, batch_size=8))

    def check(self) -> None:
        """ConfigError on settings the experiment cannot run."""
        if self.architecture.n_bits != N_BITS:
            raise ConfigError(f"the targets are functions of {N_BITS} bits; keep n_bits = {N_BITS}")
        unknown = [name for name in (*self.targets, *self.noise_targets) if name not in TARGETS]
        if unknown:
            raise ConfigError(f"unknown targets {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
        if min(self.draws, self.batch, self.sgd_trainings, self.noise_trainings, self.gp_functions) < 1:
            raise ConfigError(
                "--draws, --sgd-trainings, --noise-trainings and --gp-functions must be at least 1"
            )
        if any(not 0 <= k <= self.train_size for k in self.flips):
            raise ConfigError(f"--flips must lie between 0 and the training set size {self.train_size}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def prior(self) -> PriorStep:
        return PriorStep(architecture=self.architecture, draws=self.draws, batch=self.batch, seed=self.seed)

    def task(self, name: str) -> Task:
        return Task(target=name, train_size=self.train_size, split_seed=self.split_seed)

    def sgd(self) -> dict[str, SgdStep]:
        return {
            name: SgdStep(
                architecture=self.architecture,
                training=self.training,
                task=self.task(name),
                trainings=self.sgd_trainings,
                seed=self.seed,
            )
            for name in self.targets
        }

    def gp_check(self) -> GpCheckStep:
        return GpCheckStep(prior=self.prior(), functions=20)

    def gp(self) -> dict[str, GpStep]:
        return {name: GpStep(sgd=step, functions=self.gp_functions) for name, step in self.sgd().items()}

    def noise(self) -> dict[tuple[str, int], NoiseStep]:
        return {
            (name, k): NoiseStep(
                architecture=self.architecture,
                training=self.training,
                task=self.task(name),
                flips=k,
                trainings=self.noise_trainings,
                seed=self.seed,
            )
            for name in self.noise_targets
            for k in self.flips
        }


PRESETS = {
    # seconds, for tests
    "smoke": SimplicityConfig(
        preset="smoke",
        draws=20_000,
        batch=2_000,
        sgd_trainings=40,
        noise_trainings=16,
        gp_functions=8,
        flips=(0, 4),
        targets=("low", "high"),
        noise_targets=("low",),
    ),
    # the CPU preset: about ten minutes on one core
    "quick": SimplicityConfig(
        preset="quick",
        draws=10_000_000,
        batch=4_096,
        sgd_trainings=1_000,
        noise_trainings=200,
        gp_functions=200,
    ),
    # a GPU: Valle-Perez et al.'s 1e8 draws, Mingard et al.'s scale of trainings
    "paper": SimplicityConfig(
        preset="paper",
        draws=100_000_000,
        batch=65_536,
        sgd_trainings=20_000,
        noise_trainings=2_000,
        gp_functions=2_000,
    ),
}


def resolve(*, preset: str, overrides: dict[str, Any]) -> SimplicityConfig:
    """The preset with the given settings (None: the preset's) replaced, checked."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    config = replace(
        PRESETS[preset], **{name: value for name, value in overrides.items() if value is not None}
    )
    config.check()
    return config
