"""SGD against the prior (Mingard et al.): train the network from fresh draws of the prior to zero error on
the target's labels of the training inputs, many times, and count the functions found. The comparison with
the prior conditioned on the same training labels is made from the prior step's counts (`summary`), and,
for the functions SGD finds most often, from the Gaussian-process approximation (`GpStep`, `gp`).

sgd.npz: keys [F, W] int64 of the distinct functions found (whole cube), counts [F] int64, and epochs [R]
int64 (the epoch each training reached zero training error, -1 never; those are not counted)."""

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from overparam.experiments.simplicity.boolean import hex_keys, inputs, pack, unpack
from overparam.experiments.simplicity.gp import ep_log_probability, log10_conditional, nngp_kernel
from overparam.experiments.simplicity.network import Architecture, batch_generator
from overparam.experiments.simplicity.prior import PriorStep, load_functions
from overparam.experiments.simplicity.targets import target, train_split
from overparam.experiments.simplicity.training import Training, train_to_zero_error
from overparam.store.files import file_record, read_verified, write_csv, write_npz
from overparam.store.steps import Step, StepContext, content_id


@dataclass(frozen=True)
class Task:
    """What is learned: the `target` function's labels on `train_size` inputs drawn from `split_seed`."""

    target: str
    train_size: int = 64
    split_seed: int = 0

    def train_index(self) -> np.ndarray:
        return train_split(train_size=self.train_size, seed=self.split_seed)


@dataclass(frozen=True)
class SgdStep(Step):
    """`trainings` trainings on `task`, every one from its own draw of the prior (from `seed`)."""

    architecture: Architecture
    training: Training
    task: Task
    trainings: int
    seed: int
    kind = "simplicity-sgd"

    def step_id(self) -> str:
        return f"simplicity/{content_id(self.kind, {**self.settings(), 'seed': self.seed})}"

    def settings(self) -> dict[str, Any]:
        return {
            "architecture": asdict(self.architecture),
            "training": asdict(self.training),
            "task": asdict(self.task),
            "trainings": self.trainings,
        }

    def compute(self, context: StepContext) -> dict[str, Any]:
        device = context.device
        index = torch.as_tensor(self.task.train_index(), device=device)
        labels = torch.as_tensor(target(self.task.target), device=device)[index]
        learned, epochs = train_to_zero_error(
            architecture=self.architecture,
            training=self.training,
            cube=inputs(n_bits=self.architecture.n_bits).to(device),
            train_index=index,
            labels=labels.expand(self.trainings, -1),
            generator=batch_generator(seed=self.seed, index=0, device=device),
            progress=context.options.progress,
        )
        keys, counts = torch.unique(pack(learned[epochs >= 0]), dim=0, return_counts=True)
        path = context.folder / "sgd.npz"
        write_npz(path, keys=keys.cpu().numpy(), counts=counts.cpu().numpy(), epochs=epochs.cpu().numpy())
        return {
            "settings": self.settings(),
            "seed": self.seed,
            "reached_zero_error": int((epochs >= 0).sum()),
            "distinct_functions": len(keys),
            **file_record([path]),
        }


@dataclass(frozen=True)
class GpStep(Step):
    """The Gaussian-process approximation of P(f | S) for the `functions` functions SGD found most often in
    `sgd` (ties in key order). gp.npz: keys [G, W] int64 and log10_p [G] float64."""

    sgd: SgdStep
    functions: int
    kind = "simplicity-gp"

    def needs(self) -> tuple[Step, ...]:
        return (self.sgd,)

    def step_id(self) -> str:
        return f"{self.sgd.step_id()}/{content_id(self.kind, {'functions': self.functions}, self.needs())}"

    def compute(self, context: StepContext) -> dict[str, Any]:
        with np.load(io.BytesIO(read_verified(self.sgd.record(context.store), "sgd.npz"))) as saved:
            keys, counts = saved["keys"], saved["counts"]
        chosen = np.argsort(-counts, kind="stable")[: self.functions]
        architecture = self.sgd.architecture
        kernel = nngp_kernel(inputs(n_bits=architecture.n_bits).numpy(), architecture)
        bits = unpack(keys[chosen], length=2**architecture.n_bits)
        log10_p = log10_conditional(
            kernel=kernel, bits=bits, train_index=self.sgd.task.train_index(), device=context.device
        )
        path = context.folder / "gp.npz"
        write_npz(path, keys=keys[chosen], log10_p=log10_p)
        return {"functions": len(chosen), **file_record([path])}


@dataclass(frozen=True)
class GpCheckStep(Step):
    """How well the Gaussian-process approximation gives the sampled prior: log10 P_GP(f) by EP beside the
    sampled log10 P(f) for the prior's `functions` most frequent functions. gp_check.csv: key, count,
    log10_p (sampled), log10_p_gp."""

    prior: PriorStep
    functions: int
    kind = "simplicity-gp-check"

    def needs(self) -> tuple[Step, ...]:
        return (self.prior,)

    def step_id(self) -> str:
        return f"{self.prior.step_id()}/{content_id(self.kind, {'functions': self.functions}, self.needs())}"

    def compute(self, context: StepContext) -> dict[str, Any]:
        found = load_functions(self.prior, context.store)
        chosen = np.argsort(-found["counts"], kind="stable")[: self.functions]
        architecture = self.prior.architecture
        length = 2**architecture.n_bits
        kernel = nngp_kernel(inputs(n_bits=architecture.n_bits).numpy(), architecture)
        signs = 2.0 * unpack(found["keys"][chosen], length=length) - 1
        table = pd.DataFrame(
            {
                "key": hex_keys(found["keys"][chosen]),
                "count": found["counts"][chosen],
                "log10_p": np.log10(found["counts"][chosen] / found["counts"].sum()),
                "log10_p_gp": ep_log_probability(kernel, signs, device=context.device) / np.log(10),
                "complexity": found["complexity"][chosen],
            }
        )
        path = context.folder / "gp_check.csv"
        write_csv(table, path)
        return {"functions": len(chosen), **file_record([path])}
