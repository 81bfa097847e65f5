"""The job's Joules over emulated NVML boards (tests/emulated_nvml.py): a training run over named boards, two
processes that emulate two hosts (their Joules summed), and a stuck board flagged. (Two processes of one host
metering a named board list, counted once: the resumed run of tests/test_distributed.py.)"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from configs import tiny
from emulated_nvml import Board, EmulatedNvml, installed
from profiling import energy, sensors
from sv_jax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _power(train_profile) -> float:
    return train_profile["energy_j"] / train_profile["seconds_measured"]


def test_a_training_run_over_named_boards_reports_their_power(corpus_root, tmp_path, monkeypatch):
    """profile.nvml_gpus='0,1' over boards planted at 100 W and 50 W: 150 W; the third board is not metered."""
    monkeypatch.setattr(sensors, "RAPL_ROOT", str(tmp_path / "no-powercap"))
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.profile.enabled = True
    config.profile.update(nvml_gpus="0,1", skip_steps=2, window_steps=4, idle_seconds=0.3, idle_settle_s=0.1,
                          idle_parts=3, peak_tflops=1.0)
    boards = [Board(0, power_w=100.0), Board(1, power_w=50.0), Board(2, power_w=300.0)]
    order = []  # the idle baseline is taken before anything is compiled (it used to follow compilation)
    measure_idle, compile_programs = energy.EnergyMonitor.measure_idle, train.programs_lib.compile_programs
    monkeypatch.setattr(energy.EnergyMonitor, "measure_idle",
                        lambda self, *a, **k: order.append("idle") or measure_idle(self, *a, **k))
    monkeypatch.setattr(train.programs_lib, "compile_programs",
                        lambda *a, **k: order.append("compile") or compile_programs(*a, **k))
    with installed(EmulatedNvml(boards)):
        profile = train.train_and_evaluate(config, str(tmp_path / "run"))["profile"]
    assert order == ["idle", "compile"]
    measured = profile["train"]
    assert _power(measured) == pytest.approx(150.0, rel=0.01)
    assert measured["complete"] is True and measured["sources"] == {"gpu0": "nvml-energy-counter",
                                                                    "gpu1": "nvml-energy-counter"}
    assert profile["eval"]["energy_j"] == pytest.approx(150.0 * profile["eval"]["seconds"], rel=0.02)
    assert profile["idle_w"] == {"gpu0": pytest.approx(100.0, rel=0.02), "gpu1": pytest.approx(50.0, rel=0.02)}
    assert set(profile["idle_w_std"]) == {"gpu0", "gpu1"}
    [meters] = profile["meters"]
    assert [(b["domain"], b["uuid"], b["pci_bus_id"]) for b in meters["boards"]] == [
        (f"gpu{b.index}", b.uuid, b.pci_bus_id) for b in boards[:2]]
    assert measured["mfu"] == pytest.approx(measured["tflops"] / 4)  # 4 CPU devices, peak 1.0 TFLOP/s each
    assert measured["run"]["energy_j"] == pytest.approx(measured["energy_j"]) and measured["run"]["starts"] == 1


def _probe(tmp_path, processes):
    """Runs tests/job_energy_probe.py as len(processes) processes, each {'host', 'boards_w', 'gpus'}."""
    port, env = _free_port(), dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("device_count=4", "device_count=1")
    running = []
    for i, p in enumerate(processes):
        out = tmp_path / f"p{i}" / "out.json"
        out.parent.mkdir()
        running.append((out, subprocess.Popen(
            [sys.executable, str(ROOT / "tests/job_energy_probe.py"), str(out)], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env=env | {"COORDINATOR": f"localhost:{port}", "NUM_PROCESSES": str(len(processes)),
                       "PROCESS_ID": str(i), "SV_JAX_HOST": p["host"], "EMULATED_NVML_W": p["boards_w"],
                       "NVML_GPUS": p["gpus"]})))
    results = []
    for out, proc in running:
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, log[-3000:]
        results.append(json.loads(out.read_text()))
    return results


def test_two_processes_on_two_hosts_report_the_sum_of_their_boards(tmp_path):
    results = _probe(tmp_path, [{"host": "node-a", "boards_w": "100", "gpus": "all"},
                                {"host": "node-b", "boards_w": "60,30", "gpus": "all"}])
    profile = results[0]["summary"]["profile"]
    measured = profile["train"]
    assert _power(measured) == pytest.approx(190.0, rel=0.01)
    seconds = measured["seconds_measured"]
    assert measured["hosts"] == {"node-a": pytest.approx(100.0 * seconds, rel=0.01),
                                 "node-b": pytest.approx(90.0 * seconds, rel=0.01)}
    assert set(measured["sources"]) == {"node-a/gpu0", "node-b/gpu0", "node-b/gpu1"}
    # Per utterance: the job's Joules over the job's utterances (steps x the global batch of 8).
    assert measured["j_per_utt"] == pytest.approx(measured["energy_j"] / (measured["steps_with_energy"] * 8))
    assert profile["eval"]["energy_j"] == pytest.approx(190.0 * profile["eval"]["seconds"], rel=0.02)
    assert [m["host"] for m in profile["meters"]] == ["node-a", "node-b"]
    assert [len(m["boards"]) for m in profile["meters"]] == [1, 2]


def test_a_stuck_board_is_flagged_and_leaves_no_total(tmp_path, monkeypatch):
    from profiling import xla_cost
    from sv_jax import job_meter, run_profiler

    class Writer:
        def write_scalars(self, step, scalars):
            pass

    profile = tiny.get_config().profile
    profile.update(enabled=True, nvml_gpus="all", skip_steps=1, window_steps=2, idle_seconds=0.0)
    monkeypatch.setattr(sensors, "RAPL_ROOT", str(tmp_path / "no-powercap"))
    cost = run_profiler.RunCost(global_batch=8, train_step=xla_cost.ProgramCost(1e9, 1e6, 1),
                                forward=xla_cost.ProgramCost(8e8, 1e6, 1), forward_batch=8,
                                forward_flops_per_utt_analytic=1e8, memory=None, peak_tflops=None,
                                peak_source="none")
    with installed(EmulatedNvml([Board(0, power_w=100.0), Board(1, power_w=50.0, stuck_counter=True)])):
        job = job_meter.start(profile)
        with run_profiler.RunProfiler(profile, tmp_path, cost, writer=Writer(), job=job) as profiler:
            for step in range(1, 6):
                time.sleep(0.3)
                profiler.step(step, None)
        summary = profiler.summary(5)["profile"]["train"]
    windows = [json.loads(line) for line in (tmp_path / "energy.jsonl").read_text().splitlines()]
    assert windows and all(w["complete"] is False and "energy_j" not in w for w in windows)
    assert all(w["energy"].startswith("missing: no figure for gpu1") for w in windows)
    assert all(any(m.startswith("gpu1: its energy counter did not move") for m in w["warnings"]) for w in windows)
    assert summary["windows_incomplete"] == len(windows) and summary["energy"].startswith("unavailable")


def test_the_runs_energy_adds_up_every_restart_from_energy_jsonl(tmp_path, monkeypatch):
    """summary.json's train.run: every (re)start's measured windows, not only the last one's."""
    from profiling import xla_cost
    from sv_jax import reporting, run_profiler

    class Writer:
        def write_scalars(self, step, scalars):
            pass

    earlier = [{"seconds": 2.0, "step_start": 6, "step_end": 10, "steps": 5, "energy_j": 300.0, "run_start_step": 0},
               {"seconds": 2.0, "step_start": 11, "step_end": 15, "steps": 5, "energy": "missing: ...",
                "run_start_step": 0}]
    for record in earlier:
        reporting.append_jsonl(tmp_path / "energy.jsonl", record)
    profile = tiny.get_config().profile
    profile.update(enabled=True, skip_steps=1, window_steps=2, idle_seconds=0.0)
    cost = run_profiler.RunCost(global_batch=8, train_step=xla_cost.ProgramCost(1e9, 1e6, 1),
                                forward=xla_cost.ProgramCost(8e8, 1e6, 1), forward_batch=8,
                                forward_flops_per_utt_analytic=1e8, memory=None, peak_tflops=None,
                                peak_source="none")
    clock = sensors.FakeClock()
    monitor = energy.EnergyMonitor([sensors.FakeSensor({"gpu0": 50.0}, clock)], clock=clock, background=False)
    with run_profiler.RunProfiler(profile, tmp_path, cost, writer=Writer(), start_step=15, monitor=monitor) as p:
        for step in range(16, 21):
            clock.advance(1.0)
            p.step(step, None)
    train_profile = p.summary(20)["profile"]["train"]
    assert train_profile["energy_j"] == pytest.approx(50.0 * 3)  # this start: steps 17-20, 3 s
    run = train_profile["run"]
    assert run["energy_j"] == pytest.approx(300.0 + 150.0) and run["starts"] == 2
    assert run["windows"] == 4 and run["windows_with_energy"] == 3
    assert run["kwh"] == pytest.approx(450.0 / 3.6e6)
