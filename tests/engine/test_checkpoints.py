"""Checkpoint policy: last.ckpt holds the training state, best / epoch checkpoints the weights only; which
rank writes; resume vs init; saving and stopping in the middle of an epoch."""
import json
import os

import numpy as np
import pytest

import mindspore as ms
import mindspore.dataset as ds
import mindspore.nn as nn

from src.checkpoint import CheckpointError
from src.engine.checkpoints import Position, StepCheckpoints, TrainingCheckpoints
from src.engine.loop import EpochRunner, JsonLog, train_epochs
from src.engine.optimizer import LearningRates, poly_lr
from src.engine.train_step import TrainStep

STEPS_PER_EPOCH, BATCH = 5, 2
INPUTS = np.random.default_rng(0).standard_normal((STEPS_PER_EPOCH * BATCH, 4)).astype(np.float32)


class ToyLoss(nn.Cell):
    """(x (B, 4)) -> the five losses a TrainStep expects (total, bce, dice, aux, proposal), from one Dense layer."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(4, 1, weight_init="ones", bias_init="zeros")

    def construct(self, x):
        loss = ((self.dense(x) - 1.0) ** 2).mean()
        return loss, loss, loss, loss, loss


def toy_train_step():
    loss_net = ToyLoss()
    step = TrainStep(loss_net, nn.AdamWeightDecay(loss_net.trainable_params(), learning_rate=0.1), clip_norm=0.0)
    step.set_train(True)
    return step


def train_once(step):
    step(ms.Tensor(np.array([0.1], np.float32)), ms.Tensor(INPUTS[:BATCH]))


def saved(path):
    return ms.load_checkpoint(str(path))


def weight_names(train_step):
    return {param.name for param in train_step.network.get_parameters()}


@pytest.fixture(scope="module")
def trained_output(tmp_path_factory):
    """An output folder after one epoch on rank 0, with a new best -> (train step, folder)."""
    output = tmp_path_factory.mktemp("output")
    step = toy_train_step()
    train_once(step)
    checkpoints = TrainingCheckpoints(step, str(output), save_epochs=1)
    checkpoints.offer_best(0.5)
    checkpoints.save(1, STEPS_PER_EPOCH, new_best=True)
    return step, output


def test_last_ckpt_holds_the_training_state(trained_output):
    step, output = trained_output
    last = saved(output / "last.ckpt")
    assert int(last["training_state"].asnumpy()) == 1
    assert any(name.startswith("adam_m.") for name in last) and any(name.startswith("adam_v.") for name in last)
    assert weight_names(step) < set(last)
    assert [int(last[key].asnumpy()) for key in ("epoch", "step_in_epoch", "step")] == [1, 0, STEPS_PER_EPOCH]
    assert float(last["best_oiou"].asnumpy()) == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["best.ckpt", "coupalign_epoch001.ckpt"])
def test_best_and_epoch_checkpoints_hold_weights_only(trained_output, name):
    step, output = trained_output
    weights = saved(output / name)
    assert set(weights) == weight_names(step) | {"epoch", "step", "best_oiou"}
    np.testing.assert_array_equal(weights["dense.weight"].asnumpy(), step.network.dense.weight.asnumpy())


def test_other_ranks_write_nothing_unless_save_all_ranks(tmp_path):
    step = toy_train_step()
    quiet, kept = tmp_path / "quiet", tmp_path / "kept"
    for folder, save_all_ranks in ((quiet, False), (kept, True)):
        checkpoints = TrainingCheckpoints(step, str(folder), rank_id=1, save_epochs=1, save_all_ranks=save_all_ranks)
        checkpoints.offer_best(0.5)
        checkpoints.save(1, STEPS_PER_EPOCH, new_best=True)
        StepCheckpoints(checkpoints, STEPS_PER_EPOCH, save_every_steps=1)(1, 1, STEPS_PER_EPOCH + 1)
    assert not quiet.exists() or not any(quiet.rglob("*"))
    assert sorted(str(path.relative_to(kept)) for path in kept.rglob("*.ckpt")) == [os.path.join("rank_1", "last.ckpt")]


def test_resume_from_weights_only_is_refused_naming_the_file_to_use(trained_output, tmp_path):
    step, output = trained_output
    checkpoints = TrainingCheckpoints(toy_train_step(), str(tmp_path))
    with pytest.raises(CheckpointError, match="weights only") as refused:
        checkpoints.start(resume_ckpt=str(output / "best.ckpt"))
    message = str(refused.value)
    assert f"resume from {output / 'last.ckpt'}" in message and "--init_ckpt" in message and "\n" not in message
    alone = tmp_path / "alone.ckpt"
    alone.write_bytes((output / "best.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match="resume from a last.ckpt written by train.py"):
        checkpoints.start(resume_ckpt=str(alone))


def test_resume_continues_at_the_saved_position(trained_output, tmp_path):
    step, output = trained_output
    resumed = toy_train_step()
    checkpoints = TrainingCheckpoints(resumed, str(tmp_path))
    assert checkpoints.start(resume_ckpt=str(output / "last.ckpt")) == Position(1, 0, STEPS_PER_EPOCH)
    assert checkpoints.best_oiou == pytest.approx(0.5)
    np.testing.assert_array_equal(resumed.optimizer.moments1[0].asnumpy(), step.optimizer.moments1[0].asnumpy())


def test_resume_with_accumulation_from_a_run_without_starts_with_empty_buffers(trained_output, tmp_path, capsys):
    step, output = trained_output
    loss_net = ToyLoss()
    accumulating = TrainStep(loss_net, nn.AdamWeightDecay(loss_net.trainable_params(), learning_rate=0.1),
                             clip_norm=0.0, accum_steps=2)
    accumulating.set_train(True)
    checkpoints = TrainingCheckpoints(accumulating, str(tmp_path))
    assert checkpoints.start(resume_ckpt=str(output / "last.ckpt")) == Position(1, 0, STEPS_PER_EPOCH)
    assert "accumulation starts empty" in capsys.readouterr().out
    np.testing.assert_array_equal(loss_net.dense.weight.asnumpy(), step.network.dense.weight.asnumpy())
    assert not any(buffer.asnumpy().any() for buffer in accumulating.accum_grads)
    assert int(accumulating.accum_count.asnumpy()) == 0


def test_checkpoint_from_before_the_marker_still_resumes(trained_output, tmp_path):
    """Files of the earlier layout: AdamW moments and the epoch, no training_state entry."""
    step, output = trained_output
    old_style = tmp_path / "old_last.ckpt"
    entries = [{"name": name, "data": value} for name, value in saved(output / "last.ckpt").items()
               if name not in ("training_state", "step_in_epoch")]
    ms.save_checkpoint(entries, str(old_style))
    checkpoints = TrainingCheckpoints(toy_train_step(), str(tmp_path))
    assert checkpoints.start(resume_ckpt=str(old_style)) == Position(1, 0, STEPS_PER_EPOCH)


@pytest.mark.parametrize("name", ["best.ckpt", "last.ckpt"])
def test_init_ckpt_loads_the_weights_and_starts_a_fresh_run(trained_output, tmp_path, name):
    step, output = trained_output
    fresh = toy_train_step()
    checkpoints = TrainingCheckpoints(fresh, str(tmp_path))
    assert checkpoints.start(init_ckpt=str(output / name)) == Position(0, 0, 0)
    assert checkpoints.best_oiou == -1.0
    np.testing.assert_array_equal(fresh.network.dense.weight.asnumpy(), step.network.dense.weight.asnumpy())
    assert not fresh.optimizer.moments1[0].asnumpy().any()


def test_init_ckpt_must_hold_every_parameter(trained_output, tmp_path):
    _, output = trained_output
    incomplete = tmp_path / "incomplete.ckpt"
    ms.save_checkpoint([{"name": "dense.weight", "data": ms.Tensor(np.ones((1, 4), np.float32))}], str(incomplete))
    with pytest.raises(CheckpointError, match="missing.*dense.bias"):
        TrainingCheckpoints(toy_train_step(), str(tmp_path)).start(init_ckpt=str(incomplete))


class SavedPositions:
    """Stands in for TrainingCheckpoints: records every save_position call."""

    def __init__(self):
        self.calls = []

    def save_position(self, epoch, step_in_epoch, global_step):
        self.calls.append((epoch, step_in_epoch, global_step))


def test_step_checkpoints_save_every_n_steps_but_not_at_the_epoch_end():
    positions = SavedPositions()
    hook = StepCheckpoints(positions, steps_per_epoch=4, save_every_steps=2)
    stops = [hook(epoch, step, epoch * 4 + step) for epoch in (0, 1) for step in range(1, 5)]
    assert positions.calls == [(0, 2, 2), (1, 2, 6)] and not any(stops)


def test_step_checkpoints_stop_after_the_steps_of_this_run_and_save_there():
    positions = SavedPositions()
    hook = StepCheckpoints(positions, steps_per_epoch=4, stop_after_steps=3)
    assert [hook(1, step, 4 + step) for step in (2, 3, 4)] == [False, False, True]
    assert positions.calls == []  # the third step ends the epoch, whose own checkpoint follows
    hook = StepCheckpoints(positions, steps_per_epoch=4, stop_after_steps=1)
    assert hook(0, 1, 1) and positions.calls == [(0, 1, 1)]


def toy_run(output, stop_after_steps=0, resume=False):
    """One toy epoch of STEPS_PER_EPOCH steps through EpochRunner and train_epochs -> its train step."""
    step = toy_train_step()
    checkpoints = TrainingCheckpoints(step, str(output))
    start = checkpoints.start(resume_ckpt=str(output / "last.ckpt") if resume else "")
    rates = LearningRates(poly_lr(0.1, STEPS_PER_EPOCH), [1.0])
    runner = EpochRunner(step, rates, JsonLog(None), STEPS_PER_EPOCH, 1, BATCH, log_interval=10)
    runner.after_step = StepCheckpoints(checkpoints, STEPS_PER_EPOCH, stop_after_steps=stop_after_steps)
    runner.global_step = start.global_step

    def make_data(epoch, skip_batches):
        return ds.NumpySlicesDataset({"x": INPUTS}, shuffle=False).batch(BATCH).skip(skip_batches)

    train_epochs(runner, make_data, range(start.epoch, 1), lambda epoch: None, checkpoints, start.step_in_epoch)
    return step


def test_a_run_stopped_mid_epoch_and_resumed_ends_like_a_straight_run(tmp_path):
    straight = toy_run(tmp_path / "straight").network.dense.weight.asnumpy()
    toy_run(tmp_path / "split", stop_after_steps=2)
    assert int(saved(tmp_path / "split" / "last.ckpt")["step_in_epoch"].asnumpy()) == 2
    resumed = toy_run(tmp_path / "split", resume=True)
    np.testing.assert_allclose(resumed.network.dense.weight.asnumpy(), straight, rtol=1e-6)
    assert int(saved(tmp_path / "split" / "last.ckpt")["step"].asnumpy()) == STEPS_PER_EPOCH


def test_a_resumed_log_moves_the_stopped_runs_later_records_aside(tmp_path):
    """Killed at step 14 of 10-step epochs, resumed from the checkpoint of step 10 (end of epoch 1)."""
    path = tmp_path / "train_log.jsonl"
    lines = [json.dumps({"epoch": 1, "step": step, "loss": 1.0}) for step in range(1, 11)]
    lines.append(json.dumps({"epoch": 1, "mean_loss": 1.0}))
    later = [json.dumps({"epoch": 2, "step": step, "loss": 0.5}) for step in range(11, 15)]
    path.write_text("\n".join(lines + later) + '\n{"epoch": 2, "st')
    log = JsonLog(str(path))
    assert log.continue_from(Position(1, 0, 10), "out/last.ckpt") == 5
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[:-1] == [json.loads(line) for line in lines]
    assert records[-1] == {"resumed_from": "out/last.ckpt", "epochs_done": 1, "step": 10, "superseded_records": 5}
    assert (tmp_path / "train_log.superseded.jsonl").read_text() == "\n".join(later) + '\n{"epoch": 2, "st\n'
    # a second resume from the same checkpoint keeps the log as it is, apart from its own record
    assert log.continue_from(Position(1, 0, 10), "out/last.ckpt") == 0
    assert [json.loads(line) for line in path.read_text().splitlines()][:-1] == records


def test_a_log_resumed_mid_epoch_keeps_the_finished_epochs_record(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in (
        {"epoch": 1, "step": 10}, {"epoch": 1, "mean_loss": 1.0}, {"epoch": 2, "step": 15},
        {"epoch": 2, "step": 16}, {"epoch": 2, "mean_loss": 0.5})) + "\n")
    assert JsonLog(str(path)).continue_from(Position(1, 5, 15), "last.ckpt") == 2
    assert [json.loads(line).get("step") for line in path.read_text().splitlines()] == [10, None, 15, 15]
    assert JsonLog(None).continue_from(Position(1, 5, 15), "last.ckpt") == 0
