"""Simplicity bias on the Boolean cube: Lempel-Ziv complexity, keys, the streaming prior (resumed exactly),
training to zero error, the Hamming-neighbour measure, and the command end to end."""

import argparse
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from overparam.config import ConfigError
from overparam.experiments.simplicity import prior
from overparam.experiments.simplicity.boolean import (
    complexities,
    entropy,
    hex_keys,
    inputs,
    lz_complexity,
    lz_phrases,
    neighbours,
    pack,
    pack_array,
    strings,
    unpack,
)
from overparam.experiments.simplicity.command import PRESET_NAMES, add_arguments, run
from overparam.experiments.simplicity.config import PRESETS, resolve
from overparam.experiments.simplicity.gp import ep_log_probability, nngp_kernel
from overparam.experiments.simplicity.network import Architecture, batch_generator
from overparam.experiments.simplicity.noise import informative_pairs, neighbour_measures
from overparam.experiments.simplicity.prior import PriorStep, merge_counts
from overparam.experiments.simplicity.targets import target, train_split
from overparam.experiments.simplicity.training import Training, train_to_zero_error
from overparam.registry import Services
from overparam.report import write_report
from overparam.store.steps import RunOptions, execute_step


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small batched matrices: one thread is faster than two fighting for a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def exhaustive_phrases(text: str) -> int:
    """The definition, slowly: each phrase copies the longest prefix of the rest found starting earlier."""
    phrases, start = 1, 1
    while start < len(text):
        copied = 0
        while start + copied < len(text) and text[start : start + copied + 1] in text[: start + copied]:
            copied += 1
        phrases, start = phrases + 1, start + copied + 1
    return phrases


@pytest.mark.parametrize(
    ("text", "phrases"),
    [("01", 2), ("0001", 2), ("0101", 3), ("0110", 3), ("0000", 2), ("0" * 64 + "1" * 64, 3), ("01" * 64, 3)],
)
def test_lz_phrases_match_hand_parsings(text: str, phrases: int) -> None:
    # 0|001, 0|1|01, 0|1|10, 0|000, 0|0..01|1..1, 0|1|0101..: the last phrase may be a pure copy
    assert lz_phrases(text) == phrases


def test_lz_phrases_match_the_definition_on_random_strings() -> None:
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("01") for _ in range(rng.choice([2, 5, 17, 64, 128])))
        assert lz_phrases(text) == exhaustive_phrases(text)


def test_complexity_scales_the_symmetrised_count_and_gives_constants_log2_n() -> None:
    assert lz_complexity("0" * 128) == lz_complexity("1" * 128) == 7.0
    assert lz_complexity("0" * 64 + "1" * 64) == 7.0 * 3
    text = "0001101"  # forward 0|001|10|1 = 4 phrases; reversed 1|0|11|00|0 = 5
    assert (lz_phrases(text), lz_phrases(text[::-1])) == (4, 5)
    assert lz_complexity(text) == pytest.approx(math.log2(7) * 4.5)
    mixed = "0110100110010110" * 8
    assert (
        complexities([mixed, mixed.translate(str.maketrans("01", "10"))]).tolist()
        == [lz_complexity(mixed)] * 2
    )
    assert entropy(np.array([0, 64, 128]), length=128).tolist() == [0.0, 1.0, 0.0]
    rng = random.Random(1)
    texts = ["".join(rng.choice("01") for _ in range(128)) for _ in range(40)]
    one = complexities(texts)
    assert one.tolist() == [lz_complexity(text) for text in texts]
    assert complexities(texts, workers=2, parallel_above=0).tolist() == one.tolist()


def test_keys_round_trip_and_read_like_the_function() -> None:
    bits = np.random.default_rng(0).integers(0, 2, (20, 128)).astype(np.uint8)
    bits[0], bits[1] = 0, 1
    keys = pack(torch.as_tensor(bits).bool()).numpy()
    assert keys.shape == (20, 2) and keys.dtype == np.int64
    assert (unpack(keys, length=128) == bits).all()
    assert (pack_array(bits) == keys).all()
    assert hex_keys(keys[:2]) == ["0" * 32, "f" * 32]
    text = strings(keys[2:3], length=128)[0]
    assert text == "".join(map(str, bits[2])) and int(hex_keys(keys[2:3])[0], 16) == int(text, 2)


def test_inputs_and_neighbours_follow_the_bit_order() -> None:
    cube = inputs(n_bits=3)
    assert cube[5].tolist() == [1.0, 0.0, 1.0]  # 5 = 101, leading bit first
    assert neighbours(n_bits=3)[5].tolist() == [1, 7, 4]


