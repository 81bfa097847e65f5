"""Tests of the VoxCeleb TFDS builder on a tiny fake manual dir: exact int16 audio, labels, trials, reloading
from data_dir alone, errors that name the missing or bad files, the skip option, and the offline command line.

Every test runs with Python sockets disabled, so an attempt by TFDS to reach GCS fails loudly instead of hanging.
"""

import logging
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from data_pipeline import audio as audio_lib
from data_pipeline import tfds_voxceleb2
from data_pipeline.tfds_voxceleb2 import Voxceleb2

REPO = pathlib.Path(__file__).resolve().parents[1]
DEV_SPEAKERS = ("id00012", "id00015", "id00020")
VOX1_SPEAKERS = ("id10270", "id10271")
VOX_O = """1 id10270/x/00001.wav id10270/y/00001.wav
0 id10270/x/00001.wav id10271/x/00001.wav
0 id10271/y/00001.wav id10270/y/00001.wav
1 id10271/x/00001.wav id10271/y/00001.wav
0 id10270/y/00001.wav id10271/x/00001.wav
1 id10270/y/00001.wav id10270/x/00001.wav
"""  # six lines: TFDS's default shuffling would be unlikely to keep this order
KALDI_E = "id10271/x/00001.wav id10271/y/00001.wav target\nid10271/y/00001.wav id10270/y/00001.wav nontarget\n"
ORIGINAL_O = "0 id10271/y/00001.wav id10270/x/00001.wav\n"


def _write_wav(path: pathlib.Path, num_samples: int, seed: int, sample_rate: int = 16000) -> np.ndarray:
    samples = np.random.default_rng(seed).integers(-32768, 32768, size=num_samples, dtype=np.int16)
    samples[:2] = (-32768, 32767)  # the extremes must survive the float round trip exactly
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sample_rate, subtype="PCM_16")
    return samples


def _make_manual_dir(root: pathlib.Path) -> pathlib.Path:
    n = 0
    for spk in DEV_SPEAKERS:
        for video in ("vidA", "vidB"):
            for utt in ("00001", "00002"):
                n += 1
                ext = "flac" if n == 12 else "wav"  # flac is accepted too
                _write_wav(root / "voxceleb2/dev/wav" / spk / video / f"{utt}.{ext}", 300 + 17 * n, seed=n)
    for spk in VOX1_SPEAKERS:
        for video in ("x", "y"):
            n += 1
            _write_wav(root / "voxceleb1/wav" / spk / video / "00001.wav", 200 + n, seed=n)
    (root / "voxceleb1/veri_test2.txt").write_text(VOX_O)
    (root / "voxceleb1/vox1_E_cleaned.kaldi").write_text(KALDI_E)  # WeSpeaker's name, Kaldi format
    (root / "voxceleb1/veri_test.txt").write_text(ORIGINAL_O)
    return root


