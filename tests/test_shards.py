"""TFRecord shards: lossless records, resumable writing, per-epoch shuffles, exact resume, per-process shards, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from data_pipeline import audio, manifest, shards, synthetic


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    spec = synthetic.CorpusSpec(num_train_speakers=4, num_test_speakers=2, utts_per_train_speaker=5,
                                utts_per_test_speaker=2, min_seconds=0.5, max_seconds=1.2)
    return synthetic.generate_corpus(tmp_path_factory.mktemp("c") / "corpus", spec, num_workers=1)


@pytest.fixture(scope="module")
def shard_set(corpus, tmp_path_factory):
    source = manifest.scan_dir(corpus.train_dir)
    return shards.write_shards(source, tmp_path_factory.mktemp("s") / "shards", utts_per_shard=3, num_workers=2)


def _records(shard_set, **kwargs):
    ds = shards.create_shard_dataset(shard_set, seed=3, shuffle_buffer=4, **kwargs)
    return ds


def _keys(ds, count):
    return [(int(p), shards.parse_record(r)["key"].numpy().decode()) for p, r in ds.take(count)]


def test_records_hold_every_utterance_losslessly(corpus, shard_set):
    source = manifest.scan_dir(corpus.train_dir)
    assert len(shard_set.files) == 7 and shard_set.total_examples == len(source) == 20
    assert shard_set.manifest() == source  # utterances.list: same paths, speakers and labels as the tree
    seen = {}
    for name in shard_set.files:
        for record in shards.tf.data.TFRecordDataset(str(shard_set.root / name)):
            parsed = shards.parse_record(record)
            key = parsed["key"].numpy().decode()
            wav, _ = soundfile.read(corpus.train_dir / key, dtype="int16")
            np.testing.assert_array_equal(parsed["audio"].numpy(), wav)
            assert parsed["speaker"].numpy().decode() == key.split("/")[0]
            seen[key] = True
    assert len(seen) == 20


def test_epochs_are_seeded_permutations_and_resume_exactly(shard_set):
    stream = _keys(_records(shard_set), 50)
    assert [p for p, _ in stream] == list(range(50))
    for epoch in range(2):
        assert sorted(k for _, k in stream[20 * epoch:20 * (epoch + 1)]) == sorted(
            shard_set.manifest().paths[i][len(str(shard_set.manifest().root)) + 1:] for i in range(20))
    assert [k for _, k in stream[:20]] != [k for _, k in stream[20:40]]  # a new order every epoch
    assert _keys(_records(shard_set), 50) == stream
    for start in (7, 20, 33):
        assert _keys(_records(shard_set, start_position=start), 50 - start) == stream[start:]


def test_each_process_reads_its_own_shards(shard_set):
    name_of = {}
    for name in shard_set.files:
        for record in shards.tf.data.TFRecordDataset(str(shard_set.root / name)):
            name_of[shards.parse_record(record)["key"].numpy().decode()] = name
    for epoch in range(2):
        per_process = [set(shards.epoch_shards(7, epoch, 3, p, 2).numpy()) for p in range(2)]
        assert not per_process[0] & per_process[1] and per_process[0] | per_process[1] == set(range(7))
    first = _keys(_records(shard_set, process_index=0, process_count=2), 8)
    second = _keys(_records(shard_set, process_index=1, process_count=2), 8)
    chosen = [set(shard_set.files[i] for i in shards.epoch_shards(7, 0, 3, p, 2).numpy()) for p in range(2)]
    assert {name_of[k] for _, k in first} <= chosen[0] and {name_of[k] for _, k in second} <= chosen[1]
    with pytest.raises(ValueError, match="one shard per process"):
        shards.epoch_shards(7, 0, 3, 0, 8)


def test_writing_resumes_and_skips_finished_shards(corpus, tmp_path):
    source = manifest.scan_dir(corpus.train_dir)
    out = tmp_path / "shards"
    first = shards.write_shards(source, out, utts_per_shard=6, num_workers=1)
    victim = out / first.files[1]
    victim.unlink()  # as if the run was killed before this shard was renamed into place
    (out / (first.files[1] + ".tmp123")).write_bytes(b"half-written")
    mtimes = {f: (out / f).stat().st_mtime_ns for f in first.files if f != first.files[1]}
    again = shards.write_shards(source, out, utts_per_shard=6, num_workers=1)
    assert again == first and victim.exists()
    assert {f: (out / f).stat().st_mtime_ns for f in mtimes} == mtimes  # finished shards were not rewritten


def test_bad_audio_when_writing(corpus, tmp_path):
    tree = tmp_path / "tree"
    for path in sorted(corpus.train_dir.rglob("*.wav"))[:6]:
        target = tree / path.relative_to(corpus.train_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    bad = tree / "spk_bad" / "v" / "broken.wav"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"RIFF garbage, not audio" * 10)
    source = manifest.scan_dir(tree)
    with pytest.raises(audio.BadAudioError, match="broken.wav"):
        shards.write_shards(source, tmp_path / "error", utts_per_shard=2, num_workers=1)
    written = shards.write_shards(source, tmp_path / "skip", utts_per_shard=2, num_workers=1, on_bad_audio="skip")
    assert written.total_examples == 6 and len(written.skipped) == 1 and "broken.wav" in written.skipped[0]
    assert "spk_bad" not in written.manifest().speaker_ids  # only speakers with audio in the shards are classes


def test_corrupt_shard_is_named_or_skipped(shard_set, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in shard_set.root.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    victim = copy / shard_set.files[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated: the second half of the shard is lost
    damaged = shards.read_index(copy)
    with pytest.raises(shards.tf.errors.OpError, match=shard_set.files[2]):
        _keys(_records(damaged), 20)

    class Log:
        errors = []

        def add(self, error):
            self.errors.append(error)

    log = Log()
    stream = _keys(_records(damaged, on_bad_audio="skip", bad_audio_log=log), 40)
    assert len(stream) == 40 and log.errors and shard_set.files[2] in str(log.errors[0])


def test_missing_index_or_shard_is_a_clear_error(shard_set, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m data_pipeline.shards"):
        shards.read_index(tmp_path)
    (tmp_path / shards.INDEX_FILE).write_text((shard_set.root / shards.INDEX_FILE).read_text())
    with pytest.raises(FileNotFoundError, match="7 shard files of the index are missing"):
        shards.read_index(tmp_path)
    index = json.loads((shard_set.root / shards.INDEX_FILE).read_text())
    assert index["source_root"] == str(shard_set.manifest().root)


def test_command_line(corpus, tmp_path):
    result = subprocess.run([sys.executable, "-m", "data_pipeline.shards", f"--src={corpus.train_dir}",
                             f"--dst={tmp_path / 'out'}", "--utts_per_shard=10", "--num_workers=1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 shards, 20 utterances, 0 files skipped" in result.stdout
