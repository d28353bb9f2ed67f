"""Augmentation of training batches: the batched gather equals shifting each image by hand, draws depend on
(seed, epoch, image) only, and an augmented training differs from a plain one but repeats and resumes
exactly."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_train import RUN, new_model, synthetic_data, train_until_killed, without_seconds

from overparam.augment import SHIFT, augment_batch, epoch_draws
from overparam.config import ConfigError, resolve
from overparam.train import train


def shifted_by_hand(image: torch.Tensor, row: int, column: int, flip: bool) -> torch.Tensor:
    """One image [H, W] whose crop of the SHIFT-padded image starts at (row, column): pixel (i, j) of the
    result is pixel (i + row - SHIFT, j + column - SHIFT) of the original, 0 outside it."""
    height, width = image.shape
    out = torch.zeros_like(image)
    for i in range(height):
        for j in range(width):
            source_i, source_j = i + row - SHIFT, j + column - SHIFT
            if 0 <= source_i < height and 0 <= source_j < width:
                out[i, j] = image[source_i, source_j]
    return out.flip(-1) if flip else out


def test_the_batched_shift_and_flip_equal_each_image_done_by_hand() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 7, 9), generator=generator, dtype=torch.uint8)
    offsets, flips = epoch_draws("shift-flip", seed=3, epoch=2, n=12)
    assert offsets.min() >= 0 and offsets.max() <= 2 * SHIFT and flips.any() and not flips.all()
    batched = augment_batch(images, offsets, flips)
    assert batched.dtype == torch.uint8 and batched.shape == images.shape
    draws = zip(offsets.tolist(), flips.tolist(), strict=True)
    for image, out, ((row, column), flip) in zip(images, batched, draws, strict=True):
        assert torch.equal(out, shifted_by_hand(image, row, column, flip))
    centre = torch.full((12, 2), SHIFT)
    assert torch.equal(augment_batch(images, centre, torch.zeros(12, dtype=torch.bool)), images)


def test_draws_are_a_function_of_seed_and_epoch_and_shift_never_flips() -> None:
    first, again = epoch_draws("shift", seed=0, epoch=1, n=500), epoch_draws("shift", seed=0, epoch=1, n=500)
    assert torch.equal(first[0], again[0]) and not first[1].any()
    assert not torch.equal(first[0], epoch_draws("shift", seed=0, epoch=2, n=500)[0])
    assert not torch.equal(first[0], epoch_draws("shift", seed=1, epoch=1, n=500)[0])
    assert torch.equal(first[0], epoch_draws("shift-flip", seed=0, epoch=1, n=500)[0])  # flips drawn after
    assert epoch_draws("none", seed=0, epoch=1, n=500) is None
    with pytest.raises(ValueError, match="unknown augmentation 'crop'"):
        epoch_draws("crop", seed=0, epoch=1, n=5)


def test_augment_is_part_of_the_run_identity_and_none_keeps_every_earlier_id() -> None:
    assert replace(RUN, augment="none").run_id() == RUN.run_id()
    assert RUN.training()["augment"] == "none"
    assert replace(RUN, augment="shift").run_id() != RUN.run_id()
    assert replace(RUN, augment="shift").run_id() != replace(RUN, augment="shift-flip").run_id()
    assert resolve(preset="smoke", overrides={"augment": "shift"}).runs()[0].augment == "shift"
    with pytest.raises(ConfigError, match="--augment must be one of none, shift, shift-flip, got 'flip'"):
        resolve(preset="smoke", overrides={"augment": "flip"})


def test_an_augmented_training_repeats_differs_from_a_plain_one_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = synthetic_data()
    run = replace(RUN, max_epochs=4, augment="shift-flip", schedule="full")
    reference_model = new_model()
    reference = train(model=reference_model, data=data, run=run, progress=False)
    repeated = train(model=new_model(), data=data, run=run, progress=False)
    assert without_seconds(repeated.metrics) == without_seconds(reference.metrics)
    plain = train(model=new_model(), data=data, run=replace(run, augment="none"), progress=False)
    assert [row["loss"] for row in plain.metrics] != [row["loss"] for row in reference.metrics]

    checkpoint = tmp_path / "checkpoint.pt"
    train_until_killed(data=data, run=run, checkpoint=checkpoint, epochs=2, monkeypatch=monkeypatch)
    resumed_model = new_model()
    resumed = train(model=resumed_model, data=data, run=run, checkpoint=checkpoint, progress=False)
    assert without_seconds(resumed.metrics) == without_seconds(reference.metrics)
    for a, b in zip(resumed_model.state_dict().values(), reference_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
