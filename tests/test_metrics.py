"""Tests of `weclip_hf.metrics`: the confusion-matrix mean IoU and the offline `evaluate` module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from weclip_hf.metrics import MEAN_IOU_MODULE_PATH
from weclip_hf.metrics.functional import (
    MeanIoU,
    confusion_matrix,
    nan_to_none,
    per_class_iou,
    scores_from_confusion,
)

NUM_LABELS = 6
IGNORE = 255

# Example of the Hub `mean_iou` docstring (three maps of different sizes, num_labels=10).
HUB_PREDICTIONS = [
    [[1, 2], [3, 4], [5, 255]],
    [[2, 7], [9, 2], [3, 6]],
    [[2, 2, 3], [8, 2, 4], [3, 255, 2]],
]
HUB_REFERENCES = [
    [[0, 3], [5, 4], [6, 255]],
    [[1, 7], [9, 2], [3, 6]],
    [[1, 2, 2], [8, 2, 1], [3, 255, 1]],
]
HUB_EXPECTED = {
    "mean_iou": 0.4775,
    "mean_accuracy": 0.5916666666666666,
    "overall_accuracy": 0.5263157894736842,
    "per_category_iou": [0.0, 0.0, 0.375, 0.4, 0.5, 0.0, 0.5, 1.0, 1.0, 1.0],
    "per_category_accuracy": [0.0, 0.0, 0.75, 2 / 3, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0],
}


def random_maps(
    seed: int, shape: tuple[int, ...] = (3, 9, 11), ref_out_of_range: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Label maps with ignore pixels, out-of-range predictions and class 4 absent from both maps
    (`ref_out_of_range`: references outside [0, NUM_LABELS) that are not IGNORE too)."""
    rng = np.random.default_rng(seed)
    ref_values = [0, 1, 2, 3, 5, IGNORE] + ([-2, 6, 9] if ref_out_of_range else [])
    ref_p = (
        [0.3, 0.2, 0.2, 0.1, 0.1, 0.1]
        if not ref_out_of_range
        else [0.25, 0.2, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05]
    )
    ref = rng.choice(ref_values, size=shape, p=ref_p)
    pred = rng.choice(
        [0, 1, 2, 3, 5, IGNORE, -1, 7], size=shape, p=[0.2, 0.2, 0.2, 0.2, 0.1, 0.04, 0.03, 0.03]
    )
    return pred, ref


def reference_areas(
    pred: np.ndarray, ref: np.ndarray, num_labels: int, hub: bool, ignore_index: int = IGNORE
) -> np.ndarray:
    """Per-pixel loop: `[3, num_labels]` intersection, prediction and reference areas.

    `hub=True` counts each side when it is in range (the Hub's separate histograms); `hub=False` counts a
    pixel only when both sides are in range (the confusion-matrix rule of `confusion_matrix`).
    """
    areas = np.zeros((3, num_labels))
    for p, r in zip(pred.reshape(-1).tolist(), ref.reshape(-1).tolist(), strict=True):
        if r == ignore_index:
            continue
        p_in, r_in = 0 <= p < num_labels, 0 <= r < num_labels
        if not hub and not (p_in and r_in):
            continue
        if p_in and p == r:
            areas[0, p] += 1
        if p_in:
            areas[1, p] += 1
        if r_in:
            areas[2, r] += 1
    return areas


def reference_scores(areas: np.ndarray) -> dict[str, object]:
    """Hub formulas from areas, written out per class."""
    iou, acc = [], []
    for inter, area_pred, area_ref in areas.T.tolist():
        union = area_pred + area_ref - inter
        iou.append(inter / union if union else float("nan"))
        acc.append(inter / area_ref if area_ref else float("nan"))
    return {
        "mean_iou": float(np.mean([v for v in iou if v == v])),
        "mean_accuracy": float(np.mean([v for v in acc if v == v])),
        "overall_accuracy": areas[0].sum() / areas[2].sum(),
        "per_category_iou": np.array(iou),
        "per_category_accuracy": np.array(acc),
    }


def assert_scores_equal(actual: dict, expected: dict) -> None:
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert actual[key] == pytest.approx(expected[key], abs=1e-12), key
    for key in ("per_category_iou", "per_category_accuracy"):
        np.testing.assert_allclose(
            np.asarray(actual[key]), np.asarray(expected[key]), atol=1e-12, err_msg=key
        )


