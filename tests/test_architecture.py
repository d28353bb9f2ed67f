"""The layers (shell > experiments > core), the independence of experiments and the absence of import
cycles are import-linter contracts (pyproject.toml): they hold for the source, and each one breaks, naming
the offending line, on a copy of the source with one deliberate violation."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_source_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken", "named"),
    [
        (
            "stats.py",
            "from overparam import cli",
            "shell > experiments > core",
            "overparam.stats -> overparam.cli",
        ),
        (
            "experiments/label_errors/judge.py",
            "from overparam.experiments.lottery import summary",
            "experiments are independent of one another",
            "overparam.experiments.label_errors.judge ->",
        ),
        ("results.py", "from overparam import figures", "no import cycle", ".results -> .figures"),
    ],
)
def test_a_deliberate_violation_breaks_its_contract(
    tmp_path: Path, module: str, line: str, broken: str, named: str
) -> None:
    shutil.copytree(
        ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "src" / "overparam" / module).open("a") as file:
        file.write(f"{line}  # deliberately against the architecture\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert f"{broken} BROKEN" in result.stdout
    assert named in result.stdout
