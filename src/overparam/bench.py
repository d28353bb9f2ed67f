"""The benchmark of issue 4: our trainer and probe against the ordinary PyTorch way, on the same workload,
model, batch size and optimiser, in one process on one machine.

- **Training**: `overparam.train.train` itself (uint8 tensors on the device, batches by index) against the
  ordinary loop (torchvision's MNIST dataset, a PIL image and `ToTensor` per sample, a shuffling
  `DataLoader`). An epoch is what the trainer does: a step on every image, then the eval-mode accuracy on
  the training and test images; the ordinary loop does the same with `DataLoader`s. Each side runs one
  untimed warm-up epoch first.
- **Probe**: `overparam.probe.predict_under_blur` against a `DataLoader` per sigma with
  `transforms.GaussianBlur` (truncated kernel, reflect padding: the same number of predictions, not the
  same blur), the trained model in eval mode under `torch.no_grad`, the same batch size. Both warm up on a
  slice first.
- **FLOP rate**: FLOPs per image from `torch.utils.flop_counter.FlopCounterMode` on one batch (a training
  step: forward and backward; a prediction: forward), times the images done, over the seconds taken, also
  as a fraction of the measured float32 `torch.mm` peak. The blur's own matmuls are not counted.
- **Profile** (optional, `--profile DIR`): torch.profiler's top operators of one more epoch of our trainer
  and of our probe, after the timings (the profiler's overhead never enters them).
- **Quick preset** (optional): wall time of `overparam reproduce --preset quick --no-report` in a fresh
  store and output folder.

Both sides run under the study's settings (`make_deterministic`, PyTorch's thread count). A shared
machine's speed drifts (on the 2-core development VM, by up to 60 % within a minute), so `--repeats` rounds
each time both sides back to back, and each side's best round counts (for training, its fastest epoch; the
peak too).
"""

import argparse
import copy
import functools
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms
from torchvision.datasets import MNIST, VisionDataset

from overparam.bench_options import Workload
from overparam.config import ConfigError, RunConfig, parse_sigmas
from overparam.data import resolve_data_dir
from overparam.models import INFERENCE_BATCH_SIZE, MaxPool2d, compiled
from overparam.probe import predict_under_blur
from overparam.runs import load_splits, new_model
from overparam.runtime import environment, make_deterministic, select_device
from overparam.store.files import write_csv, write_text
from overparam.train import TrainingData, train

log = logging.getLogger(__name__)
WARM_UP_IMAGES = 256  # images each probe sees untimed before it is timed
MAX_KERNEL_SIZE = 27  # reflect padding needs kernel_size // 2 < 28, the image side


class InMemoryMNIST(MNIST):
    """torchvision's MNIST dataset, with its own `__getitem__` (a PIL image per sample, then `transform`),
    over uint8 images [N, 28, 28] already loaded, so both sides read the same pixels and nothing downloads."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[Any], Any]) -> None:
        VisionDataset.__init__(self, transform=transform)  # MNIST.__init__ would look for its own files
        self.data, self.targets = images.cpu(), labels.cpu()


def blur_kernel_size(sigma: float) -> int:
    """The ordinary probe's odd kernel side in pixels: +-3 sigma, at most MAX_KERNEL_SIZE."""
    return min(2 * math.ceil(3 * sigma) + 1, MAX_KERNEL_SIZE)


def _blur_transform(sigma: float) -> Callable[[Any], torch.Tensor]:
    if sigma == 0:
        return transforms.ToTensor()
    return transforms.Compose(
        [transforms.ToTensor(), transforms.GaussianBlur(blur_kernel_size(sigma), sigma)]
    )


