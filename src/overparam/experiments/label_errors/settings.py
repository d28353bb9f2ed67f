"""The label-error experiment's settings (which per-image scores to compute, the K-fold models of confident
learning, the subset models of the memorisation estimate) and its presets, registered as a settings group
(overparam.settings). The memorisation experiment sets the same settings by name."""

from dataclasses import dataclass
from typing import Any

from overparam.settings import ConfigError, SettingsGroup, parse_names, setting

# Per-image label-error scores: from the probe of the trained model, from its training dynamics (AUM,
# forgetting), confident learning on K-fold probabilities, memorisation (M models).
LABEL_SCORES = ("probe", "dynamics", "cleanlab", "memorisation")


@dataclass(frozen=True)
class LabelErrorSettings:
    label_scores: tuple[str, ...] = setting(
        (),
        "per-image label-error scores to compute, e.g. probe,dynamics,cleanlab: probe (flip levels, level-0 "
        "margin), dynamics (area under the margin, forgetting events), cleanlab (confident learning on "
        "--folds out-of-sample models), memorisation (--memorisation-models models on random subsets; "
        "expensive)",
        parse=parse_names,
    )
    folds: int = setting(5, "K of the K-fold models whose out-of-sample probabilities cleanlab reads")
    memorisation_models: int = setting(16, "models on random subsets for the memorisation estimate")
    memorisation_fraction: float = setting(0.7, "fraction of the training images each such model sees")


def validate(config: Any) -> None:
    """ConfigError on the first invalid label-error setting of a StudyConfig."""
    unknown = [name for name in config.label_scores if name not in LABEL_SCORES]
    if unknown or len(set(config.label_scores)) != len(config.label_scores):
        raise ConfigError(
            f"--label-scores takes distinct names of {', '.join(LABEL_SCORES)}, got "
            f"{','.join(config.label_scores)}"
        )
    if config.folds < 2 or config.memorisation_models < 2 or not 0 < config.memorisation_fraction < 1:
        raise ConfigError(
            "--folds and --memorisation-models must be at least 2 and --memorisation-fraction in (0, 1), "
            f"got {config.folds}, {config.memorisation_models}, {config.memorisation_fraction}"
        )


PRESETS = {
    # `overparam label-errors` on a CPU (README, "Which images are mislabelled"): all 60000 training and 10000
    # test images, LeNet-5 fold models (K = 5 as cleanlab's default, 48000 images each, 12 epochs: above 99 %
    # test accuracy on MNIST), three seeds; about 15 minutes on a 2-core CPU.
    "label-errors": dict(
        model="lenet5",
        width=1,
        rates=(0.0,),
        max_epochs=12,
        batch_size=128,
        lr=5e-3,
        folds=5,
    ),
}
# The same for Fashion-MNIST: LeNet-5 at 12 epochs memorises its training images and stops at 90.3 % test
# accuracy; at twice its width, with random shifts and flips over 30 epochs, one model of all training images
# reached 91.7 % (README, "Which images are mislabelled": what was measured, what a GPU would add).
PRESETS["label-errors-fashion"] = dict(
    PRESETS["label-errors"], dataset="fashion-mnist", width=2, max_epochs=30, augment="shift-flip"
)

SETTINGS = SettingsGroup(
    experiment="label_errors", settings=LabelErrorSettings, validate=validate, presets=PRESETS
)
