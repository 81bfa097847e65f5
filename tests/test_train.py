"""End-to-end training on the tiny synthetic corpus: summary, 1 vs 4 devices, bad input (faults: test_faults.py)."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from sv_jax import checkpoint as checkpoint_lib
from sv_jax import commands, train
from sv_jax import data_sources, reporting

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(corpus_root, **train_overrides):
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.train.update(train_overrides)
    return config


def _final_params(workdir):
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    return checkpointer.restore_raw(checkpointer.latest_step())["params"]


def _losses(workdir):
    lines = (pathlib.Path(workdir) / "train_log.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


@pytest.fixture(scope="module")
def trained(corpus_root, tmp_path_factory):
    """One uninterrupted tiny run on all 4 (fake) devices: (workdir, summary)."""
    workdir = tmp_path_factory.mktemp("run")
    return workdir, train.train_and_evaluate(_config(corpus_root), str(workdir))


def test_run_writes_summary_checkpoints_and_events(trained):
    workdir, summary = trained
    on_disk = json.loads((workdir / "summary.json").read_text())
    assert on_disk["steps"] == summary["steps"] == 12
    assert on_disk["params"] > 0 and on_disk["wall_seconds"] > 0
    assert set(on_disk["train"]) >= {"loss", "accuracy"} and np.isfinite(on_disk["train"]["loss"])
    assert on_disk["throughput_utt_per_s"] > 0
    trials = on_disk["eval"]["trials"]
    assert set(trials) >= {"eer_percent", "min_dcf_p01", "min_dcf_p05", "num_trials"}
    assert 0.0 <= trials["eer_percent"] <= 100.0 and trials["num_trials"] > 0
    assert on_disk["data"]["bad_audio_skipped"] == 0
    assert checkpoint_lib.Checkpointer(workdir).latest_step() == 12
    assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert sorted(_losses(workdir)) == list(range(1, 13))


def test_eval_and_extract_modes_use_the_checkpoint(trained, tmp_path):
    workdir, summary = trained
    config = _config(pathlib.Path(summary["config"]["data"]["synthetic"]["root"]))
    report = commands.run("eval", config, str(workdir))
    assert report["step"] == 12
    assert report["eval"]["trials"]["eer_percent"] == pytest.approx(summary["eval"]["trials"]["eer_percent"])
    # One 200-frame bucket in batches of 4 utterances: full batches (no padding rows) on the 4 devices, and
    # different padding than above; the scores must not change.
    config.eval.bucket_frames, config.eval.batch_frames = 200, 800
    small = commands.run("eval", config, str(workdir))
    assert small["eval"]["trials"] == pytest.approx(report["eval"]["trials"], rel=1e-5, abs=1e-5)
    wavs = sorted(pathlib.Path(config.data.synthetic.root, "test").rglob("*.wav"))[:3]
    audio_list = tmp_path / "list.txt"
    audio_list.write_text("\n".join(map(str, wavs)))
    commands.run("extract", config, str(workdir), audio_list=str(audio_list), output=str(tmp_path / "e.npy"))
    embeddings = np.load(tmp_path / "e.npy")
    assert embeddings.shape == (3, config.model.embed_dim) and np.isfinite(embeddings).all()


def test_one_device_and_four_devices_give_the_same_losses(corpus_root, tmp_path):
    """The same global batch split over 4 devices or kept on 1: the same program, up to reduction order."""
    assert len(jax.devices()) == 4
    config = _config(corpus_root, num_epochs=2)
    train.train_and_evaluate(config, str(tmp_path / "four"))
    train.train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
    four, one = _losses(tmp_path / "four"), _losses(tmp_path / "one")
    assert sorted(one) == sorted(four) == list(range(1, 7))
    np.testing.assert_allclose([one[s] for s in sorted(one)], [four[s] for s in sorted(one)], rtol=1e-4)


def test_corrupt_training_and_evaluation_audio_is_named_or_skipped(corpus_root, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(corpus_root, root)
    bad = sorted((root / "train").rglob("*.wav"))[5]
    bad.write_bytes(b"RIFF\x00\x00garbage, not a wave file")
    config = _config(root, num_epochs=1)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        train.train_and_evaluate(config, str(tmp_path / "error"))
    bad_eval = sorted((root / "test").rglob("*.wav"))[2]
    bad_eval.write_bytes(b"")
    config.data.on_bad_audio = "skip"
    summary = train.train_and_evaluate(config, str(tmp_path / "skip"))
    assert summary["data"]["bad_audio_skipped"] == 1 and summary["data"]["bad_audio_files"] == [str(bad)]
    assert summary["steps"] == 3
    # Evaluation leaves out the trials that use the skipped file, and says how many.
    key = str(bad_eval.relative_to(root / "test"))
    trials = data_sources.resolve_data(config.data, str(tmp_path)).trials[0]
    uses_bad = sum(key in (e, t) for e, t in zip(trials.enroll, trials.test))
    assert uses_bad > 0 and summary["eval"]["trials"]["skipped_trials"] == uses_bad
    assert summary["eval"]["trials"]["num_trials"] == len(trials) - uses_bad
    config.data.on_bad_audio = "error"
    with pytest.raises(ValueError, match=re.escape(str(bad_eval))):
        commands.run("eval", config, str(tmp_path / "skip"))


def test_missing_data_directory_names_the_config_key(tmp_path):
    config = tiny.get_config()
    config.data.source = "voxceleb"
    config.data.train_dir = str(tmp_path / "nowhere")
    config.data.eval_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="data.train_dir"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_trial_list_naming_missing_files_is_reported_before_training(corpus_root, tmp_path):
    trials = tmp_path / "my_trials.txt"
    trials.write_text("1 id00006/aaa/00001.wav id00006/aaa/00002.wav\n0 gone/x/1.wav id00007/bbb/00001.wav\n")
    config = tiny.get_config()
    config.data.source = "voxceleb"
    config.data.train_dir = str(corpus_root / "train")
    config.data.eval_dir = str(corpus_root / "test")
    config.data.trials = str(trials)
    with pytest.raises(FileNotFoundError, match="my_trials") as error:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert "gone/x/1.wav" in str(error.value)


def test_cli_rejects_unknown_config_key_and_model_name(tmp_path):
    base = [sys.executable, "-m", "sv_jax.main", "--config=configs/tiny.py", f"--workdir={tmp_path}"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(base + ["--config.model.widht=8"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "widht" in result.stderr
    result = subprocess.run(base + ["--mode=describe", "--config.model.name=ResNet35"], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "unknown model.name 'ResNet35'" in result.stderr


def test_the_input_wait_is_the_share_of_an_interval_spent_waiting_for_batches(monkeypatch):
    clock = iter([0.0, 10.0, 30.0])
    monkeypatch.setattr(reporting.time, "perf_counter", lambda: next(clock))
    progress = reporting.Progress(total_steps=40, global_batch=8, start_step=0)
    progress.waited(2.5)
    assert progress.update(20, 20)["perf/input_wait_fraction"] == pytest.approx(0.25)
    assert "input wait 25%" in progress.line(20, {"lr": 1e-3, "margin": 0.0})
    assert progress.update(40, 20)["perf/input_wait_fraction"] == 0.0  # the wait is per interval