def _loader(device: torch.device, workers: int) -> Callable[..., DataLoader]:
    return functools.partial(DataLoader, num_workers=workers, pin_memory=device.type == "cuda")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(step: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of `step()`, queued device work included."""
    _synchronize(device)
    start = time.perf_counter()
    step()
    _synchronize(device)
    return time.perf_counter() - start


def matmul_peak(*, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Dense float32 matmul rate in FLOP/s: the best of `repeats` timed `size x size` products
    (2 size^3 FLOPs each), after one untimed."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    product = torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b, out=product), device) for _ in range(repeats))
    return 2 * size**3 / best


def forward_flops(model: nn.Module, images: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add, as FlopCounterMode counts) of one eval-mode forward of float images
    [B, 1, H, W]."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    model.train(was_training)
    return counter.get_total_flops()


def training_flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward on float images [B, 1, H, W]; the optimiser's
    update is not counted. Leaves the gradients cleared (BatchNorm statistics do move)."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def ordinary_model(model: nn.Module) -> nn.Module:
    """A copy of `model` with PyTorch's own NCHW max pooling in place of our channels-last one (same
    values), as an ordinary implementation would have it."""
    plain = copy.deepcopy(model)
    for parent in plain.modules():
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2d):
                setattr(parent, name, nn.MaxPool2d(child.kernel_size, child.stride, child.padding))
    return plain


def _accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum((model(x.to(device)).argmax(dim=1) == y.to(device)).sum() for x, y in loader)
    return float(correct) / len(loader.dataset)


def ordinary_training(
    *, model: nn.Module, train_set: MNIST, test_set: MNIST, workload: Workload, device: torch.device
) -> list[dict[str, float]]:
    """The ordinary loop for `workload.epochs + 1` epochs (Adam, one-cycle schedule, shuffling DataLoader);
    per epoch: epoch, loss, train_acc, test_acc and seconds (steps plus both accuracy passes)."""
    loader = _loader(device, workload.workers)
    batches = loader(train_set, batch_size=workload.batch_size, shuffle=True)
    evaluations = [loader(dataset, batch_size=INFERENCE_BATCH_SIZE) for dataset in (train_set, test_set)]
    optimizer = torch.optim.Adam(model.parameters(), lr=workload.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=workload.lr, total_steps=(workload.epochs + 1) * len(batches)
    )
    rows = []
    for epoch in range(1, workload.epochs + 2):
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(labels)
        train_acc, test_acc = (_accuracy(model, evaluation, device) for evaluation in evaluations)
        mean_loss = loss_sum.item() / len(train_set)  # .item() waits for the device
        seconds = time.perf_counter() - start
        rows.append(
            {
                "epoch": epoch,
                "loss": mean_loss,
                "train_acc": train_acc,
                "test_acc": test_acc,
                "seconds": seconds,
            }
        )
    return rows


def ordinary_probe(
    model: nn.Module,
    images: torch.Tensor,
    sigmas: Sequence[float],
    *,
    batch_size: int = INFERENCE_BATCH_SIZE,
    workers: int = 0,
) -> np.ndarray:
    """Eval-mode predictions [len(sigmas), N] int64 of uint8 images [N, 28, 28] the ordinary way: for each
    sigma a DataLoader over torchvision's MNIST with ToTensor and GaussianBlur (none at sigma 0)."""
    device = next(model.parameters()).device
    loader = _loader(device, workers)
    labels = torch.zeros(len(images), dtype=torch.int64)  # the dataset wants targets; a probe ignores them
    model.eval()
    predictions = []
    with torch.no_grad():
        for sigma in sigmas:
            dataset = InMemoryMNIST(images, labels, _blur_transform(sigma))
            batches = loader(dataset, batch_size=batch_size)
            predictions.append(torch.cat([model(x.to(device)).argmax(dim=1).cpu() for x, _ in batches]))
    return torch.stack(predictions).numpy()


