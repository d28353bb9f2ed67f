import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from overparam.experiments.label_errors.dynamics import area_under_margin, forgetting_events
from overparam.experiments.label_errors.judge import _auroc_and_ap, bootstrap_detection, detection, ranks


def test_area_under_margin_is_the_mean_over_epochs() -> None:
    margins = np.array([[1.0, -2.0, 0.0], [3.0, -1.0, 0.0]])
    np.testing.assert_array_equal(area_under_margin(margins), [2.0, -1.5, 0.0])


def test_forgetting_events_by_hand() -> None:
    # Columns: always correct; correct, wrong, correct, wrong; never correct; wrong then correct.
    correct = np.array(
        [
            [True, True, False, False],
            [True, False, False, False],
            [True, True, False, True],
            [True, False, False, True],
        ]
    )
    np.testing.assert_array_equal(forgetting_events(correct), [0.0, 2.0, np.inf, 0.0])


@pytest.mark.parametrize("function", [area_under_margin, forgetting_events])
def test_dynamics_need_epochs_by_images(function) -> None:
    with pytest.raises(ValueError, match=r"\(3,\)"):
        function(np.ones(3, dtype=bool))


def test_perfect_and_reversed_scores() -> None:
    mislabelled = np.array([False, True, False, True, False, False])
    perfect = detection(score=mislabelled.astype(float), mislabelled=mislabelled)
    assert perfect == {
        "auroc": 1.0,
        "average_precision": 1.0,
        "precision_at_k": 1.0,
        "recall_at_k": 1.0,
        "k": 2,
        "n": 6,
    }
    reversed_ = detection(score=-mislabelled.astype(float), mislabelled=mislabelled)
    assert reversed_["auroc"] == 0.0 and reversed_["precision_at_k"] == 0.0


def test_small_case_by_hand() -> None:
    score = np.array([0.9, 0.2, 0.6, 0.4, 0.4])
    mislabelled = np.array([True, False, False, True, False])
    # Mislabelled-clean pairs: 0.9 beats 0.2, 0.6 and 0.4 (3); 0.4 beats 0.2 (1), loses to 0.6 (0) and ties
    # 0.4 (1/2): AUROC = 4.5 / 6 = 0.75.
    # Thresholds 0.9: precision 1/1 at recall 1/2; 0.6: recall unchanged; 0.4: precision 2/4 at recall 2/2:
    # AP = 1/2 * 1 + 1/2 * 1/2 = 0.75.
    # Top k = 2: images 0 (0.9) and 2 (0.6), one mislabelled: precision and recall at k = 1/2.
    result = detection(score=score, mislabelled=mislabelled)
    assert result["auroc"] == pytest.approx(0.75)
    assert result["average_precision"] == pytest.approx(0.75)
    assert result["precision_at_k"] == result["recall_at_k"] == 0.5
    assert (result["k"], result["n"]) == (2, 5)


def test_ties_at_the_cut_go_in_the_given_order() -> None:
    score = np.array([1.0, 1.0, 0.0])
    assert detection(score=score, mislabelled=np.array([True, False, False]))["precision_at_k"] == 1.0
    assert detection(score=score, mislabelled=np.array([False, True, False]))["precision_at_k"] == 0.0


def test_infinities_rank_at_the_ends() -> None:
    mislabelled = np.array([True, False, True, False, False])
    score = np.array([np.inf, 0.3, 0.1, -np.inf, 0.5])
    np.testing.assert_array_equal(ranks(score), [5, 3, 2, 1, 4])
    finite = np.where(np.isposinf(score), 1e9, np.where(np.isneginf(score), -1e9, score))
    assert detection(score=score, mislabelled=mislabelled) == detection(score=finite, mislabelled=mislabelled)


def test_nan_and_one_class_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        detection(score=np.array([0.1, np.nan]), mislabelled=np.array([True, False]))
    with pytest.raises(ValueError, match="mislabelled and clean"):
        detection(score=np.array([0.1, 0.2]), mislabelled=np.array([False, False]))
    with pytest.raises(ValueError, match="mislabelled and clean"):
        bootstrap_detection(score=np.array([0.1, 0.2]), mislabelled=np.array([True, True]))


def test_resample_statistics_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    mislabelled = rng.random(200) < 0.2
    score = np.round(rng.normal(size=200) + mislabelled, 1)  # rounded, so with ties
    _, level = np.unique(-score, return_inverse=True)
    for _ in range(5):
        drawn = np.concatenate(
            [rng.choice(np.flatnonzero(m), size=m.sum()) for m in (mislabelled, ~mislabelled)]
        )
        counts = [
            np.bincount(level[drawn[m[drawn]]], minlength=level.max() + 1)[None]
            for m in (mislabelled, ~mislabelled)
        ]
        auroc, ap = _auroc_and_ap(*counts)
        assert auroc[0] == pytest.approx(roc_auc_score(mislabelled[drawn], score[drawn]))
        assert ap[0] == pytest.approx(average_precision_score(mislabelled[drawn], score[drawn]))


def test_bootstrap_intervals() -> None:
    rng = np.random.default_rng(0)
    mislabelled = rng.random(300) < 0.1
    score = rng.normal(size=300) + 1.5 * mislabelled
    point = detection(score=score, mislabelled=mislabelled)
    intervals = bootstrap_detection(score=score, mislabelled=mislabelled, n_resamples=500, seed=3)
    for name, (low, high) in intervals.items():
        assert low < point[name] < high
    assert intervals == bootstrap_detection(score=score, mislabelled=mislabelled, n_resamples=500, seed=3)
    perfect = bootstrap_detection(score=mislabelled.astype(float), mislabelled=mislabelled, n_resamples=50)
    assert perfect == {"auroc": (1.0, 1.0), "average_precision": (1.0, 1.0)}