def test_confusion_matrix_matches_per_pixel_reference():
    pred, ref = random_maps(0)
    cm = confusion_matrix(torch.as_tensor(pred), torch.as_tensor(ref), NUM_LABELS, ignore_index=IGNORE)
    assert cm.dtype == torch.long and cm.shape == (NUM_LABELS, NUM_LABELS)
    expected = np.zeros((NUM_LABELS, NUM_LABELS), dtype=np.int64)
    for p, r in zip(pred.reshape(-1).tolist(), ref.reshape(-1).tolist(), strict=True):
        if r != IGNORE and 0 <= r < NUM_LABELS and 0 <= p < NUM_LABELS:
            expected[r, p] += 1
    np.testing.assert_array_equal(cm.numpy(), expected)
    # numpy input, single maps and uint8 give the same counts
    np.testing.assert_array_equal(confusion_matrix(pred, ref, NUM_LABELS).numpy(), expected)
    per_image = sum(
        confusion_matrix(p, r.astype(np.uint8), NUM_LABELS) for p, r in zip(pred, ref, strict=True)
    )
    np.testing.assert_array_equal(per_image.numpy(), expected)


def test_confusion_matrix_drops_labels_just_outside_the_classes():
    """Without ``out_of_range_bin`` a pair with a label of ``num_labels`` or -1, prediction or reference, is not
    counted (a prediction of ``num_labels`` kept would count as the next reference's class 0)."""
    pred = torch.tensor([[0, 3, -1, 1, 2]])
    ref = torch.tensor([[0, 0, 1, 3, 2]])
    expected = torch.zeros(3, 3, dtype=torch.long)
    expected[0, 0] = expected[2, 2] = 1
    torch.testing.assert_close(confusion_matrix(pred, ref, 3, ignore_index=None), expected)


def test_a_one_by_one_matrix_with_an_out_of_range_bin_is_refused():
    """With ``out_of_range_bin`` the last row and column are the bin: a 1 x 1 matrix holds no class."""
    with pytest.raises(
        ValueError, match=r"`cm` with `out_of_range_bin=True` must be at least 2x2, got shape \(1, 1\)"
    ):
        scores_from_confusion(np.ones((1, 1)), out_of_range_bin=True)


def test_scores_match_per_pixel_reference_with_absent_class():
    pred, ref = random_maps(1)
    scores = scores_from_confusion(confusion_matrix(pred, ref, NUM_LABELS))
    expected = reference_scores(reference_areas(pred, ref, NUM_LABELS, hub=False))
    assert_scores_equal(scores, expected)
    assert np.isnan(scores["per_category_iou"][4]) and np.isnan(scores["per_category_accuracy"][4])
    assert isinstance(scores["mean_iou"], float) and scores["per_category_iou"].dtype == np.float64


def test_predicted_but_absent_class_counts_as_zero():
    ref = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 2], [1, 1]])
    scores = scores_from_confusion(confusion_matrix(pred, ref, 3))
    np.testing.assert_allclose(scores["per_category_iou"], [0.5, 1.0, 0.0])
    assert scores["mean_iou"] == pytest.approx(0.5)
    assert np.isnan(scores["per_category_accuracy"][2]) and scores["mean_accuracy"] == pytest.approx(0.75)


def test_hub_docstring_example():
    metric = MeanIoU(num_labels=10, ignore_index=255)
    for pred, ref in zip(HUB_PREDICTIONS, HUB_REFERENCES, strict=True):
        metric.update(np.array(pred), torch.tensor(ref))
    assert_scores_equal(metric.compute(), HUB_EXPECTED)


@pytest.mark.parametrize("ignore_index", [IGNORE, 0], ids=["ignore_255", "ignore_0"])
def test_mean_iou_counts_out_of_range_labels_as_the_hub(ignore_index: int):
    """Out-of-range predictions and (non-ignored) references count towards the areas as in the Hub metric;
    with ignore_index=0 the 255 borders are such references (VOC scored without ignoring them)."""
    pred, ref = random_maps(4, ref_out_of_range=True)
    metric = MeanIoU(NUM_LABELS, ignore_index=ignore_index)
    metric.update(pred[:2], ref[:2])
    metric.update(torch.as_tensor(pred[2:]), torch.as_tensor(ref[2:]))
    assert metric.confusion.shape == (NUM_LABELS + 1, NUM_LABELS + 1)
    expected = reference_scores(reference_areas(pred, ref, NUM_LABELS, hub=True, ignore_index=ignore_index))
    assert_scores_equal(metric.compute(), expected)
    # the plain confusion matrix drops those pixels: a different mIoU on these maps
    dropped = scores_from_confusion(confusion_matrix(pred, ref, NUM_LABELS, ignore_index=ignore_index))
    assert abs(dropped["mean_iou"] - expected["mean_iou"]) > 1e-3
    cm = confusion_matrix(pred, ref, NUM_LABELS, ignore_index=ignore_index, out_of_range_bin=True)
    assert torch.equal(cm, metric.confusion)
    assert_scores_equal(scores_from_confusion(cm, out_of_range_bin=True), expected)