def quick_preset_seconds(*, data_dir: Path, device: str, precision: str, compile: bool) -> float:
    """Wall seconds of `overparam reproduce --preset quick --no-report` with our side's precision and
    compile setting, in a subprocess, with a fresh temporary store and output folder (about 7 minutes on a
    2-core CPU)."""
    with tempfile.TemporaryDirectory(prefix="overparam-bench-") as folder:
        paths = ["--store", f"{folder}/store", "--out", f"{folder}/out", "--data-dir", str(data_dir)]
        command = [sys.executable, "-m", "overparam", "reproduce", "--preset", "quick", "--no-report", *paths]
        command += ["--no-download", "--device", device, "--precision", precision]
        command += ["--compile" if compile else "--no-compile"]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        return time.perf_counter() - start


def _best_sides(rounds: list[tuple[float, float]]) -> tuple[float, float]:
    """The fewest seconds of each side, ours and the ordinary way, over the rounds."""
    ours, ordinary = zip(*rounds, strict=True)
    return min(ours), min(ordinary)


def _best_epoch(rows: list[dict[str, Any]]) -> float:
    """Seconds of the fastest epoch after the first, the warm-up."""
    return min(row["seconds"] for row in rows[1:])


def _phase(
    name: str, *, work: float, unit: str, flops: float, seconds: tuple[float, float], peak: float
) -> list[tuple[str, float, float, str]]:
    """Throughput, FLOP rate and fraction of the matmul peak of one phase in which each side did `work`
    units holding `flops` FLOPs, ours in seconds[0], the ordinary way in seconds[1]."""
    ours, baseline = seconds
    return [
        (f"{name}_throughput", work / ours, work / baseline, unit),
        (f"{name}_flop_rate", flops / ours / 1e9, flops / baseline / 1e9, "GFLOP/s"),
        (f"{name}_peak_fraction", flops / ours / peak, flops / baseline / peak, "fraction of matmul peak"),
    ]


def _training_run(workload: Workload, *, epochs: int) -> RunConfig:
    """The workload as a run of exactly `epochs` epochs (a target of inf is never reached)."""
    shared = {
        name: getattr(workload, name)
        for name in ("dataset", "model", "width", "batch_size", "lr", "precision", "compile")
    }
    return RunConfig(
        **shared,
        train_size=workload.images,
        test_size=workload.test_images,
        rate=0.0,
        seed=0,
        max_epochs=epochs,
        target_acc=math.inf,
        sigmas=workload.sigmas,
    )


def profile_phases(
    *, data: TrainingData, workload: Workload, model: nn.Module, folder: Path, rows: int = 15
) -> dict[str, str]:
    """torch.profiler's top `rows` operators by self time (device time on CUDA) of one more epoch of our
    trainer on `model` and of our probe of the training images (both warm from the timed rounds); written
    to `folder/profile-train.txt` and `folder/profile-probe.txt` and returned by phase."""
    device = data.images.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    phases = {
        "train": lambda: train(model=model, data=data, run=_training_run(workload, epochs=1), progress=False),
        "probe": lambda: _our_probe(model, workload)(data.images),
    }
    tables = {}
    for phase, step in phases.items():
        with profile(activities=activities) as profiler:
            step()
            _synchronize(device)
        tables[phase] = profiler.key_averages().table(sort_by=sort_by, row_limit=rows)
        write_text(tables[phase], folder / f"profile-{phase}.txt")
    return tables


def _our_probe(model: nn.Module, workload: Workload) -> Callable[[torch.Tensor], np.ndarray]:
    """Our probe as a study runs it, a function of the uint8 images."""
    return functools.partial(
        predict_under_blur,
        compiled(model, enabled=workload.compile),
        sigmas=workload.sigmas,
        precision=workload.precision,
        progress=False,
    )


