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


def test_proposal_diagnostics_by_hand():
    from src.evaluation import proposal_diagnostics
    top = np.zeros((4, 4), bool)
    top[:2] = True
    left = np.zeros((4, 4), bool)
    left[:, :2] = True
    logits = lambda mask: np.where(mask, 2.0, -2.0)  # noqa: E731
    proposals = np.stack([logits(top), logits(top), logits(left)])[None]
    weights = np.array([[0.5, 0.5, 0.0]])
    combined = logits(left)[None, None]
    values = proposal_diagnostics(proposals, weights, combined, top[None])
    # pairs: top/top 1, top/left 4/12 twice; entropy ln 2 / ln 3; the best proposal is exact, M is 1/3
    np.testing.assert_allclose(values, [[(1 + 1 / 3 + 1 / 3) / 3, np.log(2) / np.log(3), 1.0, 1 / 3]])


def test_wrong_object_diagnostics_by_hand():
    from src.evaluation import wrong_object_diagnostics
    target = np.zeros((4, 4), bool)
    target[:2, :2] = True
    other = np.zeros((4, 4), bool)
    other[2:, 2:] = True
    both = target | other
    empty = np.zeros((4, 4), bool)
    # predictions: the other object exactly (wrong object), both objects (IoU 1/2 with the target: not wrong),
    # nothing (IoU 0 with the target, 0 with the other: not wrong), the other object in an image whose
    # same-class slots are empty (no such object known: not wrong, no same-class object)
    pred = np.stack([other, both, empty, other])
    targets = np.stack([target] * 4)
    same_class = np.zeros((4, 2, 4, 4), np.uint8)
    same_class[:3, 0] = other
    count = np.array([1, 1, 1, 0])
    values = wrong_object_diagnostics(pred, targets, same_class, count)
    np.testing.assert_array_equal(values, [[1, 1], [0, 1], [0, 1], [0, 0]])


def test_wrong_object_share_counts_only_samples_with_a_same_class_object():
    from src.evaluation import DIAGNOSTICS, SAME_CLASS_DIAGNOSTICS, diagnostics_summary
    rows = np.array([[0.2, 0.5, 0.4, 0.3, 1, 1], [0.4, 0.5, 0.6, 0.5, 0, 1], [0.6, 0.5, 0.8, 0.7, 0, 0],
                     [0.8, 0.5, 1.0, 0.9, 0, 1]])
    summary = diagnostics_summary(DIAGNOSTICS + SAME_CLASS_DIAGNOSTICS, rows)
    assert summary["wrong_object_share"] == pytest.approx(1 / 3)
    assert summary["proposal_pairwise_iou"] == pytest.approx(0.5) and summary["combined_iou"] == pytest.approx(0.6)
    assert "wrong_object" not in summary and "has_same_class" not in summary
    no_same_class = rows.copy()
    no_same_class[:, 5] = 0
    assert "wrong_object_share" not in diagnostics_summary(DIAGNOSTICS + SAME_CLASS_DIAGNOSTICS, no_same_class)
    assert "wrong_object_share" not in diagnostics_summary(DIAGNOSTICS, rows[:, :4])


def test_validation_diagnostics_join_the_metrics_without_changing_them(tmp_path, tiny_checkpoint):
    from model_utils.config import get_config
    from src.data.dataset import create_dataset
    from src.data.synthetic import generate_synthetic
    from src.evaluation import DIAGNOSTICS, evaluate_split
    from tests.conftest import TINY_CONFIG
    from tests.data.test_build_mindrecord import convert
    generate_synthetic(str(tmp_path / "data"), num_images=20, seed=8)
    convert(str(tmp_path / "data"), str(tmp_path / "mr"), "--splits", "val")
    config = get_config([], TINY_CONFIG, overrides={"mindrecord_dir": str(tmp_path / "mr")})
    net = tiny_checkpoint[0]
    plain = evaluate_split(net, create_dataset(config, "val", training=False, with_ids=True))
    data = create_dataset(config, "val", training=False, with_ids=True, same_class_masks=True)
    inspected = evaluate_split(net, data, diagnostics=True)
    assert {key: inspected[key] for key in plain} == plain
    assert all(0.0 <= inspected[key] <= 1.0 for key in DIAGNOSTICS)
    has_same_class = any(batch["same_class_count"].any() for batch in data.create_dict_iterator(output_numpy=True))
    assert ("wrong_object_share" in inspected) == has_same_class
    if has_same_class:
        assert 0.0 <= inspected["wrong_object_share"] <= 1.0


def test_inspecting_a_network_keeps_its_parameter_names(tiny_config):
    from src.models.coupalign import CoupAlign
    from src.models.inspection import WithProposals
    net = CoupAlign.from_config(tiny_config)
    names = [param.name for param in net.get_parameters()]
    WithProposals(net)
    assert [param.name for param in net.get_parameters()] == names
