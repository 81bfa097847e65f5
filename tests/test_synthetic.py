"""Tests of the built-in synthetic corpus: layout, WAV format, trials, determinism, idempotence, and that speaker
identity is carried by voice traits and not by the channel."""

import dataclasses
import json
import time

import numpy as np
import pytest
import scipy.signal
import soundfile

from data_pipeline.synthetic import Corpus, CorpusSpec, generate_corpus

TINY = CorpusSpec(num_train_speakers=4, num_test_speakers=3, utts_per_train_speaker=3, utts_per_test_speaker=3,
                  min_seconds=1.0, max_seconds=1.5, seed=7)
# Enough held-out speakers and trials for a stable EER, still generated in well under a second.
SEPARABILITY = CorpusSpec(num_train_speakers=0, num_test_speakers=12, utts_per_test_speaker=4,
                          min_seconds=1.5, max_seconds=2.0, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Corpus:
    return generate_corpus(tmp_path_factory.mktemp("tiny") / "corpus", TINY, num_workers=1)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Corpus:
    return generate_corpus(tmp_path_factory.mktemp("sep") / "corpus", SEPARABILITY, num_workers=1)


def _read_trials(corpus: Corpus):
    rows = [line.split() for line in corpus.trials.read_text().splitlines()]
    assert rows and all(len(r) == 3 for r in rows)
    return np.array([int(r[0]) for r in rows]), [(r[1], r[2]) for r in rows]


def _all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _eer(scores, labels) -> float:
    order = np.argsort(-np.asarray(scores))
    lab = np.asarray(labels)[order]
    fn = 1.0 - np.cumsum(lab) / lab.sum()
    fp = np.cumsum(1 - lab) / (1 - lab).sum()
    i = np.argmin(np.abs(fn - fp))
    return float(fn[i] + fp[i]) / 2.0


def test_layout_wavs_and_trials(tiny):
    assert tiny.train_dir == tiny.root / "train" and tiny.test_dir == tiny.root / "test"
    assert tiny.trials == tiny.root / "trials.txt"
    train_spk = sorted(p.name for p in tiny.train_dir.iterdir())
    test_spk = sorted(p.name for p in tiny.test_dir.iterdir())
    assert train_spk == [f"id{i:05d}" for i in range(4)]
    assert test_spk == [f"id{i:05d}" for i in range(4, 7)]  # numbering continues: names never collide
    for split, n_utts in ((tiny.train_dir, 3), (tiny.test_dir, 3)):
        for spk in split.iterdir():
            videos = sorted(spk.iterdir())
            assert 2 <= len(videos) <= 3  # 2-4 videos, but never more than utterances
            assert all(len(v.name) == 11 and v.name.isalnum() for v in videos)
            wavs = sorted(spk.glob("*/*.wav"))
            assert len(wavs) == n_utts
            for v in videos:
                names = sorted(p.name for p in v.glob("*.wav"))
                assert names == [f"{i:05d}.wav" for i in range(1, len(names) + 1)]
            for wav in wavs:
                info = soundfile.info(wav)
                assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
                assert 1.0 * 16000 - 1 <= info.frames <= 1.5 * 16000 + 1
                audio, _ = soundfile.read(wav, dtype="int16")
                assert 100 < np.abs(audio).max() <= 32767 and audio.std() > 10
    labels, pairs = _read_trials(tiny)
    assert set(labels) == {0, 1}
    assert len(set(map(frozenset, pairs))) == len(pairs)
    for label, (a, b) in zip(labels, pairs):
        assert a != b
        assert (tiny.test_dir / a).is_file() and (tiny.test_dir / b).is_file()
        assert label == int(a.split("/")[0] == b.split("/")[0])
    test_utts = {str(p.relative_to(tiny.test_dir)) for p in tiny.test_dir.rglob("*.wav")}
    for utt in test_utts:  # every test utterance is in target and non-target trials
        assert {lab for lab, pair in zip(labels, pairs) if utt in pair} == {0, 1}
    marker = json.loads((tiny.root / ".complete.json").read_text())
    assert marker["spec"] == dataclasses.asdict(TINY)
    assert not [p for p in tiny.root.parent.iterdir() if p != tiny.root]  # no temporary directory left behind


def test_deterministic_by_seed_and_independent_of_workers(tiny, tmp_path):
    again = generate_corpus(tmp_path / "again", TINY, num_workers=2)
    assert _all_files(again.root) == _all_files(tiny.root)
    other = generate_corpus(tmp_path / "other", dataclasses.replace(TINY, seed=8), num_workers=1)
    a, b = _all_files(tiny.root), _all_files(other.root)
    wavs_a = [v for k, v in a.items() if k.suffix == ".wav"]
    wavs_b = [v for k, v in b.items() if k.suffix == ".wav"]
    assert not set(wavs_a) & set(wavs_b)
    assert sorted(str(k) for k in a if k.suffix == ".wav") != sorted(str(k) for k in b if k.suffix == ".wav")


def test_idempotent_and_refuses_to_mix(tiny, tmp_path):
    wavs = sorted(tiny.root.rglob("*.wav"))
    before = {p: p.stat().st_mtime_ns for p in wavs + [tiny.trials, tiny.root / ".complete.json"]}
    start = time.monotonic()
    assert generate_corpus(tiny.root, TINY, num_workers=1) == tiny
    assert time.monotonic() - start < 0.5
    assert {p: p.stat().st_mtime_ns for p in before} == before
    with pytest.raises(ValueError, match="different spec"):
        generate_corpus(tiny.root, dataclasses.replace(TINY, seed=1), num_workers=1)
    with pytest.raises(ValueError, match="different spec"):
        generate_corpus(tiny.root, dataclasses.replace(TINY, utts_per_test_speaker=4), num_workers=1)
    partial = tmp_path / "partial"
    (partial / "train" / "id00000").mkdir(parents=True)
    with pytest.raises(ValueError, match="delete"):
        generate_corpus(partial, TINY, num_workers=1)
    (tmp_path / "empty").mkdir()  # an empty directory is fine to fill
    assert generate_corpus(tmp_path / "empty", TINY, num_workers=1).trials.is_file()


def test_invalid_spec_rejected():
    with pytest.raises(ValueError):
        CorpusSpec(num_test_speakers=1)
    with pytest.raises(ValueError):
        CorpusSpec(min_seconds=3.0, max_seconds=2.0)


def _median_log_f0(audio: np.ndarray, sr: int) -> float:
    """Median log F0 (70-400 Hz) of the loudest 40-ms frames, from the peak of a spectrally flattened
    autocorrelation (|X|^0.3 instead of |X|^2, so formant ringing does not win over the pitch period)."""
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), 640)[::160]
    frames = (frames - frames.mean(1, keepdims=True)) * np.hanning(640)
    energy = (frames**2).sum(1)
    frames = frames[energy >= np.percentile(energy, 60)]
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2048)) ** 0.3)[:, : sr // 70 + 1]
    lo = sr // 400
    lag = lo + np.argmax(ac[:, lo:], axis=1)
    return float(np.median(np.log(sr / lag)))


def _noise_floor(audio: np.ndarray) -> np.ndarray:
    """Level-normalised log spectrum (32 bands) of the first 40 ms, which the generator always leaves silent."""
    _, power = scipy.signal.welch(audio[:640].astype(np.float64), nperseg=256)
    bands = np.log(np.array([b.mean() for b in np.array_split(power[1:], 32)]) + 1e-3)
    return bands - bands.mean()


def test_voice_traits_identify_held_out_speakers(held_out):
    labels, pairs = _read_trials(held_out)
    cache = {}

    def f0(rel):
        if rel not in cache:
            audio, sr = soundfile.read(held_out.test_dir / rel, dtype="int16")
            cache[rel] = _median_log_f0(audio, sr)
        return cache[rel]

    scores = [-abs(f0(a) - f0(b)) for a, b in pairs]
    assert labels.sum() >= 30 and (1 - labels).sum() >= 100
    assert _eer(scores, labels) < 0.3  # chance is 0.5


def test_channel_does_not_identify_the_speaker(held_out):
    labels, pairs = _read_trials(held_out)
    floor = {}
    for rel in {r for pair in pairs for r in pair}:
        audio, _ = soundfile.read(held_out.test_dir / rel, dtype="int16")
        floor[rel] = _noise_floor(audio)
    scores = [floor[a] @ floor[b] / np.linalg.norm(floor[a]) / np.linalg.norm(floor[b]) for a, b in pairs]
    # The noise floor sees only the channel; were it drawn per speaker, target pairs would match far better.
    assert _eer(scores, labels) > 0.35
