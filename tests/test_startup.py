"""The command line starts without the modules that only some commands need (issue 10): `overparam --help`
and `overparam status` must stay about as quick as importing torch, which config.py needs anyway."""

import json
import subprocess
import sys
from pathlib import Path

HEAVY = {
    "matplotlib",
    "scipy",
    "torchvision",
    "torch._dynamo",  # torchvision brings it, about half a second
    "torch.utils.flop_counter",  # the benchmark's; torch.profiler cannot be listed: `import torch` loads it
    "pandas",
    "overparam.report",
    "overparam.bench",
    "overparam.figures",
    "overparam.experiments.perturbation.analysis",
}

# Runs in a fresh interpreter: what this test process has imported already would hide the imports.
PROGRAM = """
import contextlib, io, json, sys
from overparam.cli import build_parser, main

build_parser()
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    assert code == 0, (argv, code)
print(json.dumps(sorted(sys.modules)))
"""


def heavy_imports(*commands: list[str]) -> list[str]:
    """The HEAVY modules imported by a fresh interpreter that ran `overparam COMMAND` for each command."""
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, json.dumps(commands)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return sorted(HEAVY & set(json.loads(result.stdout.splitlines()[-1])))


def test_help_imports_no_heavy_module() -> None:
    assert heavy_imports(["--help"], ["status", "--help"], ["bench", "--help"]) == []


def test_status_imports_only_pandas(tmp_path: Path) -> None:
    study = tmp_path / "sweep.toml"
    study.write_text(f'preset = "smoke"\nout = "{tmp_path / "out"}"\n\n[grid]\nwidth = [4, 8]\n')
    # Its table is a DataFrame; no plotting, no torchvision, no scipy.
    assert heavy_imports(["status", str(study), "--store", str(tmp_path / "store")]) == ["pandas"]


def test_executor_choices_are_the_sweeps() -> None:
    from overparam import cli
    from overparam.store import executors

    assert cli.EXECUTORS is executors.EXECUTORS
