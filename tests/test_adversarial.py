"""Adversarial training: part of a run's identity only when on; examples inside the budget and the pixel
range, reproducible; and a model trained on them keeps more accuracy under attack than a standard one."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from overparam.adversarial import adversarial_batch, start_generator
from overparam.config import resolve
from overparam.data import NORMALIZATION, load_split
from overparam.models import build_model, predict
from overparam.perturb import PERTURBATIONS, ProbeInputs
from overparam.runtime import make_deterministic
from overparam.train import TrainingData, train


def test_adversarial_settings_enter_the_identity_only_when_on() -> None:
    standard = resolve(preset="smoke", overrides={}).runs()[0]
    assert standard.run_id() == replace(standard, adversarial_epsilon=0.3, adversarial_steps=3).run_id()
    robust = replace(standard, adversarial="pgd")
    assert len({standard.run_id(), robust.run_id(), replace(robust, adversarial_epsilon=0.2).run_id()}) == 3
    assert robust.probe_id() == standard.probe_id()


@pytest.mark.parametrize("method", ["pgd", "fgsm"])
def test_adversarial_examples_stay_in_the_budget_and_raise_the_loss(method: str) -> None:
    make_deterministic()
    torch.manual_seed(0)
    model = build_model(name="cnn", width=4, mean=0.1307, std=0.3081)
    images = torch.rand(16, 1, 28, 28)
    labels = model(images).argmax(dim=1)
    examples = [
        adversarial_batch(
            model, images, labels, method=method, epsilon=0.1, steps=5, generator=start_generator(0, 1)
        )
        for _ in range(2)
    ]
    assert torch.equal(examples[0], examples[1])  # keyed by (seed, epoch)
    assert (examples[0] - images).abs().max() <= 0.1 + 1e-6
    assert examples[0].min() >= 0 and examples[0].max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(examples[0]), labels) > F.cross_entropy(model(images), labels)


def test_an_adversarially_trained_model_keeps_more_accuracy_under_attack(data_root) -> None:
    make_deterministic()
    images, labels = load_split(dataset="mnist", split="train", data_dir=data_root, download=False)
    test_images, test_labels = load_split(dataset="mnist", split="test", data_dir=data_root, download=False)
    chosen, held_out = torch.arange(3000), torch.arange(500)
    data = TrainingData(
        images=images[chosen],
        assigned_labels=labels[chosen].long(),
        mislabelled=torch.zeros(len(chosen), dtype=torch.bool),
        test_images=test_images[held_out],
        test_labels=test_labels[held_out].long(),
    )
    base = resolve(preset="smoke", overrides={"model": "cnn", "width": 8, "max_epochs": 4}).runs()[0]
    robust_accuracy = {}
    for method in ("none", "pgd"):
        run = replace(base, adversarial=method, adversarial_epsilon=0.15, adversarial_steps=5)
        torch.manual_seed(0)
        model = build_model(
            name="cnn", width=8, mean=NORMALIZATION["mnist"][0], std=NORMALIZATION["mnist"][1]
        )
        train(model=model, data=data, run=run, progress=False)
        model.eval()
        reference = predict(model, data.test_images)
        inputs = ProbeInputs(
            model=model, reference=reference, indices=held_out, split="test", seed=0, precision="fp32"
        )
        attacked = PERTURBATIONS["pgd"].predict(data.test_images, (0.15,), inputs)[-1]
        robust_accuracy[method] = float(np.mean(attacked == data.test_labels.numpy()))
    assert robust_accuracy["pgd"] > robust_accuracy["none"] + 0.1, robust_accuracy
