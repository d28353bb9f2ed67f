"""Projected gradient descent (Madry et al. 2018), L-infinity, untargeted, level = epsilon in pixel units
(pixels in [0, 1]), attacking the model's own unperturbed prediction."""

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from overparam.models import INFERENCE_BATCH_SIZE
from overparam.perturb import Perturbation, ProbeInputs, register
from overparam.perturb.attack import input_gradient, require_gradients
from overparam.perturb.noise import classify, keyed_uniform

START_STREAM = "pgd-start"
WINDOW_BATCHES = 16  # images attacked side by side, in batches: bounds the attack state's memory


@register
class PGD(Perturbation):
    """L-infinity PGD on the cross-entropy of the model's own unperturbed prediction `reference`.

    At epsilon e: start at x_0 = clip(x + e * (2u - 1), 0, 1), u uniform in (0, 1) per pixel keyed by (run
    seed, split, original image index) as the noise (`noise.keyed_uniform`, stream "pgd-start"), the same u
    at every epsilon; then `steps` times x_{t+1} = clip(proj_e(x_t + a * sign(grad_x CE(model(x_t),
    reference))), 0, 1), step size a = step_size_factor * e / steps, proj_e onto [x - e, x + e]. The
    gradient is rescaled per image so it cannot underflow (`attack.loss_direction`). An image's attack ends
    at its first iterate the model classifies differently from `reference` (read off the gradient passes'
    forward at no extra cost), otherwise at x_steps; its class is the eval-mode prediction of that image.
    Its place in the gradient passes is then taken by the next image: the passes stay full whatever step
    each image is at, so the early ends save passes.

    Defaults: 10 steps of 2.5 e / 10 (Madry et al.'s ratio of step to budget: a straight path can cross the
    ball 1.25 times), a random start. `settings()` reports them (part of the probe's identity).

    Curves, on the level grid: each image's smallest flipping epsilon is searched rather than attacked at
    every level. Every image is attacked at the largest level; one not flipped there counts as flipped at
    no level. For the others a bisection over grid indices, each image attacked at its own midpoint: about
    log2(L) attacks instead of L. The predictions are then read monotonically: the reference below an
    image's flip epsilon, and from it on the class the attack produced at the flip epsilon. PGD at a larger
    epsilon is at least as strong in expectation (its ball contains the smaller one), though not for every
    image and random start: an image may flip at some epsilon and not at a larger one, which this reading
    (and the bisection, which finds a flipping level whose grid predecessor does not flip, not necessarily
    the smallest) does not show."""

    name = "pgd"
    level_name = "PGD epsilon (L-inf, pixel units, pixels in [0, 1])"
    default_levels = tuple(round(0.02 * i, 6) for i in range(16))  # 0 to 0.3, MNIST's standard budget
    needs_gradients = True

    def __init__(self, steps: int = 10, step_size_factor: float = 2.5, random_start: bool = True) -> None:
        if steps < 1 or step_size_factor <= 0:
            raise ValueError(
                f"PGD needs steps >= 1 and step_size_factor > 0, got {steps}, {step_size_factor}"
            )
        self.steps, self.step_size_factor, self.random_start = steps, step_size_factor, random_start

    def settings(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "step_size_factor": self.step_size_factor,
            "random_start": self.random_start,
        }

    def adversarial(
        self,
        pixels: torch.Tensor,
        epsilons: torch.Tensor,
        inputs: ProbeInputs,
        *,
        batch_size: int = INFERENCE_BATCH_SIZE,
    ) -> torch.Tensor:
        """The attacked images [N, H, W] of float images [N, H, W] in [0, 1], each at its own epsilon
        (`epsilons` [N] float, pixel units), rows of `inputs`; the model as given (eval mode). Windows of
        WINDOW_BATCHES * `batch_size` images at a time (`_attack`)."""
        require_gradients(self.name)
        window, found = WINDOW_BATCHES * batch_size, []
        for start in range(0, len(pixels), window):
            part = slice(start, start + window)
            found.append(self._attack(pixels[part], epsilons[part], inputs, part, batch_size))
        return torch.cat(found) if found else pixels.clone()

    def _attack(
        self, x: torch.Tensor, epsilons: torch.Tensor, inputs: ProbeInputs, part: slice, batch_size: int
    ) -> torch.Tensor:
        """Each image's attack, in gradient passes of the first `batch_size` images still attacking, at
        whatever step each is: an image leaves at its first flipped iterate or after `steps` steps and the
        next takes its place, so the passes stay full (an image's result does not depend on its company)."""
        reference = inputs.reference[part]
        eps = epsilons.to(device=x.device, dtype=x.dtype)[:, None, None]  # [n, 1, 1]
        step, low, high = eps * (self.step_size_factor / self.steps), x - eps, x + eps
        if self.random_start:
            u = keyed_uniform(inputs.seed, inputs.split, inputs.indices[part], x.shape[1:], START_STREAM)
            current = (u.to(x.device) * 2 - 1).mul_(eps).add_(x).clamp_(0, 1)
        else:
            current = x.clone()
        result = x.clone()
        taken = torch.zeros(len(x), dtype=torch.int64, device=x.device)  # steps taken
        attacking = torch.ones(len(x), dtype=torch.bool, device=x.device)
        while len(selected := attacking.nonzero().flatten()[:batch_size]):
            gradient, predicted = input_gradient(
                inputs.model,
                current[selected],
                reference[selected],
                batch_size=batch_size,
                precision=inputs.precision,
            )
            flipped = predicted != reference[selected]
            hit, going = selected[flipped], selected[~flipped]
            result[hit], attacking[hit] = current[hit], False
            moved = current[going] + step[going] * gradient[~flipped].sign()
            current[going] = torch.minimum(torch.maximum(moved, low[going]), high[going]).clamp_(0, 1)
            taken[going] += 1
            ended = going[taken[going] == self.steps]
            result[ended], attacking[ended] = current[ended], False
        return result

    def perturb(self, images: torch.Tensor, level: float, inputs: ProbeInputs) -> torch.Tensor:
        """float images [N, H, W] in [0, 1] -> the attacked images [N, H, W] at epsilon `level`."""
        was_training = inputs.model.training
        inputs.model.eval()
        epsilons = torch.full((len(images),), float(level), device=images.device)
        attacked = self.adversarial(images, epsilons, inputs)
        inputs.model.train(was_training)
        return attacked

    def attack(
        self,
        images: torch.Tensor,
        epsilons: torch.Tensor,
        inputs: ProbeInputs,
        *,
        batch_size: int = INFERENCE_BATCH_SIZE,
    ) -> torch.Tensor:
        """Eval-mode predictions [N] int64 of uint8 images [N, H, W] attacked each at its own epsilon
        (`epsilons` [N] float, pixel units); differs from `inputs.reference` where the attack flipped."""
        model = inputs.model
        was_training = model.training
        model.eval()
        pixels = images.float().div_(255)
        attacked = self.adversarial(pixels, epsilons, inputs, batch_size=batch_size)
        classes = classify(model, attacked, batch_size=batch_size, precision=inputs.precision)
        model.train(was_training)
        return classes

    def minimal_epsilon(
        self,
        images: torch.Tensor,
        levels: Sequence[float],
        inputs: ProbeInputs,
        *,
        batch_size: int = INFERENCE_BATCH_SIZE,
        progress: bool = False,
        desc: str = "pgd search",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each image's smallest flipping level on the grid `levels` (ascending, > 0) by bisection ->
        (position [N] int64 in `levels`, len(levels) where the largest level does not flip; the class [N]
        int64 the attack produced there, the reference where none). The position found flips and its
        predecessor (or epsilon 0) does not, both under the keyed random start."""
        if any(level <= 0 for level in levels) or any(b <= a for a, b in itertools.pairwise(levels)):
            raise ValueError(f"PGD search levels must be positive and increase strictly, got {tuple(levels)}")
        n, count = len(images), len(levels)
        low = np.full(n, -1)  # a level that does not flip (-1: epsilon 0)
        high = np.full(n, count)  # a level that flips (count: none known)
        reference = inputs.reference.cpu().numpy()
        classes = reference.copy()
        grid = torch.tensor(levels, dtype=torch.float32)
        rounds = 1 + int(np.ceil(np.log2(count))) if count else 0
        with tqdm(total=rounds, desc=desc, unit="attack", disable=not progress, leave=False) as bar:
            active = np.arange(n) if count else np.zeros(0, dtype=np.int64)
            target = np.full(n, count - 1)  # first attack: everyone at the largest level
            while len(active):
                selected = torch.as_tensor(active, device=images.device)
                rows = ProbeInputs(
                    model=inputs.model,
                    reference=inputs.reference[selected],
                    indices=inputs.indices[selected],
                    split=inputs.split,
                    seed=inputs.seed,
                    precision=inputs.precision,
                )
                epsilons = grid[torch.as_tensor(target[active])]
                found = self.attack(images[selected], epsilons, rows, batch_size=batch_size).cpu().numpy()
                flipped = found != reference[active]
                high[active[flipped]], classes[active[flipped]] = target[active[flipped]], found[flipped]
                low[active[~flipped]] = target[active[~flipped]]
                active = np.flatnonzero(high - low > 1)
                target = (low + high) // 2
                bar.update()
        return high, classes

    def predict(
        self,
        images: torch.Tensor,
        levels: Sequence[float],
        inputs: ProbeInputs,
        *,
        batch_size: int = INFERENCE_BATCH_SIZE,
        progress: bool = False,
        desc: str = "probe",
    ) -> np.ndarray:
        """uint8 images [N, H, W] at every epsilon (ascending) -> [len(levels), N] int64, by
        `minimal_epsilon` and the monotone reading; a level 0 is predicted (the unperturbed images)."""
        require_gradients(self.name)
        if any(b <= a for a, b in itertools.pairwise(levels)) or any(level < 0 for level in levels):
            raise ValueError(f"PGD levels must be >= 0 and increase strictly, got {tuple(levels)}")
        positive = [level for level in levels if level > 0]
        zeros = len(levels) - len(positive)
        found = np.empty((len(levels), len(images)), dtype=np.int64)
        if zeros:
            model = inputs.model
            was_training = model.training
            model.eval()
            clean = classify(
                model, images.float().div_(255), batch_size=batch_size, precision=inputs.precision
            )
            model.train(was_training)
            found[:zeros] = clean.cpu().numpy()
        if positive:
            position, classes = self.minimal_epsilon(
                images, positive, inputs, batch_size=batch_size, progress=progress, desc=desc
            )
            reference = inputs.reference.cpu().numpy()
            below = np.arange(len(positive))[:, None] < position[None, :]
            found[zeros:] = np.where(below, reference[None, :], classes[None, :])
        return found
