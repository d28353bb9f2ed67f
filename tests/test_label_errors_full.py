"""`overparam label-errors` on both splits: confident learning on a hand-made probability matrix, the
intervals over seeds, the ranks, K-fold and test-split cross-fitting holding out every image exactly once,
and the command's outputs and refusals."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from overparam.cli import main
from overparam.config import resolve
from overparam.experiments.label_errors import crossfit, known
from overparam.experiments.label_errors.command import preset_of
from overparam.experiments.label_errors.issues import (
    interval_text,
    label_issues,
    seed_table,
    split_table,
    t_interval,
)
from overparam.store.files import read_verified


def known_issues() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 classes x 20 images, confidently predicted as given except images 5, 27 and 48, which the model
    puts confidently in another class: the known label issues."""
    given = np.repeat(np.arange(3), 20)
    probabilities = np.full((60, 3), 0.05)
    probabilities[np.arange(60), given] = 0.9
    wrong = np.array([5, 27, 48])
    probabilities[wrong] = 0.05
    probabilities[wrong, (given[wrong] + 1) % 3] = 0.9
    return given, probabilities, wrong


def test_confident_learning_flags_exactly_the_known_issues_and_counts_them() -> None:
    given, probabilities, wrong = known_issues()
    found = label_issues(given, probabilities)
    assert np.flatnonzero(found["flagged"]).tolist() == wrong.tolist()
    assert np.flatnonzero(found["issue"]).tolist() == wrong.tolist()
    assert found["n_flagged"] == found["n_issues"] == found["estimated"] == 3
    np.testing.assert_allclose(found["self_confidence"][wrong], 0.05)
    np.testing.assert_allclose(found["margin"][wrong], -0.85)
    np.testing.assert_allclose(np.delete(found["margin"], wrong), 0.85)
    assert (found["suggested"][wrong] == (given[wrong] + 1) % 3).all()


def test_a_hard_but_correctly_labelled_image_is_not_flagged() -> None:
    given, probabilities, _ = known_issues()
    probabilities[10] = [0.55, 0.4, 0.05]  # given 0, the model unsure but still for the given label
    found = label_issues(given, probabilities)
    assert not found["flagged"][10] and found["n_flagged"] == 3


def test_t_interval_over_seeds() -> None:
    found = t_interval([0.1, 0.2, 0.3])
    # mean 0.2, sd 0.1, t(0.975, 2) = 4.303: half-width 4.303 * 0.1 / sqrt 3 = 0.2484
    assert found["mean"] == pytest.approx(0.2) and found["seeds"] == 3
    assert found["high"] - found["mean"] == pytest.approx(0.24841, abs=1e-4)
    one = t_interval([0.5])
    assert one["low"] is None and one["high"] is None and one["mean"] == 0.5
    json.dumps(one, allow_nan=False)  # strict JSON: no NaN for the missing interval
    assert interval_text(one, ".1f") == "0.5 (one seed: no interval)"
    assert interval_text(found, ".2f") == "0.20 (95 % interval -0.05 to 0.45 over 3 seeds)"


def test_known_errors_counts_the_listed_images_a_run_checked() -> None:
    listed = known.LISTED["mnist"]
    train_listed = [*listed["train"]["blatant"], *listed["train"]["less blatant"]]
    assert len(train_listed) == 20 and len(listed["test"]["blatant"]) == 8
    rows = [  # three listed training images (flagged in 2/3, 1/3, 3/3 seeds), one unlisted; no test split
        ("train", 43454, 5, 3, 2 / 3, 1.0, 1),
        ("train", 40466, 8, 8, 1 / 3, 0.0, 875),
        ("train", 26940, 6, 8, 1.0, 1 / 3, 38),
        ("train", 5, 2, 2, 1.0, 1.0, 2),
    ]
    suspects = pd.DataFrame(rows, columns=["split", "index", *known.SHOWN])
    table, counts = known.known_errors(suspects, dataset="mnist")
    assert counts == {
        "train": {"listed": 20, "present": 3, "flagged_in_most_seeds": 2, "issue_in_most_seeds": 1}
    }
    assert table["index"].tolist() == [40466, 43454, 26940]  # in the list's order
    assert table["listed_as"].tolist() == ["blatant", "blatant", "less blatant"]
    assert table.columns.tolist() == known.COLUMNS and table["given_label"].tolist() == [8, 5, 6]
    assert table["given_label"].dtype.kind == "i"  # labels stay whole numbers in known_errors.csv
    assert known.known_errors(suspects, dataset="fashion-mnist")[1] == {}


def test_split_table_averages_seeds_and_ranks_the_most_suspicious_first() -> None:
    given, probabilities, _ = known_issues()
    index = np.arange(100, 160)
    aum = np.linspace(1, 2, 60)
    seeds = [seed_table(given, index, probabilities, aum)[0] for _ in range(2)]
    second = probabilities.copy()
    second[48] = [0.05, 0.05, 0.9]  # seed 2 sees image 48 as its given class 2
    seeds[1] = seed_table(given, index, second, aum)[0]
    table = split_table(seeds).set_index("index")
    assert table.loc[105, "flagged_fraction"] == 1 and table.loc[148, "flagged_fraction"] == 0.5
    assert table.loc[105, "suggested_label"] == 1 and table.loc[105, "given_label"] == 0
    assert table.loc[[105, 127], "rank_margin"].tolist() == [1, 1]  # tied most suspicious
    assert table.loc[148, "rank_margin"] == 3 and table.loc[100, "rank_aum"] == 1
    assert (table["seeds"] == 2).all()


SMALL = ["--train-size", "300", "--test-size", "100", "--max-epochs", "1", "--folds", "2"]