def test_merge_counts_adds_the_counts_of_equal_keys() -> None:
    keys, counts = merge_counts(
        np.array([[1, 2], [0, 5]]), np.array([3, 1]), np.array([[0, 5], [-1, 0]]), np.array([2, 7])
    )
    assert keys.tolist() == [[-1, 0], [0, 5], [1, 2]] and counts.tolist() == [7, 3, 3]


def prior_step(checkpoint_every: int) -> PriorStep:
    return PriorStep(
        architecture=Architecture(), draws=2_500, batch=500, seed=3, checkpoint_every=checkpoint_every
    )


def test_a_killed_sampling_resumes_to_exactly_the_counts_of_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = RunOptions(store=str(tmp_path / "whole"), device="cpu")
    assert execute_step(prior_step(100), whole).status == "done"
    real_save = prior.save_partial

    def save_then_die(path: Path, **saved: object) -> None:
        real_save(path, **saved)
        raise RuntimeError("killed")

    monkeypatch.setattr(prior, "save_partial", save_then_die)
    broken = RunOptions(store=str(tmp_path / "broken"), device="cpu")
    assert execute_step(prior_step(2), broken).status == "failed"
    assert (prior_step(2).folder(Path(broken.store)) / "partial.npz").exists()
    monkeypatch.setattr(prior, "save_partial", real_save)
    assert execute_step(prior_step(2), broken).status == "done"
    record = json.loads(prior_step(2).record(Path(broken.store)).read_text())
    assert record["resumed_from_batch"] == 2
    assert not (prior_step(2).folder(Path(broken.store)) / "partial.npz").exists()
    one, resumed = (prior.load_functions(prior_step(2), Path(o.store)) for o in (whole, broken))
    assert int(one["counts"].sum()) == 2_500
    for name in ("keys", "counts", "complexity", "ones"):
        np.testing.assert_array_equal(one[name], resumed[name])


def test_training_reaches_zero_error_on_its_labels() -> None:
    cube, index = inputs(n_bits=7), torch.as_tensor(train_split(train_size=64, seed=0))
    labels = torch.as_tensor(target("low")).long()[index].expand(12, -1).clone()
    labels[0, :3] ^= 1  # one training on flipped labels
    learned, epochs = train_to_zero_error(
        architecture=Architecture(),
        training=Training(learning_rate=1e-2, batch_size=8, max_epochs=300),
        cube=cube,
        train_index=index,
        labels=labels,
        generator=batch_generator(seed=0, index=0, device=torch.device("cpu")),
    )
    assert (epochs > 0).all()
    assert (learned[:, index].long() == labels).all()


def test_a_noise_step_gives_the_same_table_twice(tmp_path: Path) -> None:
    step = PRESETS["smoke"].noise()[("low", 4)]
    for store in ("first", "second"):
        assert execute_step(step, RunOptions(store=str(tmp_path / store), device="cpu")).status == "done"
    first, second = (
        (tmp_path / store / step.step_id() / "noise.csv").read_bytes() for store in ("first", "second")
    )
    assert first == second


def test_hamming_neighbour_measure_on_a_hand_made_function() -> None:
    # training inputs: even parity, so every neighbour is held out; the clean rule is 0 everywhere, so every
    # pair is informative. Input 0 is flipped; the learned function is 1 only on input 1 (0000001), a
    # neighbour of input 0 and of six clean training inputs.
    n_bits = 7
    parity = np.array([bin(i).count("1") % 2 for i in range(128)])
    train_index = np.flatnonzero(parity == 0)
    clean = np.zeros(128, dtype=np.uint8)
    flipped = (train_index == 0)[None, :]
    learned = np.zeros((1, 128), dtype=np.uint8)
    learned[0, 1] = 1
    _, other = informative_pairs(clean=clean, train_index=train_index, n_bits=n_bits)
    assert len(other) == 64 * 7
    row = neighbour_measures(
        learned=learned, clean=clean, train_index=train_index, flipped=flipped, n_bits=n_bits
    ).iloc[0]
    assert (row["flipped_pairs"], row["flipped_follow"]) == (7, 1)
    assert (row["clean_pairs"], row["clean_follow"]) == (63 * 7, 6)
    assert row["held_out_error"] == 1 / 64
    # a pair whose clean labels differ says nothing: a rule that is 1 on input 1 leaves only six pairs there
    clean[1] = 1
    _, other = informative_pairs(clean=clean, train_index=train_index, n_bits=n_bits)
    assert (other == 1).sum() == 0


