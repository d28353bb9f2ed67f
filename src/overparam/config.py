"""Typed configuration. `StudyConfig`'s fields generate the command line (see cli.py); presets are partial
overrides of its defaults; `RunConfig` is one trained model, identified by a hash of what affects results.
Both are composed from the shared settings declared here and every experiment's settings group
(overparam.settings), which this module loads and names none of."""

import functools
import hashlib
import itertools
import json
import math
import numbers
import os
import typing
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np

from overparam.augment import AUGMENTATIONS
from overparam.data import DATASETS
from overparam.mislabel import per_class_count
from overparam.models import MODELS, REVISIONS
from overparam.settings import ConfigError, load_groups, parse_names, setting, sigma_grid

# The run store's identity scheme. 1: every setting is hashed as its declared type (an int rate as a float,
# a float for an int setting refused), and a model whose architecture was revised (models.REVISIONS) hashes
# its revision. Ids of settings that already had their declared types, of unrevised models, are unchanged.
IDENTITY_SCHEMA = 1


def parse_rate(text: str) -> float:
    """'0.01', '1/90' or '1.11%' -> a fraction of the training set."""
    try:
        if text.endswith("%"):
            return float(Fraction(text[:-1]) / 100)
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"cannot read rate {text!r}; write it as 0.01, 1/90 or 1.11%") from None


def parse_level_grid(text: str) -> tuple[str, ...]:
    """'noise=0:0.5:0.05' or 'fgsm=0,0.1,0.2' -> ('noise=0:0.5:0.05',), checked now, read by `level_grid`."""
    level_grid(text)
    return (text,)


def level_grid(text: str) -> tuple[str, tuple[float, ...]]:
    """'NAME=START:STOP:STEP' or 'NAME=A,B,C' -> (NAME, levels ascending from 0)."""
    name, _, spec = text.partition("=")
    try:
        if not name or not spec:
            raise ValueError
        levels = tuple(float(value) for value in spec.split(",")) if ":" not in spec else parse_sigmas(spec)
    except (ValueError, ConfigError):
        raise ConfigError(
            f"cannot read level grid {text!r}; write NAME=START:STOP:STEP or NAME=A,B,C, e.g. "
            "noise=0:0.5:0.05"
        ) from None
    if levels[0] != 0 or any(b <= a for a, b in itertools.pairwise(levels)):
        raise ConfigError(f"levels of {name} must start at 0 and increase strictly, got {levels}")
    return name, levels


def _probability_entry(text: str) -> tuple[str, tuple[float, ...]]:
    """'pgd=0.1,0.2' -> ('pgd', (0.1, 0.2)): the levels besides 0 at which a probe keeps probabilities."""
    name, _, spec = text.partition("=")
    try:
        levels = tuple(float(value) for value in spec.split(","))
        if not name or any(level < 0 for level in levels):
            raise ValueError
    except ValueError:
        raise ConfigError(f"cannot read {text!r}; write NAME=A,B,C with levels on NAME's grid") from None
    return name, levels


def parse_probability_levels(text: str) -> tuple[str, ...]:
    """'blur=1,2' -> ('blur=1,2',), checked now."""
    _probability_entry(text)
    return (text,)