def test_label_errors_checks_both_splits_each_image_out_of_sample_once(
    placement: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["label-errors", *SMALL, "--seeds", "0", "1", "--top", "5", *placement]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("train: 300 images") and "\ntest: 100 images" in printed
    out, store = tmp_path / "out", tmp_path / "store"
    overrides = {"train_size": 300, "test_size": 100, "max_epochs": 1, "folds": 2, "seeds": (0, 1)}
    config = resolve(preset="label-errors", overrides={**overrides, "rates": (0.0,)})
    for run in config.runs():
        held_out = np.zeros(100, dtype=int)
        trained_out = np.zeros(300, dtype=int)
        for part in range(2):
            with np.load(
                io.BytesIO(read_verified(crossfit.FoldModel(run, part).record(store), "fold.npz"))
            ) as saved:
                trained_out += ~saved["inside"]
            tuned = crossfit.TestFold(run, part, 1, config.lr / 10).record(store)
            with np.load(io.BytesIO(read_verified(tuned, "test_fold.npz"))) as saved:
                held_out += saved["held"]
                assert np.isnan(saved["aum"][saved["held"]]).all()  # never trained on what it predicts
                assert not np.isnan(saved["aum"][~saved["held"]]).any()
        assert (held_out == 1).all() and (trained_out == 1).all()
        # the test folds start from one model of the whole training split, as Northcutt et al.'s
        pretrained = crossfit.FoldModel(run, crossfit.whole(run))
        assert crossfit.TestFold(run, 0, 1, config.lr / 10).needs() == (pretrained,)
        with np.load(io.BytesIO(read_verified(pretrained.record(store), "fold.npz"))) as saved:
            assert saved["inside"].all() and len(saved["inside"]) == 300
        train = crossfit.train_split(run, store)
        test = crossfit.test_split(run, store, epochs=1, lr=config.lr / 10)
        np.testing.assert_allclose(train.probabilities.sum(axis=1), 1, rtol=1e-5)
        np.testing.assert_allclose(test.probabilities.sum(axis=1), 1, rtol=1e-5)
        assert len(np.unique(test.index)) == 100 and len(np.unique(train.index)) == 300
    suspects = pd.read_csv(out / "suspects.csv")
    # each seed draws its own class-balanced subset: an image's row averages the seeds that drew it
    indices = {name: set() for name in ("train", "test")}
    for run in config.runs():
        indices["train"] |= set(crossfit.train_split(run, store).index.tolist())
        indices["test"] |= set(crossfit.test_split(run, store, epochs=1, lr=config.lr / 10).index.tolist())
    for name, rows in suspects.groupby("split"):
        assert set(rows["index"]) == indices[name] and rows["seeds"].isin([1, 2]).all()
    assert suspects["flagged_fraction"].isin([0, 0.5, 1]).all()
    summary = json.loads((out / "label_errors.json").read_text())
    recorded = summary["settings"]  # every setting that made it, the command line and the environment
    assert (recorded["model"], recorded["augment"], recorded["seeds"], recorded["finetune_epochs"]) == (
        "lenet5",
        "none",
        [0, 1],
        1,
    )
    assert isinstance(summary["command"], list)  # sys.argv: pytest's own here
    assert summary["environment"]["device"] == "cpu" and "torch" in summary["environment"]["versions"]
    for name in ("train", "test"):
        found = summary["splits"][name]
        assert found["wrong_fraction"]["seeds"] == 2 and len(found["per_seed"]) == 2
        assert found["flagged"]["low"] <= found["flagged"]["mean"] <= found["flagged"]["high"]
        rows = suspects[suspects["split"] == name]
        assert found["flagged"]["mean"] == pytest.approx((rows["flagged_fraction"] * rows["seeds"]).sum() / 2)
    for name, count in summary["known_errors"].items():  # MNIST: the errors a person listed, checked
        listed = [i for group in known.LISTED["mnist"][name].values() for i in group]
        assert count["listed"] == len(listed)
        assert count["present"] == len(set(listed) & indices[name])
    checked = pd.read_csv(out / "known_errors.csv")
    assert len(checked) == sum(count["present"] for count in summary["known_errors"].values())
    page = (out / "suspects.html").read_text()
    assert "<h2>train split (300 images)</h2>" in page and "<h2>test split (100 images)</h2>" in page
    # --split train reuses the fold models and writes the training split only
    assert main([*command, "--split", "train"]) == 0
    assert set(pd.read_csv(out / "suspects.csv")["split"]) == {"train"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--split", "validation"], "--split takes train, test or both, got 'validation'"),
        (["--finetune-epochs", "-1"], "--finetune-epochs must be 0 or more"),
        (["--rates", "0.1"], "leave out --rates"),
        (["--top", "0"], "--top must be at least 1"),
    ],
)
def test_label_errors_refuses_bad_settings_in_one_line(
    placement: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["label-errors", *SMALL, *flags, *placement]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "store").exists()  # nothing trained


def test_each_data_set_starts_from_its_stated_model() -> None:
    assert preset_of(preset=None, dataset=None) == "label-errors"
    assert preset_of(preset=None, dataset="mnist") == "label-errors"
    assert preset_of(preset=None, dataset="fashion-mnist") == "label-errors-fashion"
    assert preset_of(preset="lottery", dataset="fashion-mnist") == "lottery"
    fashion = resolve(preset="label-errors-fashion", overrides={})
    assert (fashion.dataset, fashion.model, fashion.width, fashion.augment, fashion.max_epochs) == (
        "fashion-mnist",
        "lenet5",
        2,
        "shift-flip",
        30,
    )
    mnist = resolve(preset="label-errors", overrides={})
    assert (mnist.dataset, mnist.augment, mnist.max_epochs) == ("mnist", "none", 12)
