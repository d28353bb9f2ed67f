"""Probe throughput of every registered perturbation (issue 12), blur as the baseline, in one process.

Each perturbation predicts `--images` MNIST test images at its default levels but 0 (as the probe does:
it measures level 0 itself) with a ResNet-18 of `--width`, untrained unless `--train-steps` (`--checkpoint`
keeps the trained weights for the next run). Throughput hardly depends on the weights, except PGD's: its
bisection skips images that do not flip at the largest level, and an image's attack ends at its first
flipped iterate, which an untrained model reaches within a step or two; a trained one is the realistic case.
Prints per perturbation the levels, the seconds (the best of `--repeats` rounds of all perturbations back
to back, after a warm-up on 64 images), images x levels per second, the ratio to blur's, and the fraction
of images flipped at the largest level.

    python benchmarks/perturbations.py --images 2000 --width 16 --train-steps 300 --repeats 3
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from overparam.data import load_split
from overparam.models import build_model, predict
from overparam.perturb import PERTURBATIONS, ProbeInputs
from overparam.runtime import make_deterministic

MEAN, STD = 0.1307, 0.3081
DEFAULT_DATA = Path(
    os.environ.get("OVERPARAM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def trained(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> nn.Module:
    """`steps` Adam steps of batch 128 on `images` (a brief training, for a meaningful prediction)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(images), (128,), generator=generator)
        loss = nn.functional.cross_entropy(model(images[batch, None].float() / 255), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder holding MNIST/raw")
    parser.add_argument("--images", type=int, default=2000, help="test images probed")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width")
    parser.add_argument("--train-steps", type=int, default=0, help="Adam steps on training images first")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all perturbations; the best counts")
    parser.add_argument("--checkpoint", type=Path, help="load the model from here if it exists, else save it")
    parser.add_argument("--only", default="", help="comma-separated perturbations (default: all registered)")
    args = parser.parse_args()

    make_deterministic()
    torch.manual_seed(0)
    test_images, _ = load_split(dataset="mnist", split="test", data_dir=args.data_dir, download=False)
    images = test_images[: args.images]
    model = build_model(name="resnet18", width=args.width, mean=MEAN, std=STD).eval()
    if args.checkpoint and args.checkpoint.exists():
        model.load_state_dict(torch.load(args.checkpoint))
    elif args.train_steps:
        train_images, train_labels = load_split(
            dataset="mnist", split="train", data_dir=args.data_dir, download=False
        )
        model = trained(model, train_images, train_labels, args.train_steps)
        if args.checkpoint:
            torch.save(model.state_dict(), args.checkpoint)
    model.eval()
    reference = predict(model, images)
    inputs = ProbeInputs(
        model=model, reference=reference, indices=torch.arange(len(images)), split="test", seed=0
    )
    names = [name for name in args.only.split(",") if name] or list(PERTURBATIONS)
    print(
        f"{len(images)} MNIST test images, ResNet-18 width {args.width}, "
        f"{'untrained' if not args.train_steps else f'{args.train_steps} training steps'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"{'perturbation':<13}{'levels':>7}{'seconds':>10}{'img*lvl/s':>12}{'vs blur':>9}{'flipped@max':>13}"
    )
    best = dict.fromkeys(names, float("inf"))
    found: dict[str, np.ndarray] = {}
    for name in names:  # warm-up
        warm = ProbeInputs(
            model=model, reference=reference[:64], indices=inputs.indices[:64], split="test", seed=0
        )
        PERTURBATIONS[name].predict(images[:64], PERTURBATIONS[name].default_levels[1:], warm)
    # Rounds of every perturbation back to back, the best round of each counting: a shared machine's
    # speed drifts, and what slows one round slows its neighbours alike.
    for _ in range(args.repeats):
        for name in names:
            start = time.perf_counter()
            found[name] = PERTURBATIONS[name].predict(images, PERTURBATIONS[name].default_levels[1:], inputs)
            best[name] = min(best[name], time.perf_counter() - start)
    rates = {name: len(images) * (len(PERTURBATIONS[name].default_levels) - 1) / best[name] for name in names}
    for name in names:
        ratio = rates[name] / rates["blur"] if "blur" in rates else float("nan")
        flipped = float(np.mean(found[name][-1] != reference.numpy()))
        levels = len(PERTURBATIONS[name].default_levels) - 1
        print(f"{name:<13}{levels:>7}{best[name]:>10.1f}{rates[name]:>12.0f}{ratio:>9.2f}{flipped:>13.1%}")


if __name__ == "__main__":
    main()