def test_nan_to_num_changes_per_category_only():
    ref = np.array([[0, 0], [IGNORE, 0]])
    scores = scores_from_confusion(confusion_matrix(ref, ref, 3), nan_to_num=0)
    np.testing.assert_array_equal(scores["per_category_iou"], [1.0, 0.0, 0.0])
    assert scores["mean_iou"] == 1.0 and scores["mean_accuracy"] == 1.0


def test_label_map_uses_original_labels_and_applies_to_references_only():
    ref = np.array([[1, 2, 3]])
    pred = np.array([[2, 1, 3]])
    cm = confusion_matrix(pred, ref, 4, label_map={1: 2, 2: 1})  # a swap: needs the original labels
    np.testing.assert_array_equal(np.diag(cm.numpy()), [0, 1, 1, 1])
    assert cm.sum() == 3


def test_reduce_labels_shifts_references_and_ignores_background():
    ref = np.array([[0, 1, 2, 255]])
    pred = np.array([[0, 0, 1, 0]])  # predictions are not shifted
    cm = confusion_matrix(pred, ref, 3, reduce_labels=True)
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0] = expected[1, 1] = 1  # reference 1 -> 0, 2 -> 1; 0 and 255 -> 255 (ignored)
    np.testing.assert_array_equal(cm.numpy(), expected)


def test_accumulator_reset_and_cross_process_sum():
    pred, ref = random_maps(2, shape=(4, 5, 7))
    whole = MeanIoU(NUM_LABELS)
    whole.update(pred, ref)
    halves = [MeanIoU(NUM_LABELS), MeanIoU(NUM_LABELS)]
    halves[0].update(pred[:2], ref[:2])
    halves[1].update(torch.as_tensor(pred[2:]), torch.as_tensor(ref[2:]))
    # what `accelerator.reduce(metric.confusion, "sum")` does across processes
    halves[0].confusion = torch.stack([m.confusion for m in halves]).sum(0)
    assert torch.equal(halves[0].confusion, whole.confusion)
    assert_scores_equal(halves[0].compute(), whole.compute())
    whole.reset()
    assert whole.confusion.sum() == 0


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 3, 4), int), np.zeros((2, 4, 3), int), 3)
    with pytest.raises(ValueError, match="num_labels"):
        confusion_matrix(np.zeros((3, 4), int), np.zeros((3, 4), int), 0)
    with pytest.raises(TypeError, match="pred"):
        confusion_matrix(np.zeros((3, 4)), np.zeros((3, 4), int), 3)
    for floats in (torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.complex64)):  # tensors too: not truncated
        with pytest.raises(TypeError, match="`ref` must hold integer labels"):
            confusion_matrix(torch.zeros(3, 4, dtype=torch.long), floats, 3)
    with pytest.raises(ValueError, match="square"):
        scores_from_confusion(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="maps of several sizes go one"):
        confusion_matrix([np.zeros((2, 2), int), np.zeros((3, 3), int)], [np.zeros((2, 2), int)] * 2, 3)
    for not_a_count in (True, 2.0, torch.tensor(2.0), "2"):
        with pytest.raises(ValueError, match="num_labels"):
            MeanIoU(not_a_count)


def test_boolean_maps_count_as_labels_0_and_1():
    """Boolean maps (a binary segmentation) count as labels 0 and 1, as NumPy arrays and tensors alike."""
    g = np.random.default_rng(0)
    pred, ref = g.random((2, 5, 6)) > 0.5, g.random((2, 5, 6)) > 0.5
    expected = confusion_matrix(pred.astype(np.int64), ref.astype(np.int64), 2)
    assert int(expected.sum()) == pred.size and torch.equal(confusion_matrix(pred, ref, 2), expected)
    assert torch.equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(ref), 2), expected)


