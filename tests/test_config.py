from dataclasses import replace

import pytest

from overparam.config import (
    PRESETS,
    PROTOCOL_RATES,
    ConfigError,
    StudyConfig,
    parse_rate,
    parse_sigmas,
    resolve,
    sigma_grid,
)


def test_paper_preset_is_the_protocol_at_full_scale() -> None:
    paper = resolve(preset="paper", overrides={})
    assert (paper.dataset, paper.model, paper.width, paper.train_size) == ("mnist", "resnet18", 64, 60000)
    assert paper.rates == PROTOCOL_RATES and len(paper.rates) == 9
    assert paper.sigmas == tuple(round(0.1 * i, 6) for i in range(51))
    assert (paper.target_acc, paper.max_epochs) == (0.999, 40)


def test_every_preset_resolves_and_overrides_win() -> None:
    for preset in PRESETS:
        assert resolve(preset=preset, overrides={}).validate()
    quick = resolve(preset="quick", overrides={"width": 8, "seeds": (1, 2), "lr": None})
    assert quick.width == 8 and quick.seeds == (1, 2)
    assert quick.lr == StudyConfig().lr  # None means "not given"
    assert len(quick.rates) == 9


@pytest.mark.parametrize(("text", "value"), [("0.01", 0.01), ("1/90", 1 / 90), ("1.25%", 0.0125), ("0", 0.0)])
def test_rates_are_read_as_fractions_or_percentages(text: str, value: float) -> None:
    assert parse_rate(text) == pytest.approx(value, abs=1e-15)


@pytest.mark.parametrize("text", ["abc", "1/0", ""])
def test_unreadable_rates_are_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="rate"):
        parse_rate(text)


def test_sigma_grids() -> None:
    assert sigma_grid(0, 1, 0.25) == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert parse_sigmas("0:5:0.1")[-1] == 5.0 and len(parse_sigmas("0:5:0.1")) == 51
    assert parse_sigmas("0.3") == (0.3,)
    with pytest.raises(ConfigError):
        parse_sigmas("0:5:0")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rates": (0.0, 1.2)}, "outside"),
        ({"rates": (0.01, 0.01)}, "repeated"),
        ({"sigmas": (0.5, 1.0)}, "start at 0"),
        ({"sigmas": (0.0, 1.0, 0.5)}, "increase"),
        ({"width": 0}, "--width"),
        ({"target_acc": 1.5}, "--target-acc"),
        ({"lr": 0.0}, "--lr"),
        ({"seeds": ()}, "at least one"),
        ({"clean_sample": -1}, "--clean-sample"),
        ({"precision": "fp16"}, "--precision must be one of fp32, bf16"),
        ({"model": "vgg"}, "--model must be one of"),
        ({"compile": "no"}, "--compile must be true or false"),
    ],
)
def test_invalid_settings_are_named(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        replace(StudyConfig(), **change).validate()


def test_training_settings_recorded_before_a_later_setting_still_match() -> None:
    run = StudyConfig().runs()[0]
    before = {name: value for name, value in run.training().items() if name not in ("precision", "compile")}
    assert run.trains_as(before) and run.trains_as(run.training())
    assert not run.trains_as({**before, "lr": 1e-3})
    assert not replace(run, compile=True).trains_as(before)


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="smoke, quick, paper"):
        resolve(preset="huge", overrides={})


def test_run_identity_depends_on_results_not_on_paths_or_device() -> None:
    base = StudyConfig()
    elsewhere = replace(base, out="/elsewhere", device="cpu", data_dir="/data", download=False)
    assert base.study_id() == elsewhere.study_id()
    assert [r.run_id() for r in base.runs()] == [r.run_id() for r in elsewhere.runs()]
    assert base.study_id() != replace(base, width=32).study_id()
    assert base.study_id() != replace(base, compile=True).study_id()
    assert base.study_id() != replace(base, precision="bf16").study_id()
    first = base.runs()[0]
    assert first.run_id() != replace(first, lr=1e-3).run_id()
    assert first.run_id() == replace(first, sigmas=(0.0, 1.0)).run_id()  # the probe grid doesn't retrain
    assert first.run_id() == replace(first, clean_sample=100).run_id()
    assert first.probe_id() != replace(first, clean_sample=100).probe_id()
    assert first.probe_id() != replace(first, sigmas=(0.0, 1.0)).probe_id()
    assert len({r.run_id() for r in base.runs()}) == len(base.rates) * len(base.seeds)


def test_a_presets_attack_grids_apply_only_to_the_perturbations_probed() -> None:
    assert resolve(preset="quick", overrides={}).levels == ()  # blur alone: the study is as before
    probed = resolve(preset="quick", overrides={"perturbations": ("blur", "pgd")})
    assert probed.levels == ("pgd=0:0.3:0.05",)
    assert probed.runs()[0].levels_of("pgd") == (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
    mine = resolve(preset="quick", overrides={"perturbations": ("pgd", "fgsm"), "levels": ("pgd=0,0.1",)})
    assert mine.levels == ("pgd=0,0.1", "fgsm=0:0.3:0.05")  # the user's grid wins; the preset fills in
    paper = resolve(preset="paper", overrides={"perturbations": ("pgd",)})
    assert paper.runs()[0].levels_of("pgd")[1] == 0.02  # the paper preset keeps the default grid
