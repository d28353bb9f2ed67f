"""Label-error scores in a study: recorded training dynamics, K-fold and random-subset models as steps,
cleanlab on the out-of-sample probabilities, the scores table, its judgement and its cost, and a second
study that trains nothing."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cleanlab.rank import get_label_quality_scores

from overparam.cli import main
from overparam.config import resolve
from overparam.execution import TrainStep, execute
from overparam.experiments.label_errors.dynamics import area_under_margin, forgetting_events
from overparam.experiments.label_errors.scores import LabelScores, suspicion
from overparam.store.files import read_json, read_verified
from overparam.store.steps import RunOptions, step_finished
from overparam.subsets import SubsetTraining, fold_of, sample_of

SETTINGS = {"train_size": 300, "test_size": 100, "rates": (0.1,), "max_epochs": 3, "sigmas": (0.0, 1.0, 2.0)}
SCORES = {"label_scores": ("probe", "dynamics", "cleanlab", "memorisation"), "folds": 2}
SCORES |= {"memorisation_models": 2, "memorisation_fraction": 0.5}


@pytest.fixture(scope="module")
def scored(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """One tiny run at 10 % mislabels with every score, in its own store."""
    store = tmp_path_factory.mktemp("label-store")
    run = resolve(preset="smoke", overrides={**SETTINGS, **SCORES, "data_dir": str(data_root)}).runs()[0]
    assert (
        execute(run, RunOptions(store=str(store), data_dir=str(data_root), download=False)).status == "done"
    )
    return run, store


def scores_of(run, store: Path) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(read_verified(LabelScores(run).record(store), "scores.csv")))


def test_folds_are_stratified_and_samples_keyed() -> None:
    labels = np.repeat(np.arange(10), 30)
    fold = fold_of(labels, folds=3, key=("k",))
    assert np.array_equal(fold, fold_of(labels, folds=3, key=("k",)))
    for label in range(10):
        assert np.bincount(fold[labels == label], minlength=3).tolist() == [10, 10, 10]
    inside = sample_of(300, number=1, fraction=0.5, key=("k",))
    assert inside.sum() == 150 and not np.array_equal(
        inside, sample_of(300, number=2, fraction=0.5, key=("k",))
    )


def test_training_records_each_images_margin_and_prediction_every_epoch(scored) -> None:
    run, store = scored
    record = TrainStep(run).record(store)
    with np.load(io.BytesIO(read_verified(record, "dynamics.npz"))) as dynamics:
        margins, predictions = dynamics["margins"], dynamics["predictions"]
    epochs = read_json(record)["result"]["epochs"]
    assert margins.shape == predictions.shape == (epochs, 300)
    assigned = pd.read_csv(store / run.run_id() / "mislabels.csv")  # the mislabelled ones' assigned labels
    table = scores_of(run, store)
    positive = margins > 0  # the assigned label's logit beat every other: predicted the assigned label
    assert np.array_equal(positive, predictions == table["assigned_label"].to_numpy()[None, :])
    assert len(assigned) == table["mislabelled"].sum() == 30
    np.testing.assert_allclose(table["aum"], area_under_margin(margins), rtol=1e-6)
    np.testing.assert_array_equal(table["forgetting"], forgetting_events(positive))


def test_cleanlab_reads_each_image_from_the_fold_that_did_not_train_on_it(scored) -> None:
    run, store = scored
    table = scores_of(run, store)
    held_out = np.zeros((300, 10), dtype=np.float32)
    for part in range(2):
        step = SubsetTraining(run, "fold", part, 2)
        with np.load(io.BytesIO(read_verified(step.record(store), "subset.npz"))) as saved:
            assert abs(int(saved["inside"].sum()) - 150) <= 10  # each class halved, within one image
            held_out[~saved["inside"]] = saved["probabilities"][~saved["inside"]]
    held_out /= held_out.sum(axis=1, keepdims=True)
    labels = table["assigned_label"].to_numpy()
    expected = get_label_quality_scores(labels=labels, pred_probs=held_out)
    np.testing.assert_allclose(table["cleanlab_quality"], expected, rtol=1e-6)
    assert np.array_equal(table["suggested_label"], held_out.argmax(axis=1))
    costs = pd.read_csv(io.BytesIO(read_verified(LabelScores(run).record(store), "costs.csv"))).set_index(
        "score"
    )
    assert costs.loc["cleanlab", "trainings"] == 2 and costs.loc["memorisation", "trainings"] == 2
    assert costs.loc["dynamics", "trainings"] == costs.loc["probe", "trainings"] == 0
    assert costs.loc["probe", "probe_passes"] == 3  # blur's three sigmas


def test_memorisation_is_the_accuracy_gap_between_models_that_saw_an_image_and_models_that_did_not(
    scored,
) -> None:
    run, store = scored
    table = scores_of(run, store)
    inside, correct = [], []
    for part in range(2):
        step = SubsetTraining(run, "sample", part, 2, 0.5)
        with np.load(io.BytesIO(read_verified(step.record(store), "subset.npz"))) as saved:
            inside.append(saved["inside"])
            correct.append(saved["probabilities"].argmax(axis=1) == table["assigned_label"].to_numpy())
    inside, correct = np.array(inside), np.array(correct)
    both = inside.any(axis=0) & (~inside).any(axis=0)  # seen by one model and not by the other
    seen = (correct & inside).sum(axis=0)[both]
    unseen = (correct & ~inside).sum(axis=0)[both]
    np.testing.assert_array_equal(table["memorisation"].to_numpy()[both], seen - unseen)
    assert table["memorisation"][~both].isna().all()


def test_scores_point_their_suspicion_the_same_way() -> None:
    frame = pd.DataFrame({"blur_flip_level": [0.5, np.nan], "aum": [-2.0, 3.0], "forgetting": [2.0, 0.0]})
    assert suspicion(frame, "blur_flip_level").tolist() == [-0.5, -np.inf]  # never flipped: least suspicious
    assert suspicion(frame, "aum").tolist() == [2.0, -3.0]
    assert suspicion(frame, "forgetting").tolist() == [2.0, 0.0]


def test_a_study_tables_judges_and_reports_the_scores_and_a_second_one_trains_nothing(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command = ["reproduce", "--preset", "smoke", "--train-size", "300", "--test-size", "100", "--rates", "0"]
    command += [
        "0.1",
        "--max-epochs",
        "2",
        "--sigmas",
        "0",
        "1",
        "2",
        "--label-scores",
        "probe,dynamics,cleanlab",
    ]
    command += ["--folds", "2", "--data-dir", str(data_root), "--store", str(tmp_path / "store")]
    assert main([*command, "--out", str(tmp_path / "out")]) == 0
    scores = pd.read_csv(tmp_path / "out" / "label_scores.csv")
    assert len(scores) == 2 * 300 and set(scores["rate"]) == {0.0, 0.1}
    detection = pd.read_csv(tmp_path / "out" / "analysis" / "label_detection.csv")
    measured = {"blur_flip_level", "margin_at_0", "aum", "forgetting", "cleanlab_quality"}
    assert set(detection["measurement"]) == measured and set(detection["rate"]) == {
        0.1
    }  # rate 0: none to find
    assert (
        (detection["auroc_low"] <= detection["auroc"]) & (detection["auroc"] <= detection["auroc_high"])
    ).all()
    by_rate = pd.read_csv(tmp_path / "out" / "analysis" / "label_detection_by_rate.csv").set_index(
        "measurement"
    )
    assert by_rate.loc["cleanlab_quality", "trainings"] == 2 and by_rate.loc["aum", "trainings"] == 0
    assert "Finding the mislabelled images" in (tmp_path / "out" / "report.html").read_text()

    caplog.clear()
    with caplog.at_level("INFO"):
        assert main([*command, "--out", str(tmp_path / "again")]) == 0
    assert "trained" not in caplog.text
    run = resolve(
        preset="smoke",
        overrides={
            **SETTINGS,
            "rates": (0.1,),
            "max_epochs": 2,
            "label_scores": ("probe", "dynamics", "cleanlab"),
            "folds": 2,
        },
    ).runs()[0]
    assert step_finished(LabelScores(run), tmp_path / "store")