def parse_sigmas(text: str) -> tuple[float, ...]:
    """'0.5' -> (0.5,); 'START:STOP:STEP' -> the inclusive grid."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0:
                raise ValueError
            return sigma_grid(start, stop, step)
        return (float(text),)
    except ValueError:
        raise ConfigError(
            f"cannot read sigmas {text!r}; give numbers or START:STOP:STEP such as 0:5:0.1"
        ) from None


PROTOCOL_RATES = (0.0, 1 / 125, 1 / 100, 1 / 90, 1 / 80, 1 / 70, 1 / 50, 1 / 20, 1 / 10)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
EXECUTORS = ("local", "ray", "slurm")  # where a sweep's runs execute (sweep.py)
SCHEDULES = ("full", "target")  # train.py: the whole one-cycle schedule, or stop at the target
ADVERSARIAL = ("none", "pgd", "fgsm")  # adversarial.py


@dataclass(frozen=True)
class _StudyData:
    """The shared settings of what is trained on and probed: first in every listing (config.json, --help)."""

    dataset: str = setting("mnist", "image data set", choices=DATASETS)
    model: str = setting("resnet18", "network architecture", choices=tuple(MODELS))
    width: int = setting(64, "base channel count (64 = torchvision's ResNet-18)")
    train_size: int = setting(60000, "training images: a class-balanced subset per seed, 60000 = all")
    test_size: int = setting(10000, "test images: a class-balanced subset per seed, 10000 = all")
    rates: tuple[float, ...] = setting(
        PROTOCOL_RATES, "mislabelling rates (0.01, 1/90 or 1.11%%)", parse=parse_rate
    )
    seeds: tuple[int, ...] = setting((0, 1, 2), "random seeds, one model per rate and seed")
    sigmas: tuple[float, ...] = setting(
        sigma_grid(0, 5, 0.1),
        "blur sigmas in pixels, from 0, ascending (or START:STOP:STEP)",
        parse=parse_sigmas,
    )
    clean_sample: int = setting(
        0, "probe every mislabelled image and a fixed random sample of this many clean ones (0: all images)"
    )
    perturbations: tuple[str, ...] = setting(
        ("blur",),
        "perturbations to probe, e.g. blur,noise,fgsm,pgd (overparam.perturb; blur's levels are --sigmas)",
        parse=parse_names,
    )
    levels: tuple[str, ...] = setting(
        (),
        "level grids of perturbations other than blur, NAME=START:STOP:STEP or NAME=A,B,C (default: each "
        "perturbation's own)",
        parse=parse_level_grid,
    )
    probabilities: tuple[str, ...] = setting(
        (),
        "levels besides 0 at which the probe also keeps every image's softmax probabilities (fp16), "
        "NAME=A,B,C, each level on NAME's grid (default: level 0 only, of every perturbation)",
        parse=parse_probability_levels,
    )


@dataclass(frozen=True)
class _StudyTraining:
    """The shared settings of training and of where a study runs: after every experiment's settings."""

    max_epochs: int = setting(
        40, "length of the one-cycle schedule in epochs: training stops there at the latest"
    )
    target_acc: float = setting(
        0.999, "eval accuracy on the assigned labels that a trained model must reach (see --schedule)"
    )
    schedule: str = setting(
        "full",
        "full: train the whole schedule, to --max-epochs, and count the target reached when the last epoch "
        "reaches it; target: stop at the first epoch that reaches --target-acc",
        choices=SCHEDULES,
    )
    batch_size: int = setting(128, "training batch size")
    lr: float = setting(2e-3, "peak learning rate of Adam's one-cycle schedule")
    augment: str = setting(
        "none",
        "augmentation of training batches: none; shift (a random translation by up to 2 pixels, zero fill); "
        "shift-flip (also a left-right flip with probability 1/2: for Fashion-MNIST, not digits)",
        choices=AUGMENTATIONS,
    )
    adversarial: str = setting(
        "none",
        "adversarial training: none; pgd (random start, --adversarial-steps steps of 2.5 eps / steps); fgsm "
        "(random start, one step of 1.25 eps). The target accuracy is still measured on clean images",
        choices=ADVERSARIAL,
    )
    adversarial_epsilon: float = setting(0.1, "L-infinity budget of adversarial training, pixels in [0, 1]")
    adversarial_steps: int = setting(7, "PGD steps of adversarial training")
    precision: str = setting(
        "fp32",
        "arithmetic of training and probing: fp32, or bf16 autocast (for GPUs; the probe then checks a "
        "sample of its predictions against fp32 and records the agreement)",
        choices=PRECISIONS,
    )
    compile: bool = setting(
        False,
        "torch.compile the model for training and probing (for GPUs; its rounding differs from eager "
        "PyTorch's, so the probe checks a sample of its predictions against eager fp32 and records the "
        "agreement)",
    )
    device: str = setting("auto", "where to compute: auto picks cuda when available", choices=DEVICES)
    data_dir: str | None = setting(None, "data folder (else $OVERPARAM_DATA, else a per-user cache)")
    download: bool = setting(True, "download missing data files (checksums verified)")
    store: str | None = setting(
        None,
        "run store shared by studies: finished runs are reused (default $OVERPARAM_STORE, else runs/store)",
    )
    report: bool = setting(True, "write report.html, summary.md, figures and analysis tables at the end")
    out: str | None = setting(None, "output folder (default runs/<preset>-<dataset>-<hash of the settings>)")


