"""Tests of the audio-tagging data: the synthetic corpus (determinism, idempotence, labels that match the audio,
classes that can be told apart), the DESED-layout loader on a tiny fake tree with bad files, and the batch stream
(features, skip-and-count, exact resumption)."""

import os
import pathlib

import numpy as np
import pytest
import soundfile

import cli
from data_pipeline import audio as audio_lib
from data_pipeline import tagging
from data_pipeline.tagging import CLASSES, FeatureConfig, TaggingMetadataError
from data_pipeline.tagging_synthetic import TaggingCorpusSpec, generate_corpus, synthesize_clip

TINY = TaggingCorpusSpec(num_train_clips=6, num_validation_clips=4, clip_seconds=2.0, seed=5)
SR = 16000


def _files(root: pathlib.Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_corpus(tmp_path_factory.mktemp("tagging") / "corpus", TINY, num_workers=1)


# ----------------------------------------------------------------------------------------------------------------
# The synthetic corpus
# ----------------------------------------------------------------------------------------------------------------


def test_corpus_bytes_depend_on_the_seed_only(tiny, tmp_path):
    again = generate_corpus(tmp_path / "two_workers", TINY, num_workers=2)
    assert _files(again.root) == _files(tiny.root)
    other = generate_corpus(tmp_path / "other_seed", TaggingCorpusSpec(**{**TINY.__dict__, "seed": 6}), num_workers=1)
    assert _files(other.root) != _files(tiny.root)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind


def test_regenerating_is_a_no_op_and_another_spec_an_error(tiny, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in tiny.root.rglob("*")}
    assert generate_corpus(tiny.root, TINY) == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.root.rglob("*")} == before
    with pytest.raises(ValueError, match=r"different spec.*'num_train_clips': \(6, 7\)"):
        generate_corpus(tiny.root, TaggingCorpusSpec(**{**TINY.__dict__, "num_train_clips": 7}))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and has no .complete.json"):
        generate_corpus(tmp_path / "foreign", TINY)
    with pytest.raises(ValueError, match="min_events <= max_events"):
        TaggingCorpusSpec(min_events=3, max_events=2)


def test_layout_format_and_labels_match_the_mixed_events(tiny):
    assert tiny.train_tsv.read_text().splitlines()[0] == "filename\tevent_labels"
    assert tiny.validation_tsv.read_text().splitlines()[0] == "filename\tonset\toffset\tevent_label"
    for split, count in (("train", TINY.num_train_clips), ("validation", TINY.num_validation_clips)):
        manifest = tagging.load_split(tiny.root, split)
        assert [os.path.basename(p) for p in manifest.paths] == [f"{split}_{i:05d}.wav" for i in range(count)]
        assert manifest.labels.shape == (count, len(CLASSES)) and manifest.labels.dtype == np.float32
        for i, path in enumerate(manifest.paths):
            samples, events = synthesize_clip(TINY, split, i)
            assert 1 <= len(events) <= 3 and len({e.label for e in events}) == len(events)
            assert all(0 <= e.onset < e.offset <= TINY.clip_seconds for e in events)
            assert {CLASSES[k] for k in np.flatnonzero(manifest.labels[i])} == {e.label for e in events}
            if split == "validation":  # strong labels, exact to the millisecond
                assert manifest.events[i] == tuple(events)
            info = soundfile.info(path)
            assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 1, "PCM_16", 2 * SR)
            np.testing.assert_array_equal(soundfile.read(path, dtype="int16")[0], samples)
    assert tagging.load_split(tiny.root, "train").events is None


def test_events_stand_above_the_background_by_their_snr():
    spec = TaggingCorpusSpec(clip_seconds=4.0, min_events=1, max_events=1, snr_db_min=6.0, snr_db_max=6.0, seed=2)
    checked = 0
    for i in range(30):
        samples, (event,) = synthesize_clip(spec, "train", i)
        x = samples.astype(float)
        inside = np.zeros(len(x), bool)
        inside[int(event.onset * SR):int(event.offset * SR)] = True
        if 0.2 < inside.mean() < 0.8:
            ratio_db = 10 * np.log10(np.mean(x[inside] ** 2) / np.mean(x[~inside] ** 2))
            assert 5.0 < ratio_db < 9.0, (i, event, ratio_db)  # 10 log10(1 + 10^0.6) = 6.97 dB at 6 dB SNR
            checked += 1
    assert checked >= 8


