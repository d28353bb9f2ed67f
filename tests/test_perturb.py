"""Perturbations as plugins (issue 12): noise, FGSM and PGD, their keyed randomness and the registry."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from overparam.data import load_split
from overparam.models import build_model, predict
from overparam.perturb import PERTURBATIONS, Perturbation, ProbeInputs, get, register
from overparam.perturb.attack import input_gradient, loss_direction
from overparam.perturb.fgsm import FGSM
from overparam.perturb.noise import Noise, keyed_normal, keyed_uniform, philox4x32
from overparam.perturb.pgd import PGD
from overparam.runtime import make_deterministic

MEAN, STD = 0.1307, 0.3081
BUILT_IN = ("blur", "fgsm", "noise", "pgd")


@pytest.fixture(scope="module", autouse=True)
def deterministic() -> None:
    make_deterministic()


@pytest.fixture(scope="module")
def mnist(data_root: Path) -> dict[str, torch.Tensor]:
    train_images, train_labels = load_split(
        dataset="mnist", split="train", data_dir=data_root, download=False
    )
    test_images, _ = load_split(dataset="mnist", split="test", data_dir=data_root, download=False)
    return {"train": train_images[:2000], "labels": train_labels[:2000], "test": test_images[:400]}


@pytest.fixture(scope="module")
def model(mnist: dict[str, torch.Tensor]) -> nn.Module:
    """A width-4 CNN trained 300 Adam steps on 2000 MNIST images: a meaningful prediction in seconds."""
    torch.manual_seed(0)
    net = build_model(name="cnn", width=4, mean=MEAN, std=STD)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    order = torch.randperm(len(mnist["train"]), generator=torch.Generator().manual_seed(0))
    for step in range(300):
        batch = order[(step * 64) % 1984 :][:64]
        loss = nn.functional.cross_entropy(
            net(mnist["train"][batch, None].float() / 255), mnist["labels"][batch]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.zero_grad(set_to_none=True)
    return net.eval()


def probe_inputs(
    net: nn.Module, images: torch.Tensor, *, batch_size: int = 1024, split: str = "test", seed: int = 0
) -> ProbeInputs:
    return ProbeInputs(
        model=net,
        reference=predict(net, images, batch_size=batch_size),
        indices=torch.arange(len(images)) * 3 + 5,  # original positions, not 0..N-1
        split=split,
        seed=seed,
    )


def test_philox_matches_random123_known_answers() -> None:
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        assert tuple(int(word) for word in philox4x32([np.uint64(c) for c in counter], key)) == expected


def test_built_ins_are_registered() -> None:
    assert set(BUILT_IN) <= set(PERTURBATIONS)
    assert PERTURBATIONS["pgd"].settings() == {"steps": 10, "step_size_factor": 2.5, "random_start": True}
    for name in BUILT_IN:
        kind = get(name)
        assert kind.default_levels[0] == 0 and list(kind.default_levels) == sorted(kind.default_levels)
    assert get("fgsm").needs_gradients and get("pgd").needs_gradients and not get("noise").needs_gradients


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("batch_size", [1024, 96])
def test_level_zero_is_the_unperturbed_prediction(
    name: str, batch_size: int, model: nn.Module, mnist: dict[str, torch.Tensor]
) -> None:
    images = mnist["test"][:300]
    inputs = probe_inputs(model, images, batch_size=batch_size)
    kind = get(name)
    levels = (0.0, kind.default_levels[1], kind.default_levels[-1])
    found = kind.predict(images, levels, inputs, batch_size=batch_size)
    assert found.shape == (3, len(images)) and found.dtype == np.int64
    np.testing.assert_array_equal(found[0], inputs.reference.numpy())


def test_noise_is_keyed_by_seed_split_and_original_index() -> None:
    indices = torch.tensor([5, 9000, 3, 9999, 17])
    full = keyed_normal(0, "train", torch.arange(10000), (28, 28))
    some = keyed_normal(0, "train", indices, (28, 28))
    assert some.shape == (5, 28, 28) and some.dtype == torch.float32
    assert torch.equal(some, full[indices])  # whatever else is asked for with it
    assert torch.equal(some, keyed_normal(0, "train", indices, (28, 28)))  # and on a second call
    assert not torch.equal(some[0], some[2])  # different images, different noise
    for other in (keyed_normal(1, "train", indices, (28, 28)), keyed_normal(0, "test", indices, (28, 28))):
        assert (other != some).float().mean() > 0.99
    start = keyed_uniform(0, "train", indices, (28, 28), "pgd-start")
    assert start.min() > 0 and start.max() < 1
    assert torch.corrcoef(torch.stack([start.flatten(), some.flatten()]))[0, 1].abs() < 0.05
    assert abs(full.mean().item()) < 0.002 and abs(full.std().item() - 1) < 0.002
    # the tails of a unit normal: P(|z| > 3) = 0.0027
    assert abs((full.abs() > 3).float().mean().item() - 0.0027) < 0.0002


def test_noise_lies_on_one_ray_per_image_and_is_clipped(mnist: dict[str, torch.Tensor]) -> None:
    noise, grey = get("noise"), torch.full((20, 28, 28), 0.5)
    inputs = ProbeInputs(
        model=nn.Identity(), reference=torch.zeros(20), indices=torch.arange(20), split="test", seed=3
    )
    once, twice = (noise.perturb(grey, level, inputs) - 0.5 for level in (0.01, 0.02))
    torch.testing.assert_close(twice, 2 * once, rtol=0, atol=1e-6)  # no pixel is clipped at these levels
    field = keyed_normal(3, "test", torch.arange(20), (28, 28))
    torch.testing.assert_close(once, 0.01 * field, rtol=0, atol=1e-6)
    images = mnist["test"][:20].float() / 255
    noisy = noise.perturb(images, 1.0, inputs)
    assert noisy.min() == 0 and noisy.max() == 1
    assert 0.1 < (noisy == 0).float().mean() < 0.9 and 0.05 < (noisy == 1).float().mean() < 0.5
    assert torch.equal(noise.perturb(images, 0.0, inputs), images)


def test_noise_predictions_do_not_depend_on_the_batch_layout(
    model: nn.Module, mnist: dict[str, torch.Tensor]
) -> None:
    images, noise = mnist["test"][:200], get("noise")
    levels = noise.default_levels[1::4]
    inputs = probe_inputs(model, images)
    found = noise.predict(images, levels, inputs, batch_size=1024)
    np.testing.assert_array_equal(found, noise.predict(images, levels, inputs, batch_size=1024))
    np.testing.assert_array_equal(found, noise.predict(images, levels, inputs, batch_size=7))
    # the same images in another order and company: each keeps its noise, hence its prediction
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))[:150]
    shuffled = ProbeInputs(
        model=model, reference=inputs.reference[order], indices=inputs.indices[order], split="test", seed=0
    )
    np.testing.assert_array_equal(found[:, order.numpy()], noise.predict(images[order], levels, shuffled))
    # the batched predict equals the base class's level by level path through `perturb`
    np.testing.assert_array_equal(found, Perturbation.predict(noise, images, levels, inputs))
    assert (found[-1] != inputs.reference.numpy()).mean() > (found[0] != inputs.reference.numpy()).mean()


def test_fgsm_predicts_each_level_exactly_and_leaves_the_model_alone(
    model: nn.Module, mnist: dict[str, torch.Tensor]
) -> None:
    images, fgsm = mnist["test"][:200], get("fgsm")
    inputs = probe_inputs(model, images)
    model.train()
    found = fgsm.predict(images, fgsm.default_levels, inputs)
    assert model.training and all(parameter.grad is None for parameter in model.parameters())
    model.eval()
    levels = fgsm.default_levels[::3]  # the base class's path takes one gradient per level
    np.testing.assert_array_equal(found[::3], Perturbation.predict(fgsm, images, levels, inputs))
    flips = (found != inputs.reference.numpy()).mean(axis=1)
    assert flips[0] == 0 and flips[-1] > 0.5 and flips[-1] > flips[len(flips) // 2] > 0
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        fgsm.predict(images, fgsm.default_levels, inputs)


def test_attack_gradient_is_cross_entropys_direction_and_never_vanishes(model: nn.Module) -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 300.0, 1.0]], requires_grad=True)
    reference = torch.tensor([0, 1])
    (ce,) = torch.autograd.grad(nn.functional.cross_entropy(logits, reference, reduction="sum"), logits)
    direction = loss_direction(logits.detach(), reference)
    torch.testing.assert_close(direction[0] * ce[0, 1] / direction[0, 1], ce[0])  # proportional, positive
    assert (ce[1] == 0).all() and direction[1, 1] == -1 and direction[1, 2] > 0.7  # CE underflowed, not it
    pixels = torch.rand(5, 28, 28, generator=torch.Generator().manual_seed(0))
    reference = predict(model, (pixels * 255).to(torch.uint8))
    alone, _ = input_gradient(model, pixels[:1], reference[:1], batch_size=1024)
    together, predicted = input_gradient(model, pixels, reference, batch_size=1024)
    torch.testing.assert_close(alone, together[:1])  # the padding and the others do not enter
    assert torch.equal(predicted, model(pixels[:, None]).argmax(dim=1))


def test_pgd_flips_at_least_as_many_images_as_fgsm(model: nn.Module, mnist: dict[str, torch.Tensor]) -> None:
    images = mnist["test"]
    inputs = probe_inputs(model, images, batch_size=400)
    reference = inputs.reference.numpy()
    for epsilon in (0.06, 0.1):
        fgsm_flips = (get("fgsm").predict(images, [epsilon], inputs, batch_size=400)[0] != reference).sum()
        pgd = get("pgd").attack(images, torch.full((len(images),), epsilon), inputs, batch_size=400)
        pgd_flips = (pgd.numpy() != reference).sum()
        assert pgd_flips >= fgsm_flips > 0
        assert pgd_flips > len(images) // 10


def test_pgd_bisection_agrees_with_attacking_every_level(
    model: nn.Module, mnist: dict[str, torch.Tensor]
) -> None:
    images, pgd = mnist["test"][:100], get("pgd")
    inputs = probe_inputs(model, images, batch_size=100)  # passes of 100: faster than 1024
    reference = inputs.reference.numpy()
    levels = pgd.default_levels[2::2]  # 0.04 to 0.28: 7 levels, 1 + 3 bisection rounds
    position, classes = pgd.minimal_epsilon(images, levels, inputs, batch_size=100)
    assert position.shape == classes.shape == (len(images),)
    every = np.stack(
        [
            pgd.attack(images, torch.full((len(images),), level), inputs, batch_size=100).numpy()
            for level in levels
        ]
    )  # [L, N]: attacked at every level separately, each with the keyed random start
    flipped = every != reference
    found = position < len(levels)
    assert found.mean() > 0.5
    columns = np.flatnonzero(found)
    assert flipped[position[found], columns].all()  # the level found flips, with the class found
    np.testing.assert_array_equal(every[position[found], columns], classes[found])
    below = position[found] - 1
    assert not flipped[below[below >= 0], columns[below >= 0]].any()  # its grid predecessor does not
    assert not flipped[-1, ~found].any()  # the rest do not flip at the largest level
    np.testing.assert_array_equal(classes[~found], reference[~found])
    monotone = (np.diff(flipped.astype(int), axis=0) >= 0).all(axis=0)
    first = np.where(flipped.any(axis=0), flipped.argmax(axis=0), len(levels))
    np.testing.assert_array_equal(position[monotone], first[monotone])
    assert monotone.mean() > 0.8
    # predict reads them monotonically; its level 0 is the unperturbed prediction
    predicted = pgd.predict(images, (0.0, *levels), inputs, batch_size=100)
    np.testing.assert_array_equal(predicted[0], reference)
    expected = np.where(np.arange(len(levels))[:, None] < position, reference, classes)
    np.testing.assert_array_equal(predicted[1:], expected)


def test_pgd_attack_is_deterministic_and_keyed(model: nn.Module, mnist: dict[str, torch.Tensor]) -> None:
    images = mnist["test"][:64].float() / 255
    inputs = probe_inputs(model, mnist["test"][:64])
    pgd, epsilons = get("pgd"), torch.full((64,), 0.1)
    first = pgd.adversarial(images, epsilons, inputs, batch_size=64)
    assert torch.equal(first, pgd.adversarial(images, epsilons, inputs, batch_size=64))
    assert torch.equal(first[:10], pgd.adversarial(images, epsilons, inputs, batch_size=16)[:10])
    assert (first - images).abs().max() <= 0.1 + 1e-6 and first.min() >= 0 and first.max() <= 1
    assert PGD(random_start=False).settings()["random_start"] is False
    with pytest.raises(ValueError, match="increase"):
        pgd.predict(mnist["test"][:4], [0.0, 0.2, 0.1], probe_inputs(model, mnist["test"][:4]))


@pytest.fixture
def brightness() -> Iterator[type[Perturbation]]:
    @register
    class Brightness(Perturbation):
        name = "brightness"
        level_name = "added brightness (pixel units)"
        default_levels = (0.0, 0.25, 0.5, 1.0)

        def perturb(self, images: torch.Tensor, level: float, inputs: ProbeInputs) -> torch.Tensor:
            return (images + level).clamp(0, 1)

    yield Brightness
    PERTURBATIONS.pop("brightness")


def test_a_perturbation_defined_elsewhere_plugs_in(
    brightness: type[Perturbation], model: nn.Module, mnist: dict[str, torch.Tensor]
) -> None:
    assert isinstance(get("brightness"), brightness)
    images = mnist["test"][:100]
    inputs = probe_inputs(model, images, batch_size=64)
    found = get("brightness").predict(images, brightness.default_levels, inputs, batch_size=64)
    assert found.shape == (4, 100)
    np.testing.assert_array_equal(found[0], inputs.reference.numpy())
    assert len(set(found[-1])) == 1  # a white image is one image
    with pytest.raises(ValueError, match="twice"):
        register(brightness)


def test_constructed_instances_are_independent_of_the_registry() -> None:
    assert isinstance(get("noise"), Noise) and isinstance(get("fgsm"), FGSM)
    assert PGD(steps=3).settings()["steps"] == 3 and get("pgd").settings()["steps"] == 10
    with pytest.raises(ValueError):
        PGD(steps=0)
