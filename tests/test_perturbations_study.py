"""Perturbations in a whole study: every registered perturbation probes the same trained models into one set
of tables (a `perturbation` and a `level` column), blur's results and ids are unchanged, stored blur probes
of the older format are read as they are, and a perturbation defined in one file shows up in the tables and
the report with no other edit."""

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from overparam.cli import main
from overparam.config import resolve
from overparam.perturb import PERTURBATIONS, Perturbation, ProbeInputs, register
from overparam.store.files import file_record, read_json, write_json

TINY = ["--preset", "smoke", "--train-size", "200", "--test-size", "100", "--rates", "0", "0.05"]
TINY += ["--max-epochs", "1", "--sigmas", "0", "1", "2"]
LEVELS = ["--levels", "noise=0,0.1,0.3", "fgsm=0,0.05,0.2", "pgd=0,0.05,0.2"]


def reproduce(out: Path, store: Path, data_root: Path, *extra: str) -> pd.DataFrame:
    command = ["reproduce", *TINY, *extra, "--data-dir", str(data_root), "--store", str(store)]
    assert main([*command, "--out", str(out)]) == 0
    return pd.read_csv(out / "curves.csv")


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, Path]:
    """A blur-only study, then the same runs probed under every built-in perturbation (one store)."""
    root = tmp_path_factory.mktemp("perturbations")
    reproduce(root / "blur", root / "store", data_root, "--no-report")
    everything = ["--perturbations", "blur,noise,fgsm,pgd", *LEVELS]
    reproduce(root / "all", root / "store", data_root, *everything)
    return {"blur": root / "blur", "all": root / "all", "store": root / "store"}


def test_every_perturbation_probes_the_same_models_into_one_table(studies: dict[str, Path]) -> None:
    curves = pd.read_csv(studies["all"] / "curves.csv")
    levels = curves.groupby("perturbation")["level"].unique().map(sorted).to_dict()
    assert levels == {
        "blur": [0.0, 1.0, 2.0],
        "noise": [0.0, 0.1, 0.3],
        "fgsm": [0.0, 0.05, 0.2],
        "pgd": [0.0, 0.05, 0.2],
    }
    assert (curves.loc[curves["level"] == 0, "changed"] == 0).all()  # level 0 is the unperturbed image
    flips = pd.read_csv(studies["all"] / "flips.csv")
    at_zero = flips.pivot_table(
        index=["rate", "split", "index"], columns="perturbation", values="prediction_at_0"
    )
    assert (at_zero.nunique(axis=1) == 1).all()  # one level-0 prediction per image, whatever the perturbation
    runs = pd.read_csv(studies["all"] / "runs.csv")
    assert len(runs) == 2  # trained once per rate, probed four times
    # The attack at the larger epsilon flips at least as many as FGSM's (PGD searches; FGSM takes one step).
    test = curves[(curves["group"] == "test") & (curves["level"] == 0.2)].set_index(["rate", "perturbation"])
    for rate in (0.0, 0.05):
        assert test.loc[(rate, "pgd"), "changed"] >= test.loc[(rate, "fgsm"), "changed"]


def test_blur_results_and_ids_are_unchanged_by_other_perturbations(studies: dict[str, Path]) -> None:
    alone, together = (pd.read_csv(studies[name] / "curves.csv") for name in ("blur", "all"))
    together = together[together["perturbation"] == "blur"].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, together)
    config = read_json(studies["all"] / "config.json")["config"]
    run = resolve(preset="smoke", overrides=config).runs()[1]
    blur_only = resolve(
        preset="smoke", overrides={**config, "perturbations": ("blur",), "levels": ()}
    ).runs()[1]
    assert run.run_id() == blur_only.run_id() and run.probe_id("blur") == blur_only.probe_id()
    assert len(set(run.probe_ids().values())) == 4


def test_the_probe_keeps_each_images_probabilities_at_level_0(studies: dict[str, Path]) -> None:
    for probe in studies["store"].glob("*/probe-*/predictions.npz"):
        with np.load(probe) as saved:
            for split in ("train", "test"):
                probabilities = saved[f"{split}_probabilities"]
                assert probabilities.dtype == np.float16 and probabilities.shape[0] == 1
                assert np.allclose(probabilities[0].astype(np.float32).sum(axis=1), 1, atol=1e-2)
                chosen = np.take_along_axis(probabilities[0], saved[split][0][:, None].astype(int), axis=1)
                assert np.array_equal(chosen[:, 0], probabilities[0].max(axis=1))  # fp16 may tie the top two


def test_the_probe_keeps_probabilities_at_chosen_levels_that_agree_with_its_predictions(
    studies: dict[str, Path], data_root: Path, tmp_path: Path
) -> None:
    chosen = ["--perturbations", "blur,noise", "--levels", "noise=0,0.1,0.3"]
    chosen += ["--probabilities", "blur=1,2", "noise=0.3"]
    reproduce(tmp_path / "out", studies["store"], data_root, *chosen, "--no-report")
    config = read_json(tmp_path / "out" / "config.json")["config"]
    run = resolve(preset="smoke", overrides=config).runs()[1]
    for perturbation, kept in (("blur", [0.0, 1.0, 2.0]), ("noise", [0.0, 0.3])):
        with np.load(
            studies["store"] / run.run_id() / run.probe_id(perturbation) / "predictions.npz"
        ) as saved:
            assert saved["probability_levels"].tolist() == kept
            for split in ("train", "test"):
                probabilities = saved[f"{split}_probabilities"]
                assert probabilities.shape == (len(kept), saved[split].shape[1], 10)
                for row, level in enumerate(kept):
                    predicted = saved[split][saved["levels"].tolist().index(level)]
                    top = np.take_along_axis(probabilities[row], predicted[:, None].astype(int), axis=1)[:, 0]
                    assert np.array_equal(top, probabilities[row].max(axis=1))  # fp16 may tie the top two
    plain = resolve(preset="smoke", overrides={**config, "probabilities": ()}).runs()[1]
    assert plain.probe_id("blur") != run.probe_id("blur")  # probes that keep more are other probes
    assert main(["reproduce", *TINY, "--probabilities", "blur=1.5", "--data-dir", str(data_root)]) == 2


