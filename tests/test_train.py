import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import overparam.train
from overparam.config import RunConfig
from overparam.models import build_model, predict
from overparam.store.files import load_checked
from overparam.train import TrainingData, train

RUN = RunConfig(
    dataset="mnist", model="mlp", width=8, train_size=300, test_size=100, rate=0.1, seed=0, max_epochs=30,
    target_acc=0.99, batch_size=50, lr=1e-3, sigmas=(0.0,),
)  # fmt: skip


def synthetic_data() -> TrainingData:
    """Noisy class templates; 43 of 300 training labels replaced by the next class."""
    generator = torch.Generator().manual_seed(0)
    templates = torch.randint(0, 256, (10, 28, 28), generator=generator)
    labels = torch.arange(400) % 10
    noise = torch.randint(-150, 150, (400, 28, 28), generator=generator)
    images = (templates[labels] + noise).clamp(0, 255).to(torch.uint8)
    assigned = labels[:300].clone()
    mislabelled = torch.zeros(300, dtype=torch.bool)
    mislabelled[::7] = True
    assigned[mislabelled] = (assigned[mislabelled] + 1) % 10
    return TrainingData(
        images=images[:300], assigned_labels=assigned, mislabelled=mislabelled,
        test_images=images[300:], test_labels=labels[300:],
    )  # fmt: skip


def new_model() -> torch.nn.Module:
    torch.manual_seed(RUN.seed)
    return build_model(name=RUN.model, width=RUN.width, mean=0.5, std=0.3)


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def train_until_killed(
    *, data: TrainingData, run: RunConfig, checkpoint: Path, epochs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train with checkpoints and be killed during epoch `epochs` + 1, after `epochs` checkpoints."""
    real_evaluate = overparam.train.evaluate
    calls = {"n": 0}

    def evaluate_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epochs + 1:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(overparam.train, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(model=new_model(), data=data, run=run, checkpoint=checkpoint, progress=False)
    monkeypatch.setattr(overparam.train, "evaluate", real_evaluate)
    assert load_checked(checkpoint)["metrics"][-1]["epoch"] == epochs


def test_stops_at_the_first_epoch_that_reaches_the_target() -> None:
    data = synthetic_data()
    model = new_model()
    result = train(model=model, data=data, run=RUN, progress=False)
    rows = result.metrics
    assert rows[-1]["train_acc"] >= RUN.target_acc
    assert all(row["train_acc"] < RUN.target_acc for row in rows[:-1])
    assert len(rows) < RUN.max_epochs
    assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1))
    predictions = predict(model, data.images, batch_size=64)
    assert torch.equal(result.final.train_predictions, predictions)  # the probe's sigma 0
    assert torch.equal(result.final.test_predictions, predict(model, data.test_images, batch_size=64))
    correct = predictions == data.assigned_labels
    assert rows[-1]["train_acc"] == pytest.approx(correct.float().mean().item())
    assert rows[-1]["mislabelled_train_acc"] == pytest.approx(correct[data.mislabelled].float().mean().item())
    test_acc = (predict(model, data.test_images, batch_size=64) == data.test_labels).float().mean().item()
    assert rows[-1]["test_acc"] == pytest.approx(test_acc)


def test_a_run_that_misses_the_target_ends_at_the_epoch_budget() -> None:
    rows = train(
        model=new_model(),
        data=synthetic_data(),
        run=replace(RUN, max_epochs=2, target_acc=1.0),
        progress=False,
    ).metrics
    assert len(rows) == 2 and rows[-1]["train_acc"] < 1.0


def test_no_mislabelled_images_gives_nan_subset_accuracy() -> None:
    data = synthetic_data()
    clean = replace(data, mislabelled=torch.zeros_like(data.mislabelled))
    rows = train(model=new_model(), data=clean, run=replace(RUN, max_epochs=1), progress=False).metrics
    assert math.isnan(rows[0]["mislabelled_train_acc"])


def test_same_seed_same_result_and_seed_matters() -> None:
    data = synthetic_data()
    first, second = new_model(), new_model()
    rows_first = train(model=first, data=data, run=replace(RUN, max_epochs=3), progress=False).metrics
    rows_second = train(model=second, data=data, run=replace(RUN, max_epochs=3), progress=False).metrics
    assert without_seconds(rows_first) == without_seconds(rows_second)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    other = train(model=new_model(), data=data, run=replace(RUN, max_epochs=3, seed=1), progress=False)
    assert without_seconds(other.metrics) != without_seconds(rows_first)


def test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = synthetic_data()
    reference_model = new_model()
    reference = train(model=reference_model, data=data, run=RUN, progress=False).metrics
    assert len(reference) > 4

    checkpoint = tmp_path / "checkpoint.pt"
    train_until_killed(data=data, run=RUN, checkpoint=checkpoint, epochs=3, monkeypatch=monkeypatch)

    resumed_model = new_model()
    resumed = train(model=resumed_model, data=data, run=RUN, checkpoint=checkpoint, progress=False)
    assert without_seconds(resumed.metrics) == without_seconds(reference)
    again = train(model=new_model(), data=data, run=RUN, checkpoint=checkpoint, progress=False)
    assert again.metrics == resumed.metrics  # finished: nothing trained, the last evaluation restored
    assert torch.equal(again.final.train_predictions, resumed.final.train_predictions)
    for a, b in zip(resumed_model.state_dict().values(), reference_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path: Path) -> None:
    data = synthetic_data()
    checkpoint = tmp_path / "checkpoint.pt"
    train(
        model=new_model(),
        data=data,
        run=replace(RUN, max_epochs=2, lr=1e-3),
        checkpoint=checkpoint,
        progress=False,
    )
    rows = train(
        model=new_model(), data=data, run=replace(RUN, max_epochs=2), checkpoint=checkpoint, progress=False
    ).metrics
    fresh = train(model=new_model(), data=data, run=replace(RUN, max_epochs=2), progress=False).metrics
    assert without_seconds(rows) == without_seconds(fresh)