def _build(config, data_dir, manual_dir, **kwargs) -> Voxceleb2:
    builder = Voxceleb2(config=config, data_dir=data_dir, **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder


def _examples(builder, split=None):
    split = split or builder.builder_config.split
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


@pytest.fixture(scope="module", autouse=True)
def no_network():
    def refuse(*args, **kwargs):
        raise OSError(f"network access attempted in an offline test: {args}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        tfds.disable_progress_bar()
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    manual = _make_manual_dir(tmp_path_factory.mktemp("manual"))
    data_dir = tmp_path_factory.mktemp("tfds")
    builders = {c: _build(c, data_dir, manual) for c in ("dev", "vox1", "vox1_O_cleaned", "vox1_E_cleaned", "vox1_O")}
    return manual, data_dir, builders


def test_dev_audio_labels_and_paths_match_the_files(built):
    manual, _, builders = built
    builder = builders["dev"]
    assert builder.info.features["speaker"].names == list(DEV_SPEAKERS)
    assert builder.info.features["audio"].sample_rate == 16000
    assert builder.info.supervised_keys == ("audio", "speaker")
    assert builder.info.metadata["skipped_files"] == []
    examples = _examples(builder, "train")
    assert len(examples) == builder.info.splits["train"].num_examples == 12
    assert len({ex["path"] for ex in examples}) == 12
    assert b"id00020/vidB/00002.flac" in {ex["path"] for ex in examples}
    for ex in examples:
        rel = ex["path"].decode()
        expected, rate = sf.read(manual / "voxceleb2/dev/wav" / rel, dtype="int16")
        assert rate == 16000 and ex["audio"].dtype == np.int16
        np.testing.assert_array_equal(ex["audio"], expected)
        speaker = ex["speaker_id"].decode()
        assert rel.split("/")[0] == speaker and ex["speaker"] == DEV_SPEAKERS.index(speaker)


def test_vox1_config_has_the_evaluation_audio(built):
    manual, _, builders = built
    examples = _examples(builders["vox1"], "test")
    assert sorted(ex["path"].decode() for ex in examples) == [
        f"{s}/{v}/00001.wav" for s in VOX1_SPEAKERS for v in ("x", "y")]
    assert builders["vox1"].info.features["speaker"].names == list(VOX1_SPEAKERS)
    for ex in examples:
        expected, _ = sf.read(manual / "voxceleb1/wav" / ex["path"].decode(), dtype="int16")
        np.testing.assert_array_equal(ex["audio"], expected)


@pytest.mark.parametrize("config, text, file_name", [
    ("vox1_O_cleaned", VOX_O, "veri_test2.txt"),
    ("vox1_E_cleaned", KALDI_E, "vox1_E_cleaned.kaldi"),
    ("vox1_O", ORIGINAL_O, "veri_test.txt"),
], ids=["voxceleb_format", "kaldi_format_wespeaker_name", "original_list"])
def test_trial_configs_keep_file_order_and_labels(built, config, text, file_name):
    builder = built[2][config]
    assert builder.info.metadata["trial_list"] == file_name
    assert builder.info.features["label"].names == ["nontarget", "target"]
    rows = [(ex["enroll"].decode(), ex["test"].decode(), int(ex["label"])) for ex in _examples(builder, "test")]
    expected = []
    for line in text.splitlines():
        a, b, c = line.split()
        expected.append((b, c, int(a)) if a in "01" else (a, b, int(c == "target")))
    assert rows == expected


def test_reload_from_data_dir_without_manual_dir(built):
    _, data_dir, builders = built
    reloaded = tfds.builder("voxceleb2/dev", data_dir=os.fspath(data_dir))
    reloaded.download_and_prepare()  # already built: a no-op that needs no manual dir
    from_dir = tfds.builder_from_directory(os.fspath(data_dir / "voxceleb2/dev/1.0.0"))
    original = sorted(_examples(builders["dev"]), key=lambda ex: ex["path"])
    for builder in (reloaded, from_dir):
        assert builder.info.features["speaker"].names == list(DEV_SPEAKERS)
        assert builder.info.metadata["skipped_files"] == []
        again = sorted(_examples(builder, "train"), key=lambda ex: ex["path"])
        assert [ex["path"] for ex in again] == [ex["path"] for ex in original]
        for a, b in zip(again, original):
            np.testing.assert_array_equal(a["audio"], b["audio"])
            assert a["speaker"] == b["speaker"]


def test_trial_list_naming_missing_files_fails_listing_all_of_them(tmp_path):
    manual = tmp_path / "manual"
    for spk in VOX1_SPEAKERS:
        _write_wav(manual / "voxceleb1/wav" / spk / "x/00001.wav", 100, seed=1)
    (manual / "voxceleb1/list_test_hard2.txt").write_text(
        "1 id10270/x/00001.wav id10270/gone/00007.wav\n0 id10271/x/00001.wav id10999/nope/00001.wav\n")
    with pytest.raises(FileNotFoundError, match="2 of 4 utterances") as err:
        _build("vox1_H_cleaned", tmp_path / "tfds", manual)
    assert "id10270/gone/00007.wav" in str(err.value) and "id10999/nope/00001.wav" in str(err.value)
    assert not (tmp_path / "tfds/voxceleb2/vox1_H_cleaned/1.0.0").exists()


def test_missing_trial_list_or_audio_tree_says_what_is_needed(tmp_path):
    manual = tmp_path / "manual"
    _write_wav(manual / "voxceleb1/wav/id10270/x/00001.wav", 100, seed=1)
    with pytest.raises(FileNotFoundError, match="list_test_hard2.txt.*vox1_H_cleaned.kaldi"):
        _build("vox1_H_cleaned", tmp_path / "tfds", manual)
    with pytest.raises(FileNotFoundError, match=r"voxceleb2/dev/wav.*does not exist(.|\n)*data_pipeline.prepare"):
        _build("dev", tmp_path / "tfds", manual)


def test_bad_audio_fails_naming_the_file_and_skip_leaves_it_out(tmp_path, caplog):
    manual = tmp_path / "manual"
    wav = manual / "voxceleb2/dev/wav"
    _write_wav(wav / "id00001/v/00001.wav", 200, seed=1)
    _write_wav(wav / "id00001/v/00002.wav", 200, seed=2, sample_rate=8000)
    _write_wav(wav / "id00002/v/00001.wav", 200, seed=3)
    (wav / "id00002/v/00002.wav").write_bytes(b"")
    with pytest.raises(audio_lib.BadAudioError, match=r"id00001/v/00002\.wav: sample rate is 8000 Hz"):
        _build("dev", tmp_path / "strict", manual)

    with caplog.at_level(logging.WARNING, logger=tfds_voxceleb2.__name__):
        builder = _build("dev", tmp_path / "lenient", manual, on_bad_audio="skip")
    assert builder.info.metadata["skipped_files"] == ["id00001/v/00002.wav", "id00002/v/00002.wav"]
    assert sorted(ex["path"].decode() for ex in _examples(builder)) == ["id00001/v/00001.wav", "id00002/v/00001.wav"]
    assert "skipped 2 of 4 files" in caplog.text and "8000 Hz" in caplog.text and "empty" in caplog.text
    reloaded = tfds.builder("voxceleb2/dev", data_dir=os.fspath(tmp_path / "lenient"))
    assert reloaded.info.metadata["skipped_files"] == ["id00001/v/00002.wav", "id00002/v/00002.wav"]


def test_on_bad_audio_is_checked(tmp_path):
    with pytest.raises(ValueError, match="on_bad_audio must be one of"):
        Voxceleb2(config="dev", data_dir=tmp_path, on_bad_audio="ignore")


def test_to_int16_rounds_and_clips():
    x = np.array([-1.5, -1.0, -0.5 / 32768, 0.4 / 32768, 32767 / 32768, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(tfds_voxceleb2.to_int16(x), [-32768, -32768, 0, 0, 32767, 32767])


def test_command_line_builds_offline(built, tmp_path):
    manual = built[0]
    result = subprocess.run(
        [sys.executable, "-m", "data_pipeline.tfds_voxceleb2", f"--manual_dir={manual}",
         f"--data_dir={tmp_path}", "--configs=vox1_O_cleaned,dev"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "{'test': 6}" in result.stdout and "{'train': 12}" in result.stdout
    # TensorFlow's C++ file systems bypass Python sockets; they would log these on a network attempt.
    for sign in ("google_auth", "Could not resolve", "metadata.google.internal"):
        assert sign not in result.stderr
    assert (tmp_path / "voxceleb2/dev/1.0.0/speaker.labels.txt").read_text().split() == list(DEV_SPEAKERS)
