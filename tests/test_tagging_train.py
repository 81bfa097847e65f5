"""The tagging task in the shared trainer: a run trains, checkpoints, resumes and scores held-out clips; the train
step learns for every family; costs are counted; bad configs and bad audio are named."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from cli import ConfigError, UserError
from configs import tagging as tagging_configs
from configs import tagging_default
from sv_jax import programs as programs_lib
from sv_jax import tagging_task
from sv_jax import tasks
from sv_jax import train
from sv_jax.tagging import macs
from sv_jax.tagging import metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
FRAMES = 160  # 2.56-s clips at a 16-ms shift
TINY_MODELS = {
    "MLP": {"hidden_sizes": (16,)},
    "CNN": {"channels": (4, 8), "pool_sizes": ((2, 2), (2, 2))},
    "RNN": {"rnn_hidden_size": 8, "rnn_layers": 1},
    "CRNN": {"channels": (4, 8, 8), "pool_sizes": ((2, 2), (2, 4), (1, 4)), "rnn_hidden_size": 8, "rnn_layers": 1},
}


def _config(family="CRNN", corpus=None, **train_overrides):
    config = tagging_default.get_config()
    config.model.name = family
    for key, value in TINY_MODELS[family].items():
        config.model[key] = value
    config.data.num_frames = FRAMES
    config.data.batch_size = 4
    t = config.data.tagging
    t.clip_seconds = 2.56
    t.synthetic.num_train_clips, t.synthetic.num_validation_clips = 12, 8
    t.synthetic_root = str(corpus) if corpus else ""
    config.train.num_epochs = 1
    config.train.log_every_steps = 1
    config.eval.batch_frames = FRAMES * 4
    config.profile.enabled = False
    for key, value in train_overrides.items():
        config.train[key] = value
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from data_pipeline import tagging_synthetic
    root = tmp_path_factory.mktemp("tagging") / "corpus"
    tagging_synthetic.generate_corpus(root, tagging_task.synthetic_spec(_config().data), num_workers=1)
    return root


def test_a_run_trains_skips_bad_audio_resumes_and_scores_the_held_out_clips(corpus, tmp_path):
    import shutil
    damaged = tmp_path / "corpus"
    shutil.copytree(corpus, damaged)
    victim = sorted((damaged / "audio/train/weak").glob("*.wav"))[0]
    victim.write_bytes(b"not a wav")
    config = _config(corpus=damaged)
    config.data.on_bad_audio = "skip"
    run = tmp_path / "run"
    summary = train.train_and_evaluate(config, str(run))
    assert summary["task"] == "tagging" and summary["steps"] == 3 and summary["resumed_from_step"] == 0
    assert summary["data"]["train_clips"] == 12 and summary["data"]["eval_clips"] == 8
    assert summary["data"]["bad_audio_skipped"] == 1 and victim.name in summary["data"]["bad_audio_files"][0]
    ev = summary["eval"]
    assert ev["clips"] == 8 and ev["skipped_clips"] == 0
    assert 0.0 <= ev["f1_macro"] <= 1.0 and set(k for k in ev if k.startswith("ap/")) == {
        f"ap/{c}" for c in tagging_task._class_names()}
    assert ev["map"] == pytest.approx(np.mean([ev[f"ap/{c}"] for c in tagging_task._class_names()]))
    assert np.isfinite(summary["train"]["loss"]) and "margin" not in summary["train"]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    config.train.num_epochs = 2
    resumed = train.train_and_evaluate(config, str(run))
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 6


def test_the_evaluation_is_the_clip_metrics_of_the_models_logits(corpus):
    config = _config("MLP", corpus=corpus)  # the evaluator is the same for every family; the MLP compiles fastest
    task = tasks.get(config)
    data = task.resolve_data(config.data, "unused")
    programs = programs_lib.compile_programs(config, 4, data.num_classes, jax.devices()[:1])
    state = programs.init_state(0)
    evaluator = task.evaluator(config, data, programs.lowered.components.model, programs.mesh)
    results = evaluator(state.variables)
    from data_pipeline import tagging
    feats = np.concatenate([b["feats"] for b in tagging.batches(data.eval, batch_size=8, num_epochs=1, shuffle=False,
                                                                feature_config=data.features)])
    model = programs.lowered.components.model
    logits = np.asarray(model.apply(state.variables, feats).clip)
    expected = metrics.clip_metrics(data.eval.labels, logits, tagging.CLASSES)
    assert results["map"] == pytest.approx(expected["map"], abs=1e-6)
    assert results["f1_macro"] == pytest.approx(expected["f1_macro"], abs=1e-6)


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_the_train_step_learns_a_fixed_batch_for_every_family(family):
    config = _config(family)
    config.optim.initial_lr = config.optim.final_lr = 1e-2
    config.optim.warmup_fraction = 0.0
    config.model.dropout = 0.0
    programs = programs_lib.compile_programs(config, 4, 10, jax.devices()[:1], steps_per_epoch=10)
    state, batch = programs.init_state(0), programs.random_batch(0)
    losses = []
    for _ in range(12):
        state, step_metrics = programs.train_step(state, batch)
        losses.append(float(step_metrics["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


def test_dropout_is_drawn_from_the_seed_and_the_step():
    config = _config("MLP")
    config.model.dropout = 0.5
    first = programs_lib.compile_programs(config, 4, 10, jax.devices()[:1], steps_per_epoch=10)
    batch = first.random_batch(0)
    a = [float(first.train_step(first.init_state(0), batch)[1]["loss"]) for _ in range(2)]
    config.seed = 7
    other = programs_lib.compile_programs(config, 4, 10, jax.devices()[:1], steps_per_epoch=10)
    b = float(other.train_step(first.init_state(0), batch)[1]["loss"])
    assert a[0] == a[1] and b != a[0]


@pytest.mark.parametrize("family", ["MLP", "RNN"])
def test_costs_are_counted_and_checked_against_the_analytic_macs(family):
    config = _config(family)
    programs = programs_lib.compile_programs(config, 4, 10, jax.devices()[:1])
    forward_macs = macs.forward_macs(config.model, 10, FRAMES, 128)
    train_cost, forward_cost = programs.train_step_cost, programs.forward_cost
    assert train_cost.source == "xla-unoptimized" and train_cost.bytes_accessed is None
    assert tagging_task.UNOPTIMIZED in train_cost.note
    assert 2.0 < train_cost.flops / (2 * forward_macs * 4) < 3.3  # forward + weight gradients (+ input gradients)
    assert forward_cost.source == "xla" and forward_cost.bytes_accessed > 0
    # Input scaling and pooling (elementwise, not in the MACs) are a visible share of a model this small.
    assert 0.95 < forward_cost.flops / (2 * forward_macs * 4) < 1.3
    assert (tagging_task.UNROLLED in forward_cost.note) == (family == "RNN")


def test_bad_configs_are_named(tmp_path):
    task = tasks.get(_config())
    config = _config()
    config.data.num_frames = 100
    with pytest.raises(ConfigError, match=r"data.num_frames=100.*--config.data.num_frames=160"):
        task.resolve_data(config.data, tmp_path)
    config = _config()
    config.data.source = "desed"
    with pytest.raises(ConfigError, match="data.tagging.desed_root is empty"):
        task.resolve_data(config.data, tmp_path)
    config.data.tagging.desed_root = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no such directory"):
        task.resolve_data(config.data, tmp_path)
    config = _config()
    config.data.source = "voxceleb"
    with pytest.raises(ConfigError, match="unknown data.source 'voxceleb' for tagging"):
        task.resolve_data(config.data, tmp_path)
    config = _config()
    config.task = "asr"
    with pytest.raises(ConfigError, match="unknown config task 'asr'"):
        tasks.get(config)


def test_the_command_line_names_a_bad_key_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sv_jax.main", "--config=configs/tagging/crnn.py:huge",
                             f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "unknown size 'huge' for the CRNN tagger" in result.stderr


def test_every_family_config_builds_at_every_size():
    for family, sizes in tagging_configs.SIZES.items():
        for size in sizes:
            config = tagging_configs.family_config(family, size)
            assert config.model.name == family and tasks.get(config).name == "tagging"
            assert macs.forward_macs(config.model, 10, config.data.num_frames, config.data.num_mel_bins) > 1e7
