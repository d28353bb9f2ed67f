"""Lottery tickets: training from and to any iteration (rewinding), the callbacks that keep a mask and grow
a penalty, random masks, the ticket steps of a study, and the analysis of what the tickets fit."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import RUN, new_model, synthetic_data

from overparam.cli import main
from overparam.config import ConfigError, resolve
from overparam.experiments.lottery import summary
from overparam.experiments.lottery.masks import (
    full_mask,
    imp_remaining,
    layerwise_random_mask,
    magnitude_mask,
    prunable,
    remaining,
    uniform_random_mask,
)
from overparam.experiments.lottery.training import GrowingPenalty, KeepMask
from overparam.store.files import load_checked
from overparam.train import Callback, train

SHORT = replace(RUN, max_epochs=3, schedule="full")  # 6 iterations per epoch, 18 in all


class Snapshot(Callback):
    """The weights after iteration `at`, and every iteration seen."""

    def __init__(self, at: int) -> None:
        self.at, self.weights, self.seen = at, None, []

    def after_update(self, model: torch.nn.Module, iteration: int) -> None:
        self.seen.append(iteration)
        if iteration == self.at:
            self.weights = {name: value.clone() for name, value in model.state_dict().items()}


def test_stopping_at_an_iteration_gives_the_full_trainings_weights_there() -> None:
    snapshot = Snapshot(at=8)
    train(model=new_model(), data=synthetic_data(), run=SHORT, progress=False, callbacks=(snapshot,))
    assert snapshot.seen == list(range(18))
    stopped = new_model()
    result = train(model=stopped, data=synthetic_data(), run=SHORT, progress=False, stop=9)
    assert [row["iterations"] for row in result.metrics] == [6, 9]  # a partial second epoch, evaluated
    assert all(torch.equal(stopped.state_dict()[name], value) for name, value in snapshot.weights.items())


class Interrupt(Callback):
    def after_update(self, model: torch.nn.Module, iteration: int) -> None:
        if iteration == 9:
            raise KeyboardInterrupt


def test_a_training_started_at_an_iteration_trains_the_rest_of_the_schedule(tmp_path: Path) -> None:
    snapshot = Snapshot(at=-1)
    late_model = new_model()
    data = synthetic_data()
    late = train(model=late_model, data=data, run=SHORT, progress=False, callbacks=(snapshot,), start=4)
    whole = train(model=new_model(), data=data, run=SHORT, progress=False)
    assert snapshot.seen == list(range(4, 18))
    assert [row["iterations"] for row in late.metrics] == [6, 12, 18]
    assert late.metrics[-1]["lr"] == whole.metrics[-1]["lr"]  # the same schedule, entered at iteration 4
    assert int(torch.isnan(late.dynamics.margins[0]).sum()) == 4 * 50  # the batches epoch 1 skipped
    checkpoint, resumed = tmp_path / "checkpoint.pt", new_model()
    with pytest.raises(KeyboardInterrupt):  # killed in epoch 2, after epoch 1's checkpoint
        train(
            model=resumed,
            data=data,
            run=SHORT,
            progress=False,
            callbacks=(Interrupt(),),
            start=4,
            checkpoint=checkpoint,
        )
    train(model=resumed, data=data, run=SHORT, progress=False, start=4, checkpoint=checkpoint)
    assert all(torch.equal(resumed.state_dict()[n], v) for n, v in late_model.state_dict().items())
    with pytest.raises(ValueError, match="not within"):
        train(model=new_model(), data=data, run=SHORT, progress=False, start=18)


def test_keep_mask_holds_the_pruned_weights_at_zero_while_the_rest_train() -> None:
    model = new_model()
    mask = magnitude_mask(model, fraction=0.7)
    before = {name: weight.detach().clone() for name, weight in prunable(model).items()}
    train(model=model, data=synthetic_data(), run=SHORT, progress=False, callbacks=(KeepMask(mask),))
    for name, weight in prunable(model).items():
        assert (weight[~mask[name]] == 0).all()
        assert not torch.equal(weight[mask[name]], before[name][mask[name]])


def test_the_growing_penalty_steps_up_to_its_ceiling_and_pulls_only_weights_outside_the_mask() -> None:
    model = new_model()
    mask = {
        name: torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) < 0.5
        for name, weight in prunable(model).items()
    }
    penalty = GrowingPenalty(mask=mask, increment=0.1, interval=2, ceiling=0.35)
    assert [penalty.coefficient(i) for i in range(8)] == pytest.approx(
        [0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.35, 0.35]
    )
    assert penalty.iterations() == 8
    for weight in prunable(model).values():
        weight.grad = torch.ones_like(weight)
    penalty.before_update(model, 4)  # lambda 0.3
    for name, weight in prunable(model).items():
        expected = 1 + 0.3 * weight.detach() * (~mask[name])
        assert torch.allclose(weight.grad, expected)
    assert GrowingPenalty(mask=mask, increment=1e-4, interval=5, ceiling=1.0).iterations() == 50000


def test_random_masks_keep_the_layer_counts_they_promise() -> None:
    model = new_model()
    ticket = magnitude_mask(model, fraction=0.6)
    shuffled = layerwise_random_mask(ticket, generator=torch.Generator().manual_seed(0))
    assert all(int(shuffled[n].sum()) == int(ticket[n].sum()) for n in ticket)
    assert any(not torch.equal(shuffled[n], ticket[n]) for n in ticket)
    again = layerwise_random_mask(ticket, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(again[n], shuffled[n]) for n in ticket)  # keyed: reproducible
    uniform = uniform_random_mask(model, keep=0.3, generator=torch.Generator().manual_seed(0))
    assert all(int(uniform[n].sum()) == round(0.3 * w.numel()) for n, w in prunable(model).items())


def test_the_remaining_fraction_of_a_round_is_known_before_training() -> None:
    model, mask = new_model(), None
    for rounds in range(1, 5):
        mask = magnitude_mask(model, fraction=0.4, mask=mask or full_mask(model))
        assert imp_remaining(model, fraction=0.4, rounds=rounds) == remaining(mask)


def test_lottery_settings_leave_the_dense_run_alone_and_refuse_what_cannot_work() -> None:
    plain = resolve(preset="smoke", overrides={}).runs()[0]
    lottery = resolve(preset="smoke", overrides={"lottery_rounds": 3, "dual_increment": 0.1}).runs()[0]
    assert plain.run_id() == lottery.run_id()
    with pytest.raises(ConfigError, match="add imp"):
        resolve(preset="smoke", overrides={"lottery_methods": ("random",)})
    with pytest.raises(ConfigError, match="lottery-methods"):
        resolve(preset="smoke", overrides={"lottery_methods": ("imp", "magic")})
    with pytest.raises(ConfigError, match="lottery-fraction"):
        resolve(preset="smoke", overrides={"lottery_fraction": 1.0})


def study(data_root: Path, store: Path, out: Path, *extra: str) -> list[str]:
    command = [
        "reproduce",
        "--preset",
        "smoke",
        "--model",
        "lenet300",
        "--width",
        "10",
        "--train-size",
        "300",
    ]
    command += ["--test-size", "100", "--rates", "0.1", "--max-epochs", "2", "--sigmas", "0", "1"]
    command += ["--lottery-fraction", "0.5", "--dual-increment", "0.25", "--dual-interval", "1"]
    command += ["--data-dir", str(data_root), "--store", str(store), "--out", str(out), *extra]
    return command


def test_tickets_of_a_study_their_masks_tables_and_report(data_root: Path, tmp_path: Path) -> None:
    store, out = tmp_path / "store", tmp_path / "out"
    assert main(study(data_root, store, tmp_path / "one-round", "--lottery-rounds", "1", "--no-report")) == 0
    first = {path: path.stat().st_mtime_ns for path in store.rglob("training.json")}
    assert main(study(data_root, store, out, "--lottery-rounds", "2")) == 0  # the chain goes on
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in first.items())  # round 1 not recomputed
    tickets = pd.read_csv(out / "tickets.csv")
    assert len(tickets) == 2 * 4 * 4  # rounds x methods x groups
    folders = {
        (
            path.parent.parent.name.split("-rate")[1][:3],
            path.parent.name.split("-")[1],
            path.parent.name.split("-")[2],
        ): path.parent
        for path in store.glob("*/ticket-*/training.json")
    }
    run = next(p for p in store.glob("*rate0.1*") if (p / "model.pt").exists())
    dense = load_checked(run / "model.pt")
    masks = {key: load_checked(folder / "mask.pt") for key, folder in folders.items() if key[0] == "0.1"}
    model = new_lenet(dense)
    assert all(
        torch.equal(masks[("0.1", "imp", "1")][n], m) for n, m in magnitude_mask(model, fraction=0.5).items()
    )
    imp2, imp1 = masks[("0.1", "imp", "2")], masks[("0.1", "imp", "1")]
    assert all((imp2[n] <= imp1[n]).all() for n in imp1)  # nested
    assert all(torch.equal(masks[("0.1", "reinit", "2")][n], imp2[n]) for n in imp2)
    random = masks[("0.1", "random", "2")]
    assert all(int(random[n].sum()) == int(imp2[n].sum()) for n in imp2)
    assert remaining(masks[("0.1", "dual", "2")]) == pytest.approx(remaining(imp2), abs=0.01)
    for key, folder in folders.items():
        weights, mask = load_checked(folder / "model.pt"), load_checked(folder / "mask.pt")
        assert all((weights[n][~m] == 0).all() for n, m in mask.items()), key
    unfit = tickets[tickets["group"] == "mislabelled"]
    assert (unfit["n"] == 30).all()
    curves = pd.read_csv(out / "ticket_curves.csv")
    assert set(curves["method"]) == {"imp", "reinit", "random", "dual"} and set(curves["round"]) == {1, 2}
    for name in ("ticket_fit", "ticket_limits", "ticket_answer", "ticket_gap", "ticket_gap_change"):
        assert (out / "analysis" / f"{name}.csv").exists(), name
    fit = pd.read_csv(out / "analysis" / "ticket_fit.csv")
    assert set(fit["round"]) == {0, 1, 2}  # round 0: the dense model
    assert 'id="lottery"' in (out / "report.html").read_text()


def new_lenet(state: dict) -> torch.nn.Module:
    from overparam.models import build_model

    model = build_model(name="lenet300", width=10, mean=0.1307, std=0.3081)
    model.load_state_dict(state)
    return model


def tickets_table(fits: dict[tuple[int, str], list[float]]) -> pd.DataFrame:
    """tickets.csv rows of one family and rate: per (seed, group) the fraction right at rounds 1, 2, ..."""
    rows = []
    for (seed, group), by_round in fits.items():
        for number, fit in enumerate(by_round, start=1):
            rows.append(
                {
                    "variant": "all",
                    "dataset": "mnist",
                    "model": "m",
                    "width": 1,
                    "train_size": 100,
                    "rate": 0.1,
                }
                | {"seed": seed, "method": "imp", "round": number, "remaining": 0.5**number, "group": group}
                | {"n": 100, "correct": round(100 * fit)}
            )
    return pd.DataFrame(rows)


def test_limits_and_the_answer_on_hand_made_fits() -> None:
    fits = {
        (0, "mislabelled"): [1.0, 0.95, 0.5, 0.2],  # fits down to round 2
        (0, "clean"): [1.0, 1.0, 0.99, 0.95],  # every round: censored at 4
        (1, "mislabelled"): [0.95, 0.3, 0.9, 0.1],  # round 2 fails: limit 1, a later refit does not count
        (1, "clean"): [1.0, 0.99, 0.8, 0.5],  # limit 2
        (2, "mislabelled"): [0.5, 0.2, 0.1, 0.0],  # limit 0
        (2, "clean"): [1.0, 1.0, 1.0, 0.7],  # limit 3
    }
    limits = summary.limits(tickets_table(fits)).set_index(["seed", "group"])
    assert limits["limit_round"].to_dict() == {
        (0, "mislabelled"): 2, (0, "clean"): 4, (1, "mislabelled"): 1, (1, "clean"): 2,
        (2, "mislabelled"): 0, (2, "clean"): 3,
    }  # fmt: skip
    assert limits.loc[(2, "mislabelled"), "limit_remaining"] == 1.0
    assert limits.loc[(0, "clean"), "censored"] and not limits.loc[(1, "clean"), "censored"]
    answer = summary.answer(limits.reset_index()).iloc[0]
    differences = np.array([2, 1, 3])
    half = 4.302652729911275 * differences.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert answer["difference"] == pytest.approx(2.0)
    assert answer["difference_low"] == pytest.approx(2.0 - half)
    assert answer["detectable"] == pytest.approx(half)
    assert answer["clean_censored"] and not answer["mislabelled_censored"]


def test_the_gap_change_pairs_each_seeds_first_ticket_past_the_limit_with_its_dense_model() -> None:
    base = {"variant": "all", "dataset": "mnist", "model": "m", "width": 1, "train_size": 100, "rate": 0.1}
    gaps = pd.DataFrame(
        [
            base
            | {
                "seed": seed,
                "method": "imp",
                "round": number,
                "remaining": 0.5**number,
                "perturbation": "blur",
                "gap": gap,
            }
            for seed, by_round in {0: [0.1, 0.1, 0.3, 0.5], 1: [0.2, 0.4, 0.2, 0.0]}.items()
            for number, gap in enumerate(by_round)
        ]
    )
    limits = pd.DataFrame(
        [
            base
            | {
                "seed": 0,
                "method": "imp",
                "group": "mislabelled",
                "limit_round": 1,
                "limit_remaining": 0.5,
                "censored": False,
            },
            base
            | {
                "seed": 1,
                "method": "imp",
                "group": "mislabelled",
                "limit_round": 2,
                "limit_remaining": 0.25,
                "censored": False,
            },
        ]
    )
    change = summary.gap_change(gaps, limits).iloc[0]
    assert change["seeds"] == 2
    assert change["change"] == pytest.approx(((0.3 - 0.1) + (0.0 - 0.2)) / 2)
    assert change["dense_gap"] == pytest.approx(0.15)
