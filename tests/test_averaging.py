"""Checkpoint averaging (sv_jax/averaging.py): WeSpeaker's avg_model over the last checkpoints, at the end of
training and as `--mode=average`; what inference then uses, and resuming after it."""

import json

import numpy as np
import pytest

from configs import tiny
from sv_jax import averaging, commands, train
from sv_jax import checkpoint as checkpoint_lib


def _state(value):
    """A stand-in train state: params, BN statistics and an optimizer state (which averaging leaves out)."""
    return {"params": {"backbone": {"w": np.full((2, 3), value, np.float32)}, "head": {"weight": np.full(
        (3,), 2 * value, np.float32)}}, "batch_stats": {"backbone": {"mean": np.full((3,), -value, np.float32)}},
        "opt_state": {"m": np.zeros(3, np.float32)}, "step": np.asarray(int(value), np.int32)}


def _save(workdir, steps_and_values, off_cadence=()):
    checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=None)
    for step, value in steps_and_values:
        checkpointer.save(step, _state(value), {"step": step, "on_cadence": step not in off_cadence})
    checkpointer.close()


def test_the_average_of_two_known_checkpoints_is_their_mean(tmp_path):
    # Step 25 was written on a preemption signal: not on the cadence, so not averaged.
    _save(tmp_path, [(10, 1.0), (20, 4.0), (25, 100.0), (30, 8.0)], off_cadence={25})
    variables, steps = averaging.average_last(tmp_path, 2)
    assert steps == [20, 30]
    np.testing.assert_array_equal(variables["params"]["backbone"]["w"], np.full((2, 3), 6.0, np.float32))
    np.testing.assert_array_equal(variables["params"]["head"]["weight"], np.full((3,), 12.0, np.float32))
    np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["mean"], np.full((3,), -6.0, np.float32))
    assert "opt_state" not in variables
    saved, meta = averaging.latest_average(tmp_path, 30)
    assert meta["averaged_steps"] == [20, 30]
    np.testing.assert_array_equal(saved["params"]["backbone"]["w"], variables["params"]["backbone"]["w"])
    assert averaging.latest_average(tmp_path, 40) is None  # training went on: the newer checkpoint is used


def test_fewer_checkpoints_than_asked_are_averaged_with_a_warning(tmp_path, caplog):
    _save(tmp_path, [(5, 3.0)])
    variables, steps = averaging.average_last(tmp_path, 10)
    assert steps == [5] and "averaging 1 checkpoints (steps [5]), not 10" in caplog.text
    np.testing.assert_array_equal(variables["params"]["backbone"]["w"], np.full((2, 3), 3.0, np.float32))
    with pytest.raises(commands.MissingInputError, match="no training checkpoint"):
        averaging.average_last(tmp_path / "empty", 2)


def test_enough_checkpoints_are_kept_for_the_average():
    assert averaging.checkpoints_to_keep(3, 10) == 11  # the last 10, plus one written on a preemption signal
    assert averaging.checkpoints_to_keep(3, 0) == averaging.checkpoints_to_keep(3, 1) == 3
    assert averaging.checkpoints_to_keep(20, 10) == 20


def test_training_evaluates_the_average_and_resumes_from_the_last_state(corpus_root, tmp_path):
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.train.update(average_last=2, checkpoint_every_steps=3)  # 12 steps: checkpoints 3, 6, 9, 12
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["eval_checkpoint"] == "average of steps [9, 12]"
    assert checkpoint_lib.Checkpointer(tmp_path).all_steps() == [6, 9, 12]  # max(keep 3, 2 + 1)
    report = commands.run("eval", config, str(tmp_path))
    assert report["checkpoint"] == "average of steps [9, 12]" and report["step"] == 12
    assert report["eval"]["trials"] == pytest.approx(summary["eval"]["trials"], rel=1e-5)
    # More epochs: training resumes from step 12's train state (not from the average) and averages again.
    config.train.num_epochs = 6
    resumed = train.train_and_evaluate(config, str(tmp_path))
    assert resumed["resumed_from_step"] == 12 and resumed["steps"] == 18
    assert resumed["eval_checkpoint"] == "average of steps [15, 18]"
    # --mode=average on the workdir: another count, kept as the workdir's average, evaluated.
    averaged = commands.run("average", config, str(tmp_path), average_last=3)
    assert averaged["averaged_steps"] == [12, 15, 18] and averaged["checkpoint"] == "average of steps [12, 15, 18]"
    assert json.loads((tmp_path / "eval.json").read_text())["checkpoint"] == "average of steps [12, 15, 18]"