def compare_training(
    *, data: TrainingData, workload: Workload, run: RunConfig
) -> tuple[tuple[float, float], nn.Module]:
    """Seconds of the fastest timed epoch of our trainer and of the ordinary loop, each training a fresh
    model of `run` (the workload's, with one warm-up epoch first) on `data`; and the model our trainer
    trained."""
    device = data.images.device
    model = new_model(run).to(device)
    ours = train(model=model, data=data, run=run, progress=False).metrics
    log.info("bench: training, the ordinary DataLoader loop")
    to_tensor = transforms.ToTensor()
    ordinary = ordinary_training(
        model=ordinary_model(new_model(run).to(device)),
        train_set=InMemoryMNIST(data.images, data.assigned_labels, to_tensor),
        test_set=InMemoryMNIST(data.test_images, data.test_labels, to_tensor),
        workload=workload,
        device=device,
    )
    accuracies = ours[-1]["train_acc"], ordinary[-1]["train_acc"]
    log.info("bench: train accuracy after the last epoch: ours %.4f, ordinary %.4f", *accuracies)
    return (_best_epoch(ours), _best_epoch(ordinary)), model


def compare_probe(*, model: nn.Module, images: torch.Tensor, workload: Workload) -> tuple[float, float]:
    """Seconds of `predict_under_blur` and of `ordinary_probe` on uint8 `images` (on the model's device) at
    the workload's sigmas, each after a warm-up on the first WARM_UP_IMAGES."""
    device = images.device
    ours = _our_probe(model, workload)
    ordinary = functools.partial(
        ordinary_probe, ordinary_model(model), sigmas=workload.sigmas, workers=workload.workers
    )
    ours(images[:WARM_UP_IMAGES])
    ours_seconds = _seconds(lambda: ours(images), device)
    cpu_images = images.cpu()  # where the ordinary way keeps its data set
    ordinary(cpu_images[:WARM_UP_IMAGES])
    return ours_seconds, _seconds(lambda: ordinary(cpu_images), device)


def run_benchmark(
    *,
    workload: Workload,
    device: str = "auto",
    data_dir: str | Path | None = None,
    matmul_size: int = 2048,
    repeats: int = 3,
    quick: bool = False,
    profile_to: Path | None = None,
    out: Path | None = None,
) -> pd.DataFrame:
    """Every measurement, one row each: name, ours, baseline (NaN where there is none), unit, ratio
    (ours / baseline), then the workload and machine as columns; written to `out` as CSV when given.
    With `profile_to`, also the operator profiles of `profile_phases`, after the timings."""
    workload.validate()
    if matmul_size < 1 or repeats < 1:
        raise ConfigError(f"--matmul-size and --repeats must be at least 1, got {matmul_size}, {repeats}")
    make_deterministic()
    compute = select_device(device)
    n, m, sigmas = workload.images, workload.test_images, workload.sigmas
    splits = load_splits(dataset=workload.dataset, data_dir=data_dir, download=False, device=str(compute))
    if n > len(splits.train_images) or m > len(splits.test_images):
        raise ConfigError(
            f"--images is at most {len(splits.train_images)}, --test-images at most {len(splits.test_images)}"
        )
    data = TrainingData(
        images=splits.train_images[:n],
        assigned_labels=splits.train_labels[:n],
        mislabelled=torch.zeros(n, dtype=torch.bool, device=compute),
        test_images=splits.test_images[:m],
        test_labels=splits.test_labels[:m],
    )
    run = _training_run(workload, epochs=workload.epochs + 1)  # the first epoch is the warm-up

    # A shared machine's speed drifts: each round times both sides back to back, and the best of the rounds
    # counts for each side (and for the peak).
    peaks, training_rounds, probe_rounds = [], [], []
    for number in range(1, repeats + 1):
        peaks.append(matmul_peak(device=compute, size=matmul_size))
        log.info(
            "bench: round %d of %d, matmul %.1f GFLOP/s; training, ours first",
            number,
            repeats,
            peaks[-1] / 1e9,
        )
        seconds, model = compare_training(data=data, workload=workload, run=run)
        training_rounds.append(seconds)
        log.info("bench: probing %d images x %d sigmas, ours then the ordinary way", n, len(sigmas))
        probe_rounds.append(compare_probe(model=model, images=data.images, workload=workload))
    peak = max(peaks)
    train_seconds, probe_seconds = _best_sides(training_rounds), _best_sides(probe_rounds)

    batch = data.images[: workload.batch_size, None].float().div(255)
    flop_model = new_model(run).to(compute)  # fresh: counting a training step moves BatchNorm statistics
    step_flops = training_flops(flop_model, batch, data.assigned_labels[: len(batch)]) / len(batch)
    prediction_flops = forward_flops(flop_model, batch) / len(batch)
    epoch_flops = n * step_flops + (n + m) * prediction_flops  # steps, then the train and test accuracy
    rows = [("matmul_peak", peak / 1e9, math.nan, "GFLOP/s")]
    rows += _phase(
        "train",
        work=n,
        unit="images/s",
        flops=epoch_flops,
        seconds=train_seconds,
        peak=peak,
    )
    rows += _phase(
        "probe",
        work=n * len(sigmas),
        unit="images x sigmas/s",
        flops=n * len(sigmas) * prediction_flops,
        seconds=probe_seconds,
        peak=peak,
    )
    if profile_to is not None:
        log.info("bench: profiling our training epoch and probe")
        for phase, text in profile_phases(
            data=data, workload=workload, model=model, folder=profile_to
        ).items():
            log.info("bench: top operators of the %s phase\n%s", phase, text)
    if quick:
        log.info("bench: the quick preset end to end (about 13 minutes on a 2-core CPU)")
        rows.append(
            (
                "quick_preset",
                quick_preset_seconds(
                    data_dir=resolve_data_dir(data_dir),
                    device=compute.type,
                    precision=workload.precision,
                    compile=workload.compile,
                ),
                math.nan,
                "s",
            )
        )
    table = pd.DataFrame(rows, columns=["name", "ours", "baseline", "unit"])
    table["ratio"] = table["ours"] / table["baseline"]
    settings = {name: value for name, value in asdict(workload).items() if name != "sigmas"}
    machine = {
        "device": str(compute),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "torch_version": torch.__version__,
    }
    table = table.assign(**settings, sigmas=len(sigmas), **machine)
    if out is not None:
        write_csv(table, out)
    return table


