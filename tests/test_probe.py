import numpy as np
import pandas as pd
import torch

from overparam.blur import blur, blur_matrices
from overparam.models import build_model
from overparam.probe import curves, flip_levels, predict_under_blur


def test_fast_probe_equals_one_image_one_sigma_at_a_time() -> None:
    torch.manual_seed(0)
    model = build_model(name="cnn", width=4, mean=0.13, std=0.31)
    images = torch.randint(0, 256, (23, 28, 28), dtype=torch.uint8)
    sigmas = (0.0, 0.5, 1.0, 3.0)
    fast = predict_under_blur(model, images, sigmas, batch_size=10, progress=False)
    model.eval()
    slow = np.empty((len(sigmas), len(images)), dtype=np.int64)
    with torch.no_grad():
        for s, sigma in enumerate(sigmas):
            for i, image in enumerate(images):
                blurred = blur(image[None].float() / 255, blur_matrices([sigma], 28))[0]
                slow[s, i] = model(blurred[:, None]).argmax().item()
    assert np.array_equal(fast, slow)


def test_flip_level_is_the_first_level_whose_prediction_differs() -> None:
    predictions = np.array([[1, 2, 3, 4], [1, 2, 0, 4], [1, 5, 3, 4], [7, 5, 3, 4]])
    flips = flip_levels(predictions, (0.0, 0.5, 1.0, 2.0))
    assert flips[:3].tolist() == [2.0, 1.0, 0.5]
    assert np.isnan(flips[3])


def test_curves_count_changes_and_agreements_per_group() -> None:
    # four images, three sigmas; images 0-1 mislabelled, 2 clean, 3 test
    predictions = np.array([[0, 1, 2, 3], [0, 5, 2, 3], [4, 5, 2, 9]])
    true = np.array([0, 5, 2, 3])
    assigned = np.array([1, 1, 2, 3])
    groups = {
        "mislabelled": np.array([True, True, False, False]),
        "clean": np.array([False, False, True, False]),
        "test": np.array([False, False, False, True]),
    }
    table = curves(
        predictions=predictions,
        levels=(0.0, 1.0, 2.0),
        true_labels=true,
        assigned_labels=assigned,
        groups=groups,
    )
    mislabelled = table[table.group == "mislabelled"].set_index("level")
    assert mislabelled["n"].tolist() == [2, 2, 2]
    assert mislabelled["changed"].tolist() == [0, 1, 2]
    assert mislabelled["agree_assigned"].tolist() == [1, 0, 0]
    assert mislabelled["agree_true"].tolist() == [1, 2, 1]
    test = table[table.group == "test"].set_index("level")
    assert test["changed"].tolist() == [0, 0, 1]
    assert test["agree_true_fraction"].tolist() == [1.0, 1.0, 0.0]
    assert (table["changed_low"] <= table["changed_fraction"]).all()
    assert (table["changed_fraction"] <= table["changed_high"]).all()
    assert isinstance(table, pd.DataFrame) and len(table) == 9
