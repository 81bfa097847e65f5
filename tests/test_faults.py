"""Fault injection against one uninterrupted run: SIGKILL at random steps and SIGTERM (preemption), corrupt
checkpoints, NaN batches. (A sensor failing mid-run: test_profiling_run.py.)"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from sv_jax import checkpoint as checkpoint_lib
from sv_jax import data_sources
from sv_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 30  # 10 epochs of 3 steps, a checkpoint every 2


def _config(corpus_root):
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.train.num_epochs = STEPS // 3
    config.train.checkpoint_every_steps = 2
    return config


@pytest.fixture(scope="module")
def straight_workdir(corpus_root, tmp_path_factory):
    """The uninterrupted run's workdir (checkpoints of its last 3 checkpoint steps)."""
    workdir = tmp_path_factory.mktemp("straight")
    train.train_and_evaluate(_config(corpus_root), str(workdir))
    return workdir


@pytest.fixture(scope="module")
def straight(straight_workdir):
    """Final parameters of the uninterrupted run."""
    return _final_params(straight_workdir)


@pytest.fixture()
def command(corpus_root, tmp_path):
    config_file = tmp_path / "cfg.py"
    config_file.write_text(f"from configs import tiny\n\n\ndef get_config():\n    config = tiny.get_config()\n"
                           f"    config.data.synthetic.root = {str(corpus_root)!r}\n"
                           f"    config.train.num_epochs = {STEPS // 3}\n    config.train.checkpoint_every_steps = 2\n"
                           f"    config.profile.enabled = True  # the run profiler through every kill\n"
                           f"    return config\n")
    return [sys.executable, "-m", "sv_jax.main", f"--config={config_file}", f"--workdir={tmp_path / 'run'}"]


def _final_params(workdir):
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    return checkpointer.restore_raw(checkpointer.latest_step())["params"]


def _checkpoints(workdir):
    ckpt = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def _start(command):
    return subprocess.Popen(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, workdir, step, timeout_s=300):
    deadline = time.time() + timeout_s
    while proc.poll() is None and time.time() < deadline and not any(s >= step for s in _checkpoints(workdir)):
        time.sleep(0.01)


def _assert_same_params(a, b):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


def test_sigkill_at_three_random_steps_and_sigterm_then_resume_matches_uninterrupted(command, tmp_path, straight):
    workdir = tmp_path / "run"
    targets = sorted(np.random.default_rng(7).choice(np.arange(4, STEPS - 8, 2), 3, replace=False))
    for target in targets:
        proc = _start(command)
        _wait_for_checkpoint(proc, workdir, target)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"finished before the kill at step {target}"
        assert target <= _checkpoints(workdir)[-1] < STEPS

    # Preemption: SIGTERM finishes the step, checkpoints it and exits 0 without evaluating.
    proc = _start(command)
    _wait_for_checkpoint(proc, workdir, _checkpoints(workdir)[-1] + 2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    stopped = _checkpoints(workdir)[-1]
    assert f"stopped by SIGTERM after step {stopped} of {STEPS}" in stderr and stopped < STEPS
    assert not (workdir / "summary.json").exists()  # not finished: no evaluation, no summary
    logged = [json.loads(line)["step"] for line in (workdir / "train_log.jsonl").read_text().splitlines()]
    assert logged[-1] == stopped  # the step it stopped at was finished and logged, then checkpointed

    subprocess.run(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True, capture_output=True)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from_step"] == stopped
    _assert_same_params(_final_params(workdir), straight)
    logged = [json.loads(line)["step"] for line in (workdir / "train_log.jsonl").read_text().splitlines()]
    assert sorted(set(logged)) == list(range(1, STEPS + 1))


def _garble_arrays(step_dir):
    for f in (step_dir / "state").rglob("ocdbt.process_*/d/*"):
        f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))


def _drop_state_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()  # e.g. a copy cut short