def test_num_labels_of_numpy_and_torch_integers():
    """A count computed from the maps (``labels.max() + 1``) is a numpy or 0-d torch integer."""
    pred, ref = random_maps(5)
    expected = confusion_matrix(pred, ref, NUM_LABELS)
    with_int = MeanIoU(NUM_LABELS)
    with_int.update(pred, ref)
    for count in (np.int64(NUM_LABELS), np.uint8(NUM_LABELS), torch.tensor(NUM_LABELS)):
        assert torch.equal(confusion_matrix(pred, ref, count), expected)
        metric = MeanIoU(count)
        metric.update(pred, ref)
        assert metric.num_labels == NUM_LABELS and type(metric.num_labels) is int
        assert torch.equal(metric.confusion, with_int.confusion)


def test_ignore_index_none_drops_no_pixel():
    """As the Hub metric (``label != None`` is all True): every pixel counts, 255 as an out-of-range label."""
    pred = np.array([[0, 1, 2, 255]])
    ref = np.array([[0, 255, 2, 1]])
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0] = expected[2, 2] = 1
    np.testing.assert_array_equal(confusion_matrix(pred, ref, 3, ignore_index=None).numpy(), expected)
    metric = MeanIoU(3, ignore_index=None)
    metric.update(pred, ref)
    # 0 and 2 right; reference 255 (predicted 1) and reference 1 (predicted 255) both count against class 1
    assert metric.confusion.sum() == 4
    assert_scores_equal(
        metric.compute(), reference_scores(reference_areas(pred, ref, 3, hub=True, ignore_index=None))
    )


EVALUATE_SCRIPT = """
import json, sys
import numpy as np
import evaluate

inputs = json.loads(sys.stdin.read())
metric = evaluate.load(inputs["path"], keep_in_memory=True)
out = {}
for name, case in inputs["cases"].items():
    preds = [np.array(p, dtype=case.pop("dtype", "int64")) for p in case.pop("predictions")]
    refs = [np.array(r, dtype=np.int64) for r in case.pop("references")]
    if "label_map" in case:
        case["label_map"] = {int(k): v for k, v in case["label_map"].items()}
    try:
        res = metric.compute(predictions=preds, references=refs, **case)
        out[name] = {k: np.asarray(v).tolist() for k, v in res.items()}
    except ValueError as err:
        out[name] = {"error": str(err)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def evaluate_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Runs the bundled module through `evaluate.load` offline in a fresh process (one `evaluate` import)."""
    pred, ref = random_maps(3)
    oor_pred, oor_ref = random_maps(5, ref_out_of_range=True)
    lm_pred, lm_ref = np.array([[2, 1, 3, 0]]), np.array([[1, 2, 3, 0]])
    cases = {
        "hub": {
            "predictions": HUB_PREDICTIONS,
            "references": HUB_REFERENCES,
            "num_labels": 10,
            "ignore_index": 255,
        },
        "random": {
            "predictions": pred.tolist(),
            "references": ref.tolist(),
            "num_labels": NUM_LABELS,
            "ignore_index": 255,
        },
        "nan": {
            "predictions": [[[0, 0]]],
            "references": [[[0, 0]]],
            "num_labels": 3,
            "ignore_index": 255,
            "nan_to_num": 0,
        },
        "label_map": {
            "predictions": [lm_pred.tolist()],
            "references": [lm_ref.tolist()],
            "num_labels": 4,
            "ignore_index": 255,
            "label_map": {1: 2, 2: 1},
            "reduce_labels": True,
        },
        "fractional": {
            "predictions": [[[0.9, 1.9]]],
            "references": [[[0, 1]]],
            "num_labels": 2,
            "ignore_index": 255,
            "dtype": "float32",
        },
        "whole_floats": {
            "predictions": [[[0.0, 1.0]]],
            "references": [[[0, 1]]],
            "num_labels": 2,
            "ignore_index": 255,
            "dtype": "float32",
        },
        "shape": {
            "predictions": [[[0, 1]]],
            "references": [[[0], [1]]],
            "num_labels": 2,
            "ignore_index": 255,
        },
        "out_of_range_255": {
            "predictions": oor_pred.tolist(),
            "references": oor_ref.tolist(),
            "num_labels": NUM_LABELS,
            "ignore_index": 255,
        },
        "out_of_range_0": {
            "predictions": oor_pred.tolist(),
            "references": oor_ref.tolist(),
            "num_labels": NUM_LABELS,
            "ignore_index": 0,
        },
        "out_of_range_label_map": {
            "predictions": oor_pred.tolist(),
            "references": oor_ref.tolist(),
            "num_labels": NUM_LABELS,
            "ignore_index": 255,
            "label_map": {9: 1, 1: 9},
            "reduce_labels": True,
        },
    }
    cache = tmp_path_factory.mktemp("hf_cache")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cache / "modules"), HF_HOME=str(cache))
    env["OMP_NUM_THREADS"] = "1"  # small inputs; avoids thread contention on shared CPUs
    stdin = json.dumps({"path": MEAN_IOU_MODULE_PATH, "cases": cases})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EVALUATE_SCRIPT)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cache / "modules").is_dir()
    inputs = {"random": (pred, ref), "out_of_range": (oor_pred, oor_ref)}
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"_inputs": inputs}