def describe_machine(device: torch.device) -> str:
    """One line: processor, CPU count, PyTorch version and threads, device (and GPU name)."""
    facts = environment(device)
    line = (
        f"{facts['processor']}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{facts['cpu_threads']} threads, device {device}"
    )
    return line + (f" ({facts['gpu']})" if "gpu" in facts else "")


def format_table(table: pd.DataFrame) -> str:
    """The printed form: a header naming the machine and workload, then name, ours, baseline, ratio, unit."""
    first = table.iloc[0]
    header = (
        f"overparam bench on {describe_machine(torch.device(first['device']))}\n"
        f"{first['model']} width {first['width']}, batch {first['batch_size']}, {first['images']} training "
        f"images, {first['test_images']} test images, timed epochs {first['epochs']} (+1 warm-up), "
        f"{first['sigmas']} sigmas, {first['workers']} DataLoader workers, ours {first['precision']}"
        f"{' compiled' if first['compile'] else ''}, best of {first['repeats']} rounds; "
        "ratio = ours / ordinary PyTorch (eager fp32)"
    )
    columns = table[["name", "ours", "baseline", "ratio", "unit"]]
    return header + "\n" + columns.to_string(index=False, float_format="{:.4g}".format, na_rep="-")


def run_command(arguments: argparse.Namespace) -> None:
    """`overparam bench`: measure, print the table, write the CSV."""
    sizes = {f.name: getattr(arguments, f.name) for f in fields(Workload) if f.name != "sigmas"}
    sigmas = tuple(sigma for text in arguments.sigmas for sigma in parse_sigmas(text))
    table = run_benchmark(
        workload=Workload(**sizes, sigmas=sigmas),
        device=arguments.device,
        data_dir=arguments.data_dir,
        matmul_size=arguments.matmul_size,
        repeats=arguments.repeats,
        quick=arguments.quick,
        profile_to=arguments.profile,
        out=arguments.out,
    )
    print(format_table(table))
    print(f"written to {arguments.out}")
