"""Metrics by hand."""
import numpy as np
import pytest

from src.evaluation import RefSegMetrics, format_table


def masks(*rows):
    return np.array(rows, dtype=bool).reshape(len(rows), 1, -1)


def test_metrics_equal_hand_computed_values():
    metrics = RefSegMetrics()
    pred = masks([0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0])
    gt = masks([1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 1])
    ious = metrics.update(pred, gt)
    # empty prediction: 0/2; empty union: 0 by definition; perfect: 2/2; partial: 2/4
    np.testing.assert_allclose(ious, [0.0, 0.0, 1.0, 0.5])
    result = metrics.result()
    assert result["oIoU"] == pytest.approx((0 + 0 + 2 + 2) / (2 + 0 + 2 + 4))
    assert result["mIoU"] == pytest.approx(1.5 / 4)
    assert result["prec@0.5"] == pytest.approx(2 / 4)
    assert result["prec@0.6"] == pytest.approx(1 / 4)
    assert result["prec@0.9"] == pytest.approx(1 / 4)
    assert result["num_samples"] == 4
    assert "| split |" in format_table({"val": result})


def test_metrics_accumulate_over_batches():
    metrics = RefSegMetrics()
    metrics.update(masks([1, 0]), masks([1, 1]))
    metrics.update(masks([1, 1]), masks([1, 1]))
    assert metrics.result()["oIoU"] == pytest.approx(3 / 4)
