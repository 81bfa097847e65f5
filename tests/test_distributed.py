"""Multi-process training with jax.distributed: 2 processes on localhost (CPU, 2 devices each, gloo collectives),
stopped by a SIGTERM to one of them and resumed, train the same steps as one process with 4 devices and the same
global batch."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from sv_jax import checkpoint as checkpoint_lib
from sv_jax import distributed
from sv_jax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


STEPS = 12  # 4 epochs of 3 steps, a checkpoint every 3


def _config(corpus):
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus)
    config.data.dither = 0.0  # the dither noise is seeded per process batch, so it depends on the process layout
    config.train.num_epochs = STEPS // 3
    return config


def test_two_processes_train_like_one_and_stop_together_on_sigterm(corpus_root, tmp_path):
    corpus = corpus_root
    workdir = tmp_path / "two"
    flags = [f"--config={ROOT / 'configs/tiny.py'}", f"--workdir={workdir}", f"--config.data.synthetic.root={corpus}",
             "--config.data.dither=0.0", f"--config.train.num_epochs={STEPS // 3}", "--num_processes=2"]
    env = os.environ | {"XLA_FLAGS": os.environ["XLA_FLAGS"].replace("device_count=4", "device_count=2")}

    def start(*extra, main=("-m", "sv_jax.main"), env=env):
        port = _free_port()
        return [subprocess.Popen([sys.executable, *main, *flags, *extra, f"--coordinator_address=localhost:{port}",
                                  f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for i in range(2)]

    def finish(processes):
        outputs = [p.communicate(timeout=600)[0] for p in processes]
        for i, (p, out) in enumerate(zip(processes, outputs)):
            assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
        return outputs

    # A scheduler's notice to one process: JAX's preemption service stops both at the same step, checkpointed.
    processes = start()
    checkpoints = workdir / "checkpoints"
    deadline = time.time() + 600
    while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert time.time() < deadline and all(p.poll() is None for p in processes), "no checkpoint written"
        time.sleep(0.01)
    processes[1].send_signal(signal.SIGTERM)
    outputs = finish(processes)
    assert "process 0 of 2: 2 local of 4 devices" in outputs[0]
    stops = [re.findall(r"stopped by SIGTERM \(JAX preemption service\) after step (\d+) of", out) for out in outputs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops
    stopped = int(stops[0][0])
    assert stopped < STEPS and (checkpoints / str(stopped)).is_dir() and not (workdir / "summary.json").exists()

    # The same command resumes both; here with profiling on, over an emulated NVML on this "host" (boards at 100 W
    # and 50 W, metered as a named list: by process 0 alone, so counted once).
    finish(start("--config.profile.enabled=True", "--config.profile.nvml_gpus=0,1", "--config.profile.skip_steps=1",
                 "--config.profile.window_steps=3", "--config.profile.idle_seconds=0.2",
                 "--config.profile.idle_settle_s=0", main=(str(ROOT / "tests/emulated_nvml_main.py"),),
                 env=env | {"EMULATED_NVML_W": "100,50", "EMULATED_NVML_NO_RAPL": "1"}))

    one = train.train_and_evaluate(_config(corpus), str(tmp_path / "one"), devices=jax.devices()[:4])
    two_log = [json.loads(line) for line in (workdir / "train_log.jsonl").read_text().splitlines()]
    one_log = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two_log] == [r["step"] for r in one_log] == list(range(1, STEPS + 1))
    # Same utterances, crops and features in each global batch, in another row order, so the losses agree up to the
    # order of float sums: gloo's all-reduce and each process's reductions add in another order than one process.
    # Before training has moved the two apart that difference is rounding alone; it then compounds over SGD steps
    # (8.5e-5 relative by step 18 on a 2-core AVX2-only EPYC, under 1e-5 on AVX-512), so later steps get a drift
    # bound with >10x margin. It still catches a wrong batch: one utterance repeated or skipped in a batch of 8
    # moves the loss by percents (the resume bug this test found moved it by up to 13%).
    two_losses, one_losses = [r["loss"] for r in two_log], [r["loss"] for r in one_log]
    np.testing.assert_allclose(two_losses[:3], one_losses[:3], rtol=1e-5)
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-3)
    # The same data, exactly: each process resumed and ended at its own position of the stream (process i reads
    # positions i, i + 2, ...; STEPS steps of 4 rows each), as one process reading all of them does.
    positions = [checkpoint_lib.Checkpointer(w).read_meta(STEPS)["next_positions"] for w in (workdir, tmp_path / "one")]
    rows = STEPS * 8
    assert positions == [[rows - 1, rows], [rows]], positions
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == one["steps"] == STEPS and summary["resumed_from_step"] == stopped
    measured = summary["profile"]["train"]  # the job's power: 150 W, not 300 W (both processes) or 0 W
    assert measured["energy_j"] / measured["seconds_measured"] == pytest.approx(150.0, rel=0.01)
    assert measured["mfu"] is None or measured["mfu"] > 0
    first, second = summary["profile"]["meters"]
    assert [b["domain"] for b in first["boards"]] == ["gpu0", "gpu1"] and second["boards"] == []
    assert "metered by process 0 of" in second["left_to_another_process"]["nvml"]
    assert len(summary["devices"]) == 4
    # Only process 0 writes events (one file per start) and summaries; both took part in the checkpoints.
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 2


def test_partial_multiprocess_flags_are_an_error():
    with pytest.raises(ValueError, match="--coordinator_address, --num_processes and --process_id together"):
        distributed.initialize("localhost:1234", 2, None)
    with pytest.raises(ValueError, match=r"--process_id=2 must be in \[0, 2\)"):
        distributed.initialize("localhost:1234", 2, 2)
    distributed.initialize()  # nothing asked for: nothing done
    assert jax.process_count() == 1


def test_each_process_resumes_its_own_share_of_the_stream(caplog):
    meta = {"next_position": 17, "next_positions": [16, 17], "step": 2}
    assert [train._resume_position(meta, i, 2) for i in range(2)] == [16, 17]
    assert train._resume_position({"next_position": 8, "step": 1}, 0, 1) == 8  # one process, older checkpoints
    assert train._resume_position(meta, 0, 1) == 17 and "written by 2 processes, this run has 1" in caplog.text
