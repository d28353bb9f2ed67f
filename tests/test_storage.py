import errno
from pathlib import Path

import pandas as pd
import pytest
import torch

from overparam.cli import main
from overparam.store.files import CorruptFileError, OutputError, load_checked, save_checked, write_csv


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "table.csv"
    write_csv(pd.DataFrame({"a": [1, 2]}), path)
    monkeypatch.setattr(pd.DataFrame, "to_csv", no_space)
    with pytest.raises(OutputError, match="No space left on device; free some space"):
        write_csv(pd.DataFrame({"a": [3]}), path)
    monkeypatch.undo()
    assert pd.read_csv(path)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_checked_files_round_trip_and_detect_damage(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    save_checked({"w": torch.arange(5.0)}, path)
    assert torch.equal(load_checked(path)["w"], torch.arange(5.0))
    raw = path.read_bytes()
    for damaged in (raw[:-1], raw[:40], raw[:100] + bytes([raw[100] ^ 1]) + raw[101:], b""):
        path.write_bytes(damaged)
        with pytest.raises(CorruptFileError, match="does not match its checksum"):
            load_checked(path)


def test_a_full_disk_mid_study_exits_1_and_keeps_earlier_results(
    placement: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "reproduce",
        "--preset",
        "smoke",
        "--train-size",
        "200",
        "--test-size",
        "100",
        "--max-epochs",
        "1",
        "--no-report",
    ]
    common += placement
    assert main([*common, "--rates", "0"]) == 0
    before = (tmp_path / "out" / "curves.csv").read_bytes()
    monkeypatch.setattr(torch, "save", no_space)  # the disk fills while the next run saves its checkpoint
    assert main([*common, "--rates", "0"]) == 0  # finished runs need no writing
    assert main(["reproduce", *common[1:], "--rates", "0", "0.05", "--out", str(tmp_path / "second")]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert (tmp_path / "out" / "curves.csv").read_bytes() == before
