import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from overparam.models import build_model
from overparam.runtime import make_deterministic


@pytest.mark.parametrize("name", ["resnet18", "cnn", "mlp"])
def test_no_kernel_reads_memory_it_did_not_write(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """make_deterministic stops PyTorch filling new tensors with NaN; a kernel that read uninitialised
    memory would make the guarded pass (NaN in, NaN out) differ from ours."""
    make_deterministic()
    assert not torch.utils.deterministic.fill_uninitialized_memory
    images, labels = torch.rand(12, 1, 28, 28), torch.arange(12) % 10

    def step(fill: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", fill)
        torch.manual_seed(0)
        model = build_model(name=name, width=4, mean=0.13, std=0.31)
        F.cross_entropy(model(images), labels).backward()
        with torch.inference_mode():
            logits = model.eval()(images)
        return [logits, *(p.grad for p in model.parameters())]

    guarded, ours = step(fill=True), step(fill=False)
    assert all(torch.equal(a, b) for a, b in zip(guarded, ours, strict=True))


def test_sqrt_in_a_fresh_process_is_accurate_to_one_ulp() -> None:
    """The first parallel call of a vector-math function in a process, right after make_deterministic, is
    the call oneMKL's dispatch race can corrupt (pytorch/pytorch#188792): it must be accurate."""
    program = (
        "import torch; from overparam.runtime import make_deterministic; make_deterministic();"
        "torch.set_num_threads(2); g = torch.Generator().manual_seed(0);"
        "x = 1e-3 + torch.rand(1 << 21, generator=g);"
        "exact = x.double().sqrt().float(); ulp = torch.nextafter(exact, torch.tensor(2.0)) - exact;"
        "print(((x.sqrt() - exact).abs() / ulp).max().item())"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert float(result.stdout) <= 1.0