def test_nngp_kernel_follows_the_relu_recursion() -> None:
    kernel = nngp_kernel(inputs(n_bits=7).numpy(), Architecture())
    # input 0: 1 (bias); then 1 + K/2 per ReLU layer (sigma_w = sigma_b = 1): 1.5, 1.75
    assert kernel[0, 0] == pytest.approx(1.75)
    assert np.allclose(kernel, kernel.T) and np.linalg.eigvalsh(kernel).min() > 0


def test_ep_orthant_probabilities() -> None:
    independent = np.exp(ep_log_probability(np.diag([1.0, 2.0, 0.5]), np.array([[1.0, -1.0, 1.0]])))
    assert independent[0] == pytest.approx(1 / 8)  # EP is exact for independent sites
    for rho in (0.5, -0.7):
        both = np.exp(
            ep_log_probability(np.array([[1, rho], [rho, 1.0]]), np.array([[1.0, 1.0], [1.0, -1.0]]))
        )
        exact = 0.25 + np.array([1, -1]) * math.asin(rho) / (2 * math.pi)
        assert both == pytest.approx(exact, rel=0.02)
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(5, 5))
    kernel = factor @ factor.T + 0.5 * np.eye(5)
    draws = rng.multivariate_normal(np.zeros(5), kernel, size=400_000) > 0
    signs = np.array([[1, 1, -1, 1, -1], [1, -1, -1, 1, 1]])
    sampled = [(draws == (row > 0)).all(axis=1).mean() for row in signs]
    assert np.exp(ep_log_probability(kernel, signs.astype(float))) == pytest.approx(sampled, rel=0.1)


def test_presets_and_bad_settings() -> None:
    assert set(PRESET_NAMES) == set(PRESETS)
    assert resolve(preset="quick", overrides={"draws": None}).draws == PRESETS["quick"].draws
    with pytest.raises(ConfigError, match="flips"):
        resolve(preset="smoke", overrides={"flips": (65,)})
    with pytest.raises(ConfigError, match="preset"):
        resolve(preset="huge", overrides={})


def command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(list(argv)), Services(write_report=write_report))


def test_smoke_run_writes_tables_and_report_and_caches_its_steps(tmp_path: Path) -> None:
    store, out = tmp_path / "store", tmp_path / "out"
    assert command("--preset", "smoke", "--store", str(store), "--out", str(out), "--device", "cpu") == 0
    first = json.loads((out / "config.json").read_text())
    assert set(first["steps"].values()) == {"done"} and len(first["steps"]) == 8
    assert first["prior"]["draws"] == 20_000 and first["prior"]["constant_most_likely"]
    assert first["config"]["seed"] == 0 and "versions" in first["environment"]
    top = pd.read_csv(out / "prior_top.csv")
    assert top["count"].is_monotonic_decreasing and top["probability"].sum() <= 1
    sgd = pd.read_csv(out / "sgd_summary.csv")
    assert sgd["target"].tolist() == ["low", "high"] and (sgd["reached_zero_error"] == 40).all()
    assert sgd.loc[0, "sgd_error"] < sgd.loc[1, "sgd_error"]  # the simple rule generalises, noise does not
    assert (sgd["gp_functions"] == 8).all()
    found = pd.read_csv(out / "sgd_functions.csv")
    assert (found["log10_p_gp"].dropna() < 0).all() and found["log10_p_gp"].notna().sum() == 16
    check = pd.read_csv(out / "gp_check.csv")
    assert len(check) == 20 and (check["log10_p_gp"] < 0).all()
    assert check.loc[:1, "log10_p_gp"].min() > -1  # the constant functions are likely under the GP too
    noise = pd.read_csv(out / "noise_summary.csv")
    assert noise["flips"].tolist() == [0, 4] and (noise["trainings"] == 16).all()
    assert noise.loc[0, "lookup_complexity"] == noise.loc[0, "target_complexity"]
    trainings = pd.read_csv(out / "noise_trainings.csv")
    assert (trainings.loc[trainings["flips"] == 4, "flipped_pairs"] > 0).any()
    assert (trainings.loc[trainings["flips"] == 0, "flipped_pairs"] == 0).all()
    assert "Simplicity bias" in (out / "report.html").read_text()
    for name in ("prior_complexity", "prior_rank", "sgd_against_prior", "noise_neighbours"):
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.svg").exists()
    assert command("--preset", "smoke", "--store", str(store), "--out", str(out), "--device", "cpu") == 0
    second = json.loads((out / "config.json").read_text())
    assert set(second["steps"].values()) == {"cached"}
    assert second["prior"] == first["prior"]
