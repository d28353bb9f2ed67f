"""The lottery experiment's settings (one-shot pruning, iterative magnitude pruning and its tickets) and its
presets, registered as a settings group (overparam.settings)."""

import itertools
from dataclasses import dataclass
from typing import Any

from overparam.settings import ConfigError, SettingsGroup, parse_names, setting, sigma_grid

# Tickets trained at every round of iterative magnitude pruning: the ticket itself, the same mask with a fresh
# initialisation, a random mask with the same layer-wise sparsity, and the dual lottery ticket (a random mask
# that training with a growing penalty moves the information into).
LOTTERY_METHODS = ("imp", "reinit", "random", "dual")


@dataclass(frozen=True)
class LotterySettings:
    oneshot_pruning: tuple[float, ...] = setting(
        (),
        "fractions of the weights to prune from each over-trained model in one shot, without retraining "
        "(global magnitude, output layer at half the rate), e.g. 0 0.5 0.8 0.9 0.95: which images lose "
        "their fit first (pruning.csv)",
    )
    lottery_rounds: int = setting(
        0,
        "rounds of iterative magnitude pruning with rewinding after each over-trained model (0: none); "
        "round r keeps (1 - --lottery-fraction)^r of the weights",
    )
    lottery_fraction: float = setting(0.2, "fraction of the remaining weights each round prunes")
    lottery_rewind: float = setting(
        0.1,
        "where the survivors are rewound to, in epochs of the dense training (0: its initialisation, as "
        "Frankle and Carbin 2019); rounded to whole iterations",
    )
    lottery_methods: tuple[str, ...] = setting(
        LOTTERY_METHODS,
        "tickets trained at every round: imp (the ticket), reinit (its mask, a fresh initialisation), random "
        "(a random mask of the same layer-wise sparsity, rewound weights), dual (a random mask at the same "
        "sparsity, information extruded by a growing L2 penalty, Bai et al. 2022)",
        parse=parse_names,
    )
    dual_increment: float = setting(
        1e-4, "dual lottery ticket: what the penalty's coefficient grows by every --dual-interval iterations"
    )
    dual_interval: int = setting(5, "dual lottery ticket: iterations between two increments")
    dual_ceiling: float = setting(
        1.0, "dual lottery ticket: the coefficient at which extrusion ends and the network is cut to its mask"
    )


def validate(config: Any) -> None:
    """ConfigError on the first invalid lottery setting of a StudyConfig."""
    methods = config.lottery_methods
    if config.lottery_rounds < 0 or not 0 < config.lottery_fraction < 1 or config.lottery_rewind < 0:
        raise ConfigError(
            "--lottery-rounds must be 0 or more, --lottery-fraction in (0, 1) and --lottery-rewind 0 or "
            f"more, got {config.lottery_rounds}, {config.lottery_fraction}, {config.lottery_rewind}"
        )
    if config.lottery_rewind >= config.max_epochs:
        raise ConfigError(
            f"--lottery-rewind {config.lottery_rewind} is beyond the {config.max_epochs}-epoch schedule"
        )
    if not methods or any(m not in LOTTERY_METHODS for m in methods) or len(set(methods)) != len(methods):
        raise ConfigError(
            f"--lottery-methods takes distinct names of {', '.join(LOTTERY_METHODS)}, got {','.join(methods)}"
        )
    if {"reinit", "random"} & set(methods) and "imp" not in methods:
        raise ConfigError("--lottery-methods reinit and random take the mask of imp: add imp")
    if config.dual_increment <= 0 or config.dual_interval < 1 or config.dual_ceiling <= 0:
        raise ConfigError(
            "--dual-increment and --dual-ceiling must be positive and --dual-interval at least 1, got "
            f"{config.dual_increment}, {config.dual_ceiling}, {config.dual_interval}"
        )
    pruned = config.oneshot_pruning
    if any(not 0 <= f < 1 for f in pruned) or any(b <= a for a, b in itertools.pairwise(pruned)):
        raise ConfigError(f"--oneshot-pruning takes increasing fractions in [0, 1), got {pruned}")


PRESETS = {
    # Lottery tickets within 30 minutes on a 2-core CPU (README, "Lottery tickets"): LeNet-300-100 on 3000
    # MNIST images, rates 0 (the published anchor) and 10 %, six rounds of 50 % (down to 1.6 % of the
    # weights), extrusion of the dual ticket shortened to about the length of one training (the DLTH paper's
    # increment takes 50000 iterations).
    "lottery": dict(
        model="lenet300",
        width=100,
        train_size=3000,
        test_size=2000,
        rates=(0.0, 1 / 10),
        sigmas=sigma_grid(0, 5, 0.25),
        max_epochs=60,
        batch_size=128,
        lottery_rounds=6,
        lottery_fraction=0.5,
        dual_increment=0.004,
    ),
    # For a GPU: Frankle and Carbin's LeNet-300-100 on all of MNIST, nine rates, 20 rounds of 20 % (1.2 % of
    # the weights remain), the DLTH paper's extrusion schedule.
    "lottery-paper": dict(model="lenet300", width=100, max_epochs=60, batch_size=128, lottery_rounds=20),
}

SETTINGS = SettingsGroup(experiment="lottery", settings=LotterySettings, validate=validate, presets=PRESETS)
