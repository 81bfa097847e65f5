"""Fault injection: SIGKILL at random steps, SIGTERM (preemption), against one uninterrupted run."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from sv_jax import checkpoint as checkpoint_lib
from sv_jax import input as input_lib
from sv_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 60  # 20 epochs of 3 steps, a checkpoint every 2


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    from data_pipeline import synthetic
    root = tmp_path_factory.mktemp("corpus") / "synthetic"
    synthetic.generate_corpus(root, input_lib.synthetic_spec(tiny.get_config().data), num_workers=1)
    return root


def _config(corpus_root):
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.train.num_epochs = STEPS // 3
    config.train.checkpoint_every_steps = 2
    return config


@pytest.fixture(scope="module")
def straight(corpus_root, tmp_path_factory):
    """Final parameters of the uninterrupted run."""
    workdir = tmp_path_factory.mktemp("straight")
    train.train_and_evaluate(_config(corpus_root), str(workdir))
    return _final_params(workdir)


@pytest.fixture()
def command(corpus_root, tmp_path):
    config_file = tmp_path / "cfg.py"
    config_file.write_text(f"from configs import tiny\n\n\ndef get_config():\n    config = tiny.get_config()\n"
                           f"    config.data.synthetic.root = {str(corpus_root)!r}\n"
                           f"    config.train.num_epochs = {STEPS // 3}\n    config.train.checkpoint_every_steps = 2\n"
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


def test_sigkill_at_five_random_steps_then_resume_matches_uninterrupted(command, tmp_path, straight):
    workdir = tmp_path / "run"
    targets = sorted(np.random.default_rng(7).choice(np.arange(4, STEPS - 4, 2), 5, replace=False))
    for target in targets:
        proc = _start(command)
        _wait_for_checkpoint(proc, workdir, target)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"finished before the kill at step {target}"
        assert target <= _checkpoints(workdir)[-1] < STEPS
    subprocess.run(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True, capture_output=True)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from_step"] >= targets[-1]
    _assert_same_params(_final_params(workdir), straight)
    logged = [json.loads(line)["step"] for line in (workdir / "train_log.jsonl").read_text().splitlines()]
    assert sorted(set(logged)) == list(range(1, STEPS + 1))


def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(command, tmp_path, straight):
    workdir = tmp_path / "run"
    proc = _start(command)
    _wait_for_checkpoint(proc, workdir, 10)
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