class _Study:
    """Everything a study needs: the shared settings and every experiment's (overparam.settings), composed
    into `StudyConfig` below. Defaults are the paper preset (PROTOCOL.md at full scale)."""

    def runs(self) -> list["RunConfig"]:
        """One RunConfig per (rate, seed), rates outermost."""
        shared = {f.name: getattr(self, f.name) for f in fields(RunConfig) if f.name not in ("rate", "seed")}
        return [RunConfig(rate=rate, seed=seed, **shared) for rate in self.rates for seed in self.seeds]

    def study_id(self) -> str:
        """8 hex digits over the result-affecting settings: the same study gets the same default folder."""
        settings = {name: getattr(self, name) for name in RESULT_AFFECTING}
        return _digest(_identity({**settings, **_revision(self.model)}))

    def validate(self) -> "StudyConfig":
        """Self, or ConfigError on the first invalid setting (data-dependent checks come later)."""
        if self.clean_sample < 0:
            raise ConfigError(f"--clean-sample must be 0 (all images) or positive, got {self.clean_sample}")
        for name in ("width", "train_size", "test_size", "max_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.target_acc <= 1:
            raise ConfigError(f"--target-acc must be in (0, 1], got {self.target_acc}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not self.rates or not self.seeds or not self.sigmas:
            raise ConfigError("--rates, --seeds and --sigmas each need at least one value")
        for rate in self.rates:
            if not 0 <= rate < 1:
                raise ConfigError(
                    f"mislabelling rate {rate} is outside [0, 1); give a fraction such as 0.01 or 1/90"
                )
        for name in ("rates", "seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(f"--{name} has a repeated value: {values}")
        _refuse_coinciding_rates(self.rates, self.train_size)
        _check_perturbations(self.perturbations, self.levels)
        for group in GROUPS:
            group.validate(self)
        self.runs()[0].probability_levels_of(self.perturbations[0])  # checks every --probabilities entry
        if not 0 < self.adversarial_epsilon <= 1 or self.adversarial_steps < 1:
            raise ConfigError(
                "--adversarial-epsilon must be in (0, 1] and --adversarial-steps at least 1, got "
                f"{self.adversarial_epsilon} and {self.adversarial_steps}"
            )
        for declared in fields(self):
            value, flag = getattr(self, declared.name), "--" + declared.name.replace("_", "-")
            choices = declared.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
            if isinstance(declared.default, bool) and not isinstance(value, bool):
                raise ConfigError(f"{flag} must be true or false, got {value!r}")
        sigmas = np.asarray(self.sigmas)
        if sigmas[0] != 0 or np.any(np.diff(sigmas) <= 0):
            raise ConfigError("--sigmas must start at 0 and increase strictly (0 is the unblurred reference)")
        return self


GROUPS = load_groups()  # every experiment's settings (overparam.settings)


def _compose(name: str, methods: type, *parts: type) -> type:
    """A frozen dataclass `name` with the fields of `parts` in order (types, defaults, metadata) and the
    methods and docstring of `methods`."""
    declared = []
    for part in parts:
        hints = typing.get_type_hints(part)
        for f in fields(part):
            declared.append((f.name, hints[f.name], field(default=f.default, metadata=f.metadata)))
    namespace = {"__module__": __name__, "__doc__": methods.__doc__}
    return make_dataclass(name, declared, bases=(methods,), namespace=namespace, frozen=True)


StudyConfig = _compose(
    "StudyConfig", _Study, _StudyData, *(group.settings for group in GROUPS), _StudyTraining
)


def _check_perturbations(names: tuple[str, ...], levels: tuple[str, ...]) -> None:
    from overparam.perturb import PERTURBATIONS

    unknown = [name for name in names if name not in PERTURBATIONS]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(
            f"--perturbations takes distinct names of {', '.join(PERTURBATIONS)}, got "
            f"{','.join(names) or 'none'}"
        )
    given = [level_grid(text)[0] for text in levels]
    for name in given:
        if name == "blur":
            raise ConfigError("blur's levels are --sigmas; --levels is for the other perturbations")
        if name not in names:
            raise ConfigError(f"--levels gives a grid for {name}, which is not in --perturbations")
    if len(set(given)) != len(given):
        raise ConfigError(f"--levels gives two grids for one perturbation: {levels}")


N_CLASSES = 10  # of every data set in data.DATASETS


def _refuse_coinciding_rates(rates: tuple[float, ...], train_size: int) -> None:
    """ConfigError when two rates mislabel the same number of images per class at `train_size`: their runs
    would be the same experiment under two names. Counts of 0 are left to mislabel's own refusal."""
    counts: dict[int, float] = {}
    for rate in sorted(rates):
        k = per_class_count(rate=rate, n_images=train_size, n_classes=N_CLASSES)
        if k > 0 and k in counts:
            low = counts[k]
            separating = separating_train_size(low, rate, above=train_size)
            raise ConfigError(
                f"rates {low:.4g} ({low:.3%}) and {rate:.4g} ({rate:.3%}) both mislabel {k} images per class "
                f"at --train-size {train_size}, so they coincide; the smallest larger train size that "
                f"separates them is {separating}"
            )
        counts[k] = rate


def separating_train_size(low: float, high: float, *, above: int) -> int:
    """The smallest train size above `above`, a multiple of the class count C, at which rates `low` < `high`
    mislabel different numbers of images per class. k = floor(rate N / C + 1/2) differ at N when a
    half-integer h has low N / C < h <= high N / C, so for each h above `low`'s count, in turn, the
    smallest N >= h C / high is tried. From C / (high - low) images on they always differ: that size is the
    answer for rates too close to find a smaller one quickly."""
    count = functools.partial(per_class_count, n_classes=N_CLASSES)
    first = (above // N_CLASSES + 1) * N_CLASSES
    always = max(first, math.ceil(1 / (high - low)) * N_CLASSES)
    h = count(rate=low, n_images=first) + 0.5
    for _ in range(100_000):
        n = max(first, math.ceil(h / high) * N_CLASSES)
        if n >= always:
            break
        for candidate in (n - N_CLASSES, n):  # the division's rounding may overshoot by one step
            apart = count(rate=low, n_images=candidate) < count(rate=high, n_images=candidate)
            if candidate >= first and apart:
                return candidate
        h += 1
    return always


# Settings that change results; device, paths and download do not (CPU and GPU differ only in rounding).
RESULT_AFFECTING = tuple(
    f.name
    for f in fields(StudyConfig)
    if f.name not in ("device", "data_dir", "download", "store", "report", "out")
)


@dataclass(frozen=True)
class _RunData:
    """A run's shared settings of what is trained on and probed."""

    dataset: str
    model: str
    width: int
    train_size: int
    test_size: int
    rate: float
    seed: int
    max_epochs: int
    target_acc: float
    batch_size: int
    lr: float
    sigmas: tuple[float, ...]
    clean_sample: int = 0
    precision: str = "fp32"
    compile: bool = False
    schedule: str = "target"  # what every run recorded before the setting had; StudyConfig's default is full
    perturbations: tuple[str, ...] = ("blur",)
    levels: tuple[str, ...] = ()  # NAME=grid of perturbations other than blur (their defaults otherwise)
    probabilities: tuple[str, ...] = ()  # NAME=levels at which the probe keeps probabilities, besides 0


@dataclass(frozen=True)
class _RunTraining:
    """A run's shared settings of training, after every experiment's settings."""

    adversarial: str = "none"
    adversarial_epsilon: float = 0.1
    adversarial_steps: int = 7
    augment: str = "none"  # overparam.augment


# Settings that act after training: the probe's and every experiment's (overparam.settings).
AFTER_TRAINING = ("sigmas", "clean_sample", "perturbations", "levels", "probabilities")
AFTER_TRAINING += tuple(name for group in GROUPS for name in group.names())


class _Run:
    """One trained and probed model: the shared settings and every experiment's, composed into `RunConfig`
    below."""

    def training(self) -> dict[str, Any]:
        """The settings that determine the trained model (all but those of AFTER_TRAINING), each as its
        declared type, and the model's architecture revision where it has one (models.REVISIONS)."""
        settings = _canonical(asdict(self))
        for later_setting in AFTER_TRAINING:
            del settings[later_setting]
        if settings["adversarial"] == "none":  # its budget and steps then change nothing
            for name in ("adversarial_epsilon", "adversarial_steps"):
                settings[name] = _LATER_SETTINGS[name]
        return {**settings, **_revision(self.model)}

    def trains_as(self, settings: dict[str, Any]) -> bool:
        """Whether training settings recorded earlier (`training()` of a run, perhaps from before a later
        setting existed) train this run's model."""
        return _identity(settings) == _identity(self.training())

    def run_id(self) -> str:
        """Readable and unique: e.g. mnist-resnet18w64-n60000-rate0.01-seed0-1a2b3c4d."""
        run = self.training()
        return (
            f"{run['dataset']}-{run['model']}w{run['width']}-n{run['train_size']}-rate{run['rate']:.4g}-"
            f"seed{run['seed']}-{_digest(_identity(run))}"
        )

    def levels_of(self, perturbation: str) -> tuple[float, ...]:
        """The level grid of `perturbation`: --sigmas for blur, its --levels entry, or its default grid."""
        from overparam.perturb import get

        if perturbation == "blur":
            return self.sigmas
        given = dict(level_grid(text) for text in self.levels)
        return given.get(perturbation, get(perturbation).default_levels)

    def probability_levels_of(self, perturbation: str) -> tuple[float, ...]:
        """The levels at which the probe of `perturbation` keeps probabilities: 0, and its --probabilities
        entry; ConfigError for an entry of a perturbation not probed or a level off its grid."""
        chosen: dict[str, tuple[float, ...]] = {}
        for text in self.probabilities:
            name, levels = _probability_entry(text)
            if name not in self.perturbations or name in chosen:
                raise ConfigError(
                    f"--probabilities {text}: give each perturbation of --perturbations at most once"
                )
            off = [level for level in levels if level not in self.levels_of(name)]
            if off:
                raise ConfigError(
                    f"--probabilities {text}: levels {off} are not on {name}'s grid; choose levels it probes"
                )
            chosen[name] = levels
        return tuple(sorted({0.0, *chosen.get(perturbation, ())}))

    def probe_id(self, perturbation: str = "blur") -> str:
        """The folder of one perturbation's probe of this run. Blur's covers what it covered before other
        perturbations existed, so every stored blur probe keeps its folder; the others' add their name, their
        levels and their own settings (an attack's steps)."""
        from overparam.perturb import get

        probe: dict[str, Any] = {"test_size": self.test_size, "clean_sample": self.clean_sample}
        if perturbation == "blur":
            probe["sigmas"] = self.sigmas
        else:
            probe |= {"perturbation": perturbation, "grid": self.levels_of(perturbation)}
            probe["settings"] = get(perturbation).settings()
        kept = self.probability_levels_of(perturbation)
        if kept != (0.0,):  # level 0's probabilities are always kept: ids from before the setting stand
            probe["probability_levels"] = kept
        return f"probe-{_digest(_identity(probe))}"

    def probe_ids(self) -> dict[str, str]:
        """probe_id of every perturbation of this run, by name."""
        return {name: self.probe_id(name) for name in self.perturbations}

    def keys(self) -> dict[str, Any]:
        """The columns that identify this run in every table."""
        return {
            "dataset": self.dataset,
            "model": self.model,
            "width": self.width,
            "train_size": self.train_size,
            "rate": self.rate,
            "seed": self.seed,
        }


RunConfig = _compose("RunConfig", _Run, _RunData, *(group.settings for group in GROUPS), _RunTraining)


# Every setting's declared type, of a study (rates, seeds) and of a run (rate, seed).
_DECLARED: dict[str, Any] = {**typing.get_type_hints(StudyConfig), **typing.get_type_hints(RunConfig)}
_EXPECTED = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def _scalar(name: str, kind: type, value: Any) -> Any:
    """`value` as `kind` when that loses nothing: an int as a float, a whole float (16.0) as an int."""
    if kind is bool and isinstance(value, bool | np.bool_):
        return bool(value)
    if kind is str and isinstance(value, str):
        return value
    if kind in (int, float) and isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
        if kind is float and (not isinstance(value, numbers.Integral) or float(value) == value):
            return float(value)
        if kind is int and (isinstance(value, numbers.Integral) or float(value).is_integer()):
            return int(value)
    raise ConfigError(f"{name} takes {_EXPECTED[kind]}, got {value!r}")


def canonical_setting(name: str, value: Any) -> Any:
    """`value` as setting `name`'s declared type (see `_scalar`; lists and tuples become tuples); a one-line
    ConfigError naming the setting, the value and what it takes when that would lose something."""
    kind = _DECLARED[name]
    if typing.get_origin(kind) is tuple:
        element = typing.get_args(kind)[0]
        if not isinstance(value, list | tuple | np.ndarray):
            expected = _EXPECTED[element].removeprefix("a ")
            raise ConfigError(f"{name} takes a list of {expected}s, e.g. {name} = [0, 1], got {value!r}")
        return tuple(_scalar(name, element, item) for item in value)
    if value is None and type(None) in typing.get_args(kind):  # an optional path
        return None
    if isinstance(value, os.PathLike) and str in typing.get_args(kind):
        return os.fspath(value)
    return _scalar(name, str if str in typing.get_args(kind) else kind, value)


def _canonical(settings: dict[str, Any]) -> dict[str, Any]:
    """Every known setting as its declared type; others (model_revision) as they are."""
    return {name: canonical_setting(name, v) if name in _DECLARED else v for name, v in settings.items()}


def _revision(model: str) -> dict[str, int]:
    """{"model_revision": n} for a model whose architecture was revised (models.REVISIONS), else {}."""
    return {"model_revision": REVISIONS[model]} if model in REVISIONS else {}


# Settings added after results were first stored, with the value every earlier result had; an experiment's
# settings at their defaults, so that adding one changes no stored id.
_LATER_SETTINGS = {
    "precision": "fp32",
    "compile": False,
    "schedule": "target",
    "perturbations": ("blur",),
    "levels": (),
    "probabilities": (),
    "adversarial": "none",
    "adversarial_epsilon": 0.1,
    "adversarial_steps": 7,
    "augment": "none",
    **{f.name: f.default for group in GROUPS for f in fields(group.settings)},
}


def _identity(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a digest covers, each as its declared type: a later setting at its earlier value is left
    out, so results stored before it existed keep their ids and folders."""
    return {
        name: value
        for name, value in _canonical(settings).items()
        if name not in _LATER_SETTINGS or value != _LATER_SETTINGS[name]
    }


def _digest(settings: dict[str, Any]) -> str:
    canonical = json.dumps(_canonical(settings), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop: every stage runs, nothing is meant to reach the target; one seed, so its verdict
    # carries no weight.
    "smoke": dict(
        width=4,
        train_size=500,
        test_size=500,
        rates=(0.0, 0.02, 0.1),
        seeds=(0,),
        sigmas=sigma_grid(0, 3, 0.5),
        max_epochs=2,
        batch_size=100,
        schedule="target",
    ),
    # Real MNIST, all nine rates, three seeds, a narrow ResNet-18 over the full schedule; under 20 minutes
    # on a 2-core CPU (README, "Measurements").
    "quick": dict(
        width=16,
        train_size=6000,
        test_size=2000,
        sigmas=sigma_grid(0, 5, 0.25),
        # The attacks' grids as coarse as blur's here (0.05 where the defaults step 0.02): PGD's search is
        # most of the probe's cost on a CPU (README, "Perturbations and adversarial training").
        levels=("fgsm=0:0.3:0.05", "pgd=0:0.3:0.05"),
        max_epochs=20,
        batch_size=256,
    ),
    # PROTOCOL.md at full scale: full MNIST, ResNet-18 width 64, three seeds, sigma 0 to 5 in steps of 0.1.
    "paper": {},
    # The paper's data size on a CPU: all 60000 training and 10000 test images, the paper's sigma grid and
    # 40-epoch schedule, three seeds, the rates around the claimed change (1.25 % to 1.43 %) and the control,
    # at width 16, the smallest width measured to fit 2 % of mislabels in 40 epochs (width 8 does not; README,
    # "Presets"). Five non-zero rates: the fewest with which the transition tests separate a step from a
    # quadratic trend (across_rates.MIN_RATES). Hours on a 2-core CPU; resumable.
    "full-cpu": dict(
        width=16,
        rates=(0.0, 1 / 100, 1 / 90, 1 / 80, 1 / 70, 1 / 50),
        batch_size=256,
    ),
}
PRESETS |= {name: dict(settings) for group in GROUPS for name, settings in group.presets.items()}


def resolve(*, preset: str, overrides: dict[str, Any]) -> StudyConfig:
    """The preset's settings with every non-None override applied, each as its declared type, validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in fields(StudyConfig)}
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}")
    chosen = {name: value for name, value in overrides.items() if value is not None}
    settings = {name: canonical_setting(name, value) for name, value in {**PRESETS[preset], **chosen}.items()}
    settings["levels"] = _preset_levels(PRESETS[preset].get("levels", ()), settings)
    return replace(StudyConfig(), **settings).validate()


def _preset_levels(preset: tuple[str, ...], settings: dict[str, Any]) -> tuple[str, ...]:
    """The --levels of a study: its own entries, then the preset's grids of the other perturbations it
    probes (a preset's grid of a perturbation not probed is not a setting of the study)."""
    given = tuple(text for text in settings.get("levels", ()) if text not in preset)
    named = {level_grid(text)[0] for text in given}
    probed = settings.get("perturbations", StudyConfig.perturbations)
    kept = [text for text in preset if level_grid(text)[0] in probed and level_grid(text)[0] not in named]
    return given + tuple(kept)