def test_classes_are_told_apart_by_their_spectra():
    """Nearest class centroid of each event's mean log-mel spectrum: far above chance (0.1) on held-out clips."""
    spec = TaggingCorpusSpec(clip_seconds=3.0, min_events=1, max_events=1, seed=11)
    config = FeatureConfig(clip_seconds=3.0)
    pooled = {}
    for split, count in (("train", 100), ("validation", 60)):
        clips = [synthesize_clip(spec, split, i) for i in range(count)]
        feats = tagging.tagging_features(np.stack([x for x, _ in clips]).astype(np.float32) / 32768.0, config).numpy()
        assert feats.shape == (count, config.num_frames, 128)
        rows = []
        for f, (_, (event,)) in zip(feats, clips):
            first = int(event.onset / 0.016)
            v = f[first:max(first + 1, int(event.offset / 0.016))].mean(0)
            rows.append(v - v.mean())
        pooled[split] = np.array(rows), np.array([CLASSES.index(e.label) for _, (e,) in clips])
    (x_train, y_train), (x_test, y_test) = pooled["train"], pooled["validation"]
    assert set(y_train) == set(range(len(CLASSES)))
    centroids = np.stack([x_train[y_train == k].mean(0) for k in range(len(CLASSES))])
    predicted = np.argmin(((x_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.mean(predicted == y_test) > 0.5


# ----------------------------------------------------------------------------------------------------------------
# DESED's layout, bad input included
# ----------------------------------------------------------------------------------------------------------------


def _wav(path, seconds=1.0, rate=SR, seed=0):
    x = (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)
    soundfile.write(path, x, rate, subtype="PCM_16")
    return path


@pytest.fixture
def desed(tmp_path):
    """A DESED tree: good clips, a truncated, an empty, a corrupt and an 8 kHz wav, and a row for a missing file."""
    audio = tmp_path / "audio/train/weak"
    audio.mkdir(parents=True)
    for i in range(3):
        _wav(audio / f"good{i}.wav", seed=i)
    data = _wav(audio / "truncated.wav").read_bytes()
    (audio / "truncated.wav").write_bytes(data[:len(data) // 2])
    (audio / "empty.wav").write_bytes(b"")
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x01\x00\x00WAVEjunkjunkjunk" * 4)
    _wav(audio / "rate.wav", rate=8000)
    rows = ["good0.wav\tDog,Speech", "good1.wav\tCat", "good2.wav\tVacuum_cleaner", "truncated.wav\tDishes",
            "empty.wav\tFrying", "corrupt.wav\tBlender", "rate.wav\tAlarm_bell_ringing", "gone.wav\tDog"]
    (tmp_path / "metadata/train").mkdir(parents=True)
    (tmp_path / "metadata/train/weak.tsv").write_text("filename\tevent_labels\n" + "\n".join(rows) + "\n")
    return tmp_path


def test_weak_labels_and_missing_files(desed):
    tsv, audio = desed / "metadata/train/weak.tsv", desed / "audio/train/weak"
    with pytest.raises(cli.MissingInputError, match=r"1 of 8 clips listed in .*weak.tsv are missing") as error:
        tagging.load_split(desed, "train")
    assert "gone.wav" in str(error.value) and "good0.wav" not in str(error.value)
    manifest = tagging.load_split(desed, "train", on_bad_audio="skip")
    assert manifest.skipped == (str(audio / "gone.wav"),) and len(manifest) == 7
    assert manifest.metadata == tsv and manifest.paths[0] == str(audio / "corrupt.wav")  # sorted by name
    good0 = manifest.paths.index(str(audio / "good0.wav"))
    assert [CLASSES[k] for k in np.flatnonzero(manifest.labels[good0])] == ["Dog", "Speech"]
    assert manifest.labels.sum() == 8 and not manifest.labels.flags.writeable


def test_metadata_errors_name_the_file(desed):
    tsv = desed / "metadata/train/weak.tsv"
    with pytest.raises(cli.MissingInputError, match=r"metadata/validation/validation.tsv: no such metadata file; "
                                                     r"a DESED tree holds train: <root>/audio/train/weak"):
        tagging.load_split(desed, "validation")
    with pytest.raises(cli.MissingInputError, match=r"audio/nowhere: no such audio folder"):
        tagging.read_metadata(tsv, desed / "audio/nowhere")
    with pytest.raises(cli.ConfigError, match=r"unknown tagging split 'test'; choose one of \['train', 'validation'\]"):
        tagging.load_split(desed, "test")
    lines = tsv.read_text().splitlines()
    cases = [
        (["filename\tlabels"] + lines[1:], r"weak.tsv:1: header 'filename\\tlabels' is neither DESED's weak "
                                           r"'filename\\tevent_labels' nor its strong 'filename\\tonset"),
        (lines[:2] + ["good1.wav\tCat,Unicorn"], r"weak.tsv:3: unknown event class 'Unicorn'; the classes are "
                                                 r"Alarm_bell_ringing, Blender"),
        (lines[:2] + ["good1.wav\tCat\textra"], r"weak.tsv:3: 3 fields in .*, expected 2"),
        (lines[:1], r"weak.tsv lists no clips"),
    ]
    for content, message in cases:
        tsv.write_text("\n".join(content) + "\n")
        with pytest.raises(TaggingMetadataError, match=message) as error:
            tagging.load_split(desed, "train", on_bad_audio="skip")
        assert str(tsv) in str(error.value)


def test_strong_labels_union_and_empty_rows(tmp_path):
    audio = tmp_path / "audio/validation/validation"
    audio.mkdir(parents=True)
    for name in ("a.wav", "b.wav", "c.wav"):
        _wav(audio / name)
    (tmp_path / "metadata/validation").mkdir(parents=True)
    tsv = tmp_path / "metadata/validation/validation.tsv"
    tsv.write_text("filename\tonset\toffset\tevent_label\nb.wav\t0.5\t2.25\tDog\na.wav\t\t\t\n"
                   "b.wav\t0.1\t0.4\tSpeech\nb.wav\t3.0\t4.0\tDog\nc.wav\n")
    manifest = tagging.load_split(tmp_path, "validation")
    assert [os.path.basename(p) for p in manifest.paths] == ["a.wav", "b.wav", "c.wav"]
    np.testing.assert_array_equal(manifest.labels.sum(1), [0, 2, 0])
    assert manifest.labels[1, CLASSES.index("Dog")] == 1 and manifest.labels[1, CLASSES.index("Speech")] == 1
    assert manifest.events == ((), ((0.1, 0.4, "Speech"), (0.5, 2.25, "Dog"), (3.0, 4.0, "Dog")), ())
    tsv.write_text("filename\tonset\toffset\tevent_label\nb.wav\tsoon\t2.25\tDog\n")
    with pytest.raises(TaggingMetadataError, match=r"validation.tsv:2: onset 'soon' or offset '2.25' is not a number"):
        tagging.load_split(tmp_path, "validation")


def test_load_clip_pads_crops_resamples_and_names_bad_files(desed):
    audio = desed / "audio/train/weak"
    whole = audio_lib.load_audio(audio / "good0.wav")
    padded = tagging.load_clip(audio / "good0.wav", clip_seconds=1.5)
    assert padded.shape == (24000,) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:SR], whole)
    assert not padded[SR:].any()
    np.testing.assert_array_equal(tagging.load_clip(audio / "good0.wav", clip_seconds=0.5), whole[:8000])
    assert tagging.load_clip(audio / "rate.wav", clip_seconds=1.0, resample=True).shape == (SR,)
    problems = {"truncated.wav": "truncated", "empty.wav": "empty", "corrupt.wav": "cannot open as audio",
                "rate.wav": "sample rate is 8000 Hz, expected 16000 Hz"}
    for name, problem in problems.items():
        with pytest.raises(audio_lib.BadAudioError, match=problem) as error:
            tagging.load_clip(audio / name, clip_seconds=1.0)
        assert str(error.value).startswith(str(audio / name))


# ----------------------------------------------------------------------------------------------------------------
# Features and batches
# ----------------------------------------------------------------------------------------------------------------


def test_features_of_a_ten_second_clip():
    config = FeatureConfig()
    assert (config.num_samples, config.num_frames) == (160000, 625)
    x = (0.1 * np.random.default_rng(0).standard_normal(160000)).astype(np.float32)
    feats = tagging.tagging_features(x).numpy()
    assert feats.shape == (625, 128) and np.isfinite(feats).all()
    normalized = tagging.tagging_features(x, FeatureConfig(mean_normalize=True)).numpy()
    np.testing.assert_allclose(normalized, feats - feats.mean(0), atol=1e-4)


def test_bad_audio_is_skipped_and_counted_or_named(desed):
    from data_pipeline import input_pipeline  # pylint: disable=import-outside-toplevel
    manifest = tagging.load_split(desed, "train", on_bad_audio="skip")
    log = input_pipeline.BadAudioLog()
    config = FeatureConfig(clip_seconds=1.0)
    out = list(tagging.batches(manifest, batch_size=2, num_epochs=1, shuffle=False, feature_config=config,
                               on_bad_audio="skip", bad_audio_log=log))
    index = np.concatenate([b["index"] for b in out])
    assert [os.path.basename(manifest.paths[i]) for i in index] == ["good0.wav", "good1.wav", "good2.wav"]
    assert [b["feats"].shape for b in out] == [(2, config.num_frames, 128), (1, config.num_frames, 128)]
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in out]), manifest.labels[index])
    assert log.count == 4 and [os.path.basename(f) for f in log.files] == [
        "corrupt.wav", "empty.wav", "rate.wav", "truncated.wav"]
    with pytest.raises(input_pipeline.PipelineError, match=r"corrupt.wav: cannot open as audio.*on_bad_audio='skip'"):
        list(tagging.batches(manifest, batch_size=2, num_epochs=1, shuffle=False, feature_config=config))