@pytest.mark.parametrize("corrupt", [_garble_arrays, _drop_state_metadata])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(corpus_root, straight_workdir, straight, tmp_path,
                                                                  corrupt, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(straight_workdir / "checkpoints", workdir / "checkpoints")
    steps = _checkpoints(workdir)
    assert steps[-1] == STEPS and len(steps) >= 2
    corrupt(workdir / "checkpoints" / str(STEPS))

    summary = train.train_and_evaluate(_config(corpus_root), str(workdir))
    assert summary["resumed_from_step"] == steps[-2] and summary["steps"] == STEPS
    assert f"checkpoint of step {STEPS} in" in caplog.text and "does not restore" in caplog.text
    assert (workdir / "checkpoints" / f"{STEPS}.unreadable").is_dir()  # set aside, not deleted
    _assert_same_params(_final_params(workdir), straight)  # steps after the fallback were redone exactly


def test_no_readable_checkpoint_is_an_error_and_renames_nothing(straight_workdir, tmp_path):
    shutil.copytree(straight_workdir / "checkpoints", tmp_path / "checkpoints")
    checkpointer = checkpoint_lib.Checkpointer(tmp_path)
    state = checkpointer.restore_raw(STEPS)
    for step in _checkpoints(tmp_path):
        _garble_arrays(tmp_path / "checkpoints" / str(step))
    with pytest.raises(checkpoint_lib.UnreadableCheckpointError, match=r"no checkpoint in .*checkpoints restores"):
        checkpointer.restore(state)
    checkpointer.close()
    assert not list((tmp_path / "checkpoints").glob("*.unreadable"))


def _nan_batches_at(monkeypatch, bad_steps, batch_size):
    """Makes the batches of `bad_steps` (of a run from step 0, one process) all NaN."""
    real = data_sources.train_batches

    def train_batches(*args, **kwargs):
        batches = real(*args, **kwargs)
        try:
            for batch in batches:
                if int(batch["index"][-1]) // batch_size + 1 in bad_steps:
                    batch["feats"] = np.full_like(batch["feats"], np.nan)
                yield batch
        finally:
            batches.close()

    monkeypatch.setattr(data_sources, "train_batches", train_batches)


def test_nan_batch_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(corpus_root, tmp_path,
                                                                                    monkeypatch):
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.train.checkpoint_every_steps = 2
    _nan_batches_at(monkeypatch, {5}, config.data.batch_size)
    with pytest.raises(train.NonFiniteLossError, match=r"train/loss is nan at step 5: stopping"):
        train.train_and_evaluate(config, str(tmp_path))
    assert _checkpoints(tmp_path) == [2, 4]
    params = _final_params(tmp_path)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


def test_nan_batch_is_skipped_and_counted_when_configured(corpus_root, tmp_path, monkeypatch):
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.train.update(on_nonfinite="skip", checkpoint_every_steps=1, keep_checkpoints=20)
    _nan_batches_at(monkeypatch, {5, 9}, config.data.batch_size)
    summary = train.train_and_evaluate(config, str(tmp_path))

    assert summary["steps"] == 12 and summary["nonfinite_steps_skipped"] == 2
    checkpointer = checkpoint_lib.Checkpointer(tmp_path)
    before, skipped, after = (checkpointer.restore_raw(step) for step in (4, 5, 6))
    checkpointer.close()
    for key in ("params", "batch_stats", "opt_state"):  # the NaN step changed nothing but the step counter
        jax.tree_util.tree_map(np.testing.assert_array_equal, skipped[key], before[key])
    assert int(skipped["step"]) == 5
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(after["params"]),
                                                        jax.tree_util.tree_leaves(skipped["params"])))
    leaves = jax.tree_util.tree_leaves(_final_params(tmp_path))
    assert all(np.isfinite(x).all() for x in leaves)
    log = {r["step"]: r for r in map(json.loads, (tmp_path / "train_log.jsonl").read_text().splitlines())}
    assert "loss" not in log[5] and log[5]["skipped_steps"] == 1 and log[12]["skipped_steps"] == 2
    assert np.isfinite(log[6]["loss"])


def test_too_many_skipped_steps_in_a_row_stop_the_run_and_inf_gradients_stop_it_too():
    config = tiny.get_config()
    ok, bad = {"loss": 1.0, "nonfinite": 0}, {"loss": float("nan"), "nonfinite": 1}
    config.train.update(on_nonfinite="skip", max_skips_in_a_row=2)
    guard = train._NonFiniteGuard(config.train)
    assert guard.check([ok, bad, bad, ok], first_step=0) == [ok, ok] and guard.skipped == 2
    with pytest.raises(train.NonFiniteLossError, match=r"3 steps in a row up to step 7"):
        guard.check([bad, bad, bad], first_step=4)
    config.train.on_nonfinite = "stop"  # a finite loss with an Inf gradient would make the next state NaN
    with pytest.raises(train.NonFiniteLossError, match=r"a gradient is NaN/Inf \(loss 2\) at step 12"):
        train._NonFiniteGuard(config.train).check([ok, {"loss": 2.0, "nonfinite": 1}], first_step=10)