def test_evaluate_load_offline_reproduces_hub_example(evaluate_results: dict):
    assert Path(MEAN_IOU_MODULE_PATH, "weclip_mean_iou.py").is_file()
    assert_scores_equal(evaluate_results["hub"], HUB_EXPECTED)


def test_evaluate_module_matches_hub_semantics_reference(evaluate_results: dict):
    pred, ref = evaluate_results["_inputs"]["random"]
    result = {k: np.array(v, dtype=np.float64) for k, v in evaluate_results["random"].items()}
    assert_scores_equal(result, reference_scores(reference_areas(pred, ref, NUM_LABELS, hub=True)))


def test_evaluate_module_agrees_with_functional_on_in_range_maps(evaluate_results: dict):
    lm_pred, lm_ref = np.array([[2, 1, 3, 0]]), np.array([[1, 2, 3, 0]])
    functional = scores_from_confusion(
        confusion_matrix(lm_pred, lm_ref, 4, label_map={1: 2, 2: 1}, reduce_labels=True)
    )
    assert_scores_equal(
        {k: np.array(v, dtype=float) for k, v in evaluate_results["label_map"].items()}, functional
    )
    assert evaluate_results["nan"]["per_category_iou"] == [1.0, 0.0, 0.0]
    assert "shape" in evaluate_results["shape"]["error"]
    # a float map is read as labels only when it holds whole numbers (truncating 0.9 to 0 scored 1.0 here)
    assert "fractional values" in evaluate_results["fractional"]["error"]
    assert evaluate_results["whole_floats"]["mean_iou"] == 1.0


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("out_of_range_255", {"ignore_index": 255}),
        ("out_of_range_0", {"ignore_index": 0}),
        ("out_of_range_label_map", {"ignore_index": 255, "label_map": {9: 1, 1: 9}, "reduce_labels": True}),
    ],
)
def test_mean_iou_matches_the_evaluate_module_on_out_of_range_labels(
    evaluate_results: dict, case: str, kwargs
):
    """The bundled module (bit-identical to the Hub `mean_iou`) is the oracle."""
    pred, ref = evaluate_results["_inputs"]["out_of_range"]
    metric = MeanIoU(NUM_LABELS, **kwargs)
    for p, r in zip(pred, ref, strict=True):
        metric.update(p, r)
    oracle = {k: np.array(v, dtype=np.float64) for k, v in evaluate_results[case].items()}
    assert_scores_equal(metric.compute(), oracle)


def test_per_class_iou_names_the_classes_and_gives_none_for_nan():
    cm = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # class 2 in neither predictions nor references
    scores = scores_from_confusion(cm)
    ious = per_class_iou(scores["per_category_iou"], {0: "background", 1: "cat", 2: "dog"})
    assert ious == {"background": 0.75, "cat": pytest.approx(2 / 3), "dog": None}
    assert json.loads(json.dumps(ious, allow_nan=False)) == ious
    assert nan_to_none(float("nan")) is None and nan_to_none(np.float64(0.5)) == 0.5
    assert type(nan_to_none(np.float64(0.5))) is float


def test_confusion_matrix_drops_an_ignore_index_within_the_labels():
    from weclip_hf.metrics import confusion_matrix

    pred = torch.tensor([[0, 1, 2, 1]])
    ref = torch.tensor([[0, 0, 2, 1]])
    cm = confusion_matrix(pred, ref, 3, ignore_index=0)
    assert cm[0].sum() == 0 and int(cm.sum()) == 2


def test_an_evaluation_without_a_scored_pixel_gives_nan_means_without_a_warning():
    """With every pixel ignored no class is present: the means are NaN (what the reports write as null), never 0,
    and numpy's 'mean of empty slice' warning is not raised."""
    metric = MeanIoU(3)
    metric.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), IGNORE))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = metric.compute()
    assert np.isnan(scores["mean_iou"]) and np.isnan(scores["mean_accuracy"])
    assert np.isnan(scores["per_category_iou"]).all() and nan_to_none(scores["mean_iou"]) is None
