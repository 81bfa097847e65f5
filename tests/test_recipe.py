"""The recipe's data end to end: training from shards with speed perturbation and reverb / noise augmentation, and
evaluation on trial lists under the official VoxCeleb1-O/E/H file names, through the trainer and the eval mode."""

import itertools
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from data_pipeline import augment, manifest, shards, synthetic
from sv_jax import checkpoint as checkpoint_lib
from sv_jax import commands, train
from sv_jax import data_sources

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthetic.generate_corpus(tmp_path_factory.mktemp("corpus") / "synthetic",
                                     data_sources.synthetic_spec(tiny.get_config().data), num_workers=1)


def _write_vox1_lists(corpus, directory: pathlib.Path) -> list:
    """veri_test2 (the corpus's trials, VoxCeleb format), list_test_all2 (every pair of test utterances) and
    list_test_hard2 (same-speaker pairs plus a few others, Kaldi format), all over the test tree."""
    directory.mkdir()
    (directory / "veri_test2.txt").write_text(corpus.trials.read_text())
    keys = sorted(str(p.relative_to(corpus.test_dir)) for p in corpus.test_dir.rglob("*.wav"))
    pairs = list(itertools.combinations(keys, 2))
    (directory / "list_test_all2.txt").write_text(
        "".join(f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n" for a, b in pairs))
    hard = [(a, b) for a, b in pairs if a.split("/")[0] == b.split("/")[0]] + pairs[::7]
    (directory / "list_test_hard2.txt").write_text(
        "".join(f"{a} {b} {'target' if a.split('/')[0] == b.split('/')[0] else 'nontarget'}\n" for a, b in hard))
    return [directory / n for n in ("veri_test2.txt", "list_test_all2.txt", "list_test_hard2.txt")]


def test_shards_speed_perturbation_augmentation_and_vox1_lists(corpus, tmp_path):
    shard_set = shards.write_shards(manifest.scan_dir(corpus.train_dir), tmp_path / "shards", utts_per_shard=5,
                                    num_workers=1)
    rir_dir, musan_dir = augment.write_fake_sources(tmp_path / "aug", num_rirs=3, num_noises=2)
    lists = _write_vox1_lists(corpus, tmp_path / "vox1")
    config = tiny.get_config()
    config.data.source = "voxceleb"
    config.data.train_shards = str(shard_set.root)
    config.data.train_dir = str(corpus.train_dir)  # the mean embedding / cohort are read from the files
    config.data.eval_dir = str(corpus.test_dir)
    config.data.trials = ",".join(str(p) for p in lists)
    config.data.speed_perturb = True
    config.data.rir_dir, config.data.musan_dir = str(rir_dir), str(musan_dir)
    workdir = tmp_path / "run"

    summary = train.train_and_evaluate(config, str(workdir))

    assert summary["steps"] == 12 and np.isfinite(summary["train"]["loss"])
    assert summary["data"]["speakers"] == 6 and summary["data"]["classes"] == 18  # perturbed copies are classes
    assert summary["data"]["source"] == str(shard_set.root)
    params = checkpoint_lib.Checkpointer(workdir).restore_raw(12)["params"]
    assert np.shape(params["head"]["weight"])[-1] == 18
    sizes = {name: len(manifest.read_trials(p)) for name, p in
             zip(("vox1_O_cleaned", "vox1_E_cleaned", "vox1_H_cleaned"), lists)}
    assert set(summary["eval"]) == set(sizes)
    for name, size in sizes.items():
        assert summary["eval"][name]["num_trials"] == size
        assert 0.0 <= summary["eval"][name]["eer_percent"] <= 100.0
    report = commands.run("eval", config, str(workdir))
    for name in sizes:
        assert report["eval"][name]["eer_percent"] == pytest.approx(summary["eval"][name]["eer_percent"])


def test_command_line_run_with_speed_perturbation_exits(corpus, tmp_path):
    """The recipe's speed perturbation through the command line: three classes per speaker, and the process exits
    (a script that leaves such a pipeline's iterator to interpreter shutdown hangs there; the trainer frees it)."""
    command = [sys.executable, "-m", "sv_jax.main", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}",
               f"--config.data.synthetic.root={corpus.root}", "--config.data.speed_perturb=True",
               "--config.train.num_epochs=1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data"]["classes"] == 18