def test_batches_resume_exactly_and_split_between_processes(tiny):
    manifest = tagging.load_split(tiny.root, "train")
    kwargs = dict(batch_size=4, seed=3, feature_config=FeatureConfig(clip_seconds=2.0))
    stream = tagging.batches(manifest, **kwargs)
    first = [next(stream) for _ in range(5)]  # 20 positions: over three epochs of 6 clips
    index = np.concatenate([b["index"] for b in first])
    np.testing.assert_array_equal(index, np.arange(20))
    resumed = tagging.batches(manifest, start_index=int(first[1]["index"][-1]) + 1, **kwargs)
    for expected in first[2:]:
        got = next(resumed)
        assert got.keys() == expected.keys() == {"feats", "labels", "index"}
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    # Each epoch visits every clip once, in an order of its own, and labels travel with their clip.
    config = kwargs["feature_config"]
    reference = tagging.tagging_features(np.stack([tagging.load_clip(p, clip_seconds=2.0) for p in manifest.paths]),
                                         config).numpy()
    feats = np.concatenate([b["feats"] for b in first])
    clip = np.array([np.argmin(((reference - f) ** 2).sum((1, 2))) for f in feats])
    np.testing.assert_allclose(feats, reference[clip], atol=1e-3)
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in first]), manifest.labels[clip])
    epochs = clip[:18].reshape(3, len(manifest))
    assert all(sorted(e) == list(range(len(manifest))) for e in epochs) and len({tuple(e) for e in epochs}) == 3
    shares = [np.concatenate([next(tagging.batches(manifest, process_index=p, process_count=2, **kwargs))["index"]])
              for p in (0, 1)]
    np.testing.assert_array_equal(shares[0], [0, 2, 4, 6])
    np.testing.assert_array_equal(shares[1], [1, 3, 5, 7])