def test_a_blur_probe_stored_in_the_older_format_is_read_as_blur(
    studies: dict[str, Path], data_root: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    reproduce(tmp_path / "new", store, data_root, "--no-report")
    for record_path in store.glob("*/probe-*/probe.json"):  # as written before perturbations existed
        folder = record_path.parent
        for name, renamed in (
            ("curves.csv", {"level": "sigma"}),
            ("flips.csv", {"flip_level": "flip_sigma"}),
        ):
            table = (
                pd.read_csv(folder / name).drop(columns=["perturbation", "probe_id"]).rename(columns=renamed)
            )
            table.to_csv(folder / name, index=False)
        with np.load(folder / "predictions.npz") as saved:
            arrays = {("sigmas" if key == "levels" else key): saved[key] for key in saved.files}
        np.savez_compressed(folder / "predictions.npz", **arrays)
        record = read_json(record_path)
        files = [folder / name for name in record["files"]]
        write_json({**record, **file_record(files)}, record_path)
    old = reproduce(tmp_path / "old", store, data_root)
    pd.testing.assert_frame_equal(old, pd.read_csv(tmp_path / "new" / "curves.csv"))
    assert (tmp_path / "old" / "report.html").exists()


class Brightness(Perturbation):
    """Adds the level to every pixel: a perturbation defined in one place, registered by name."""

    name = "brightness"
    level_name = "added brightness (pixel units)"
    default_levels = (0.0, 0.25, 0.5)

    def perturb(self, images: torch.Tensor, level: float, inputs: ProbeInputs) -> torch.Tensor:
        return (images + level).clamp(0, 1)


@pytest.fixture
def brightness() -> Iterator[None]:
    register(Brightness)
    yield
    PERTURBATIONS.pop("brightness")


@pytest.mark.usefixtures("brightness")
def test_a_new_perturbation_reaches_the_tables_and_the_report(
    studies: dict[str, Path], data_root: Path, tmp_path: Path
) -> None:
    curves = reproduce(tmp_path / "out", studies["store"], data_root, "--perturbations", "blur,brightness")
    assert sorted(curves.loc[curves["perturbation"] == "brightness", "level"].unique()) == [0.0, 0.25, 0.5]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "added brightness (pixel units)" in page
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "### Verdict: brightness" in summary
    record = json.loads(io.StringIO((tmp_path / "out" / "config.json").read_text()).read())
    assert record["config"]["perturbations"] == ["blur", "brightness"]


def test_test_accuracy_under_attack_is_tabled_per_run(studies: dict[str, Path]) -> None:
    table = pd.read_csv(studies["all"] / "analysis" / "robustness.csv")
    assert set(table["perturbation"]) == {"fgsm", "pgd"} and (table["adversarial"] == "none").all()
    at_zero = table[table["level"] == 0]
    assert np.allclose(at_zero["robust_test_acc"], at_zero["clean_test_acc"])  # level 0 is no attack
    assert "Standard vs adversarially trained models" in (studies["all"] / "report.html").read_text()


SWEEP = """
preset = "smoke"
out = "{out}"

[settings]
train_size = 200
test_size = 100
rates = [0, 0.05]
max_epochs = 1
sigmas = [0, 1]
perturbations = ["blur", "pgd"]
levels = ["pgd=0,0.1"]
adversarial_epsilon = 0.1
adversarial_steps = 2

[grid]
adversarial = ["none", "pgd"]
"""


def test_a_sweep_compares_standard_and_adversarially_trained_models(data_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "robust.toml"
    path.write_text(SWEEP.format(out=tmp_path / "out"))
    command = ["sweep", str(path), "--data-dir", str(data_root), "--store", str(tmp_path / "store")]
    assert main(command) == 0
    table = pd.read_csv(tmp_path / "out" / "analysis" / "robustness.csv")
    assert set(table["adversarial"]) == {"none", "pgd"} and set(table["variant"]) == {
        "adversarial=none",
        "adversarial=pgd",
    }
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert runs.groupby("adversarial")["run_id"].nunique().tolist() == [2, 2]  # different models
    for perturbation in ("blur", "pgd"):  # the curves of both trainings, a row each, in one figure
        assert (tmp_path / "out" / "figures" / f"trainings-{perturbation}.png").exists()
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Standard vs adversarially trained models" in report and "a row per training" in report


def test_a_bf16_probe_is_checked_against_fp32_with_the_same_keyed_noise(
    data_root: Path, tmp_path: Path
) -> None:
    extra = [
        "--perturbations",
        "blur,noise",
        "--levels",
        "noise=0,0.5,1",
        "--precision",
        "bf16",
        "--no-report",
    ]
    reproduce(tmp_path / "out", tmp_path / "store", data_root, *extra)
    checks = {
        read_json(path)["perturbation"]: read_json(path)["fp32_check"]
        for path in (tmp_path / "store").glob("*/probe-*/probe.json")
    }
    # keyed by each image's position in the subset instead of its original index, the check drew other
    # noise and agreed far less
    assert checks["noise"]["agreement"] >= 0.95 and checks["blur"]["agreement"] >= 0.95, checks
