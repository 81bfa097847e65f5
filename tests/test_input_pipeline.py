"""tf.data pipelines: seeded determinism and exact continuation from a stream position (wav tree and shards, with
speed perturbation and augmentation), per-process streams, evaluation buckets."""

import numpy as np
import pytest

from data_pipeline import augment, features, input_pipeline, manifest, shards, synthetic

FBANK = input_pipeline.FbankConfig(num_mel_bins=24)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    spec = synthetic.CorpusSpec(num_train_speakers=3, num_test_speakers=2, utts_per_train_speaker=3,
                                utts_per_test_speaker=3, min_seconds=0.6, max_seconds=2.5)
    return synthetic.generate_corpus(tmp_path_factory.mktemp("c") / "corpus", spec, num_workers=1)


def _batches(train, count, **kwargs):
    ds = input_pipeline.create_train_dataset(train, batch_size=4, num_frames=100, seed=7, fbank=FBANK, **kwargs)
    return list(ds.take(count).as_numpy_iterator())


def test_train_batches_are_seeded_and_resume_exactly(corpus):
    train = manifest.scan_dir(corpus.train_dir)
    first, again = _batches(train, 5), _batches(train, 5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["feats"], b["feats"])
    assert first[0]["feats"].shape == (4, 100, 24) and first[0]["feats"].dtype == np.float32
    positions = np.concatenate([b["index"] for b in first])
    np.testing.assert_array_equal(positions, np.arange(20))  # 9 files: crosses two epoch boundaries
    labels = np.concatenate([b["label"] for b in first])
    assert sorted(labels[:9]) == sorted(train.labels)  # an epoch is a permutation of the files
    resumed = _batches(train, 2, start_index=12)  # what a run that trained 3 batches continues with
    for a, b in zip(first[3:], resumed):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["feats"], b["feats"])
    other_seed = input_pipeline.create_train_dataset(train, batch_size=4, num_frames=100, seed=8, fbank=FBANK)
    assert not np.array_equal(next(other_seed.as_numpy_iterator())["feats"], first[0]["feats"])


def test_eval_batches_are_whole_padded_utterances(corpus):
    paths = sorted(str(p) for p in corpus.test_dir.rglob("*.wav"))
    seen = []
    for batch in input_pipeline.create_eval_dataset(paths, fbank=FBANK, bucket_frames=50,
                                                    batch_frames=400).as_numpy_iterator():
        length = batch["feats"].shape[1]
        assert length % 50 == 0 and len(batch["index"]) <= 400 // length
        for feats, frames, index in zip(batch["feats"], batch["lengths"], batch["index"]):
            wav = input_pipeline.audio_lib.load_audio(paths[index])
            assert frames == features.num_frames_for_samples(len(wav)) and length - 50 < frames <= length
            np.testing.assert_allclose(feats[:frames], FBANK.compute(wav, 0.0).numpy(), rtol=1e-5, atol=1e-4)
            assert not feats[frames:].any()
            seen.append(index)
    assert sorted(seen) == list(range(len(paths)))


@pytest.fixture(scope="module")
def recipe_sources(corpus, tmp_path_factory):
    """Shards of the training tree and generated RIR / MUSAN directories."""
    root = tmp_path_factory.mktemp("recipe")
    shard_set = shards.write_shards(manifest.scan_dir(corpus.train_dir), root / "shards", utts_per_shard=2,
                                    num_workers=1)
    return shard_set, augment.write_fake_sources(root / "aug", num_rirs=2, num_noises=1)


@pytest.mark.parametrize("source", ["wav", "shards"])
def test_speed_perturbation_and_augmentation_are_seeded_and_resume_exactly(corpus, recipe_sources, source):
    train = manifest.scan_dir(corpus.train_dir)
    shard_set, (rir_dir, musan_dir) = recipe_sources
    kwargs = dict(shards=shard_set if source == "shards" else None, speed_perturb=True, shuffle_buffer=3,
                  augmenter=augment.Augmenter(rir_dir, musan_dir, aug_prob=0.6, seed=7))
    first = _batches(train, 6, **kwargs)
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in first]), np.arange(24))
    labels = np.concatenate([b["label"] for b in first])
    assert labels.min() >= 0 and labels.max() < 3 * train.num_speakers
    assert (labels >= train.num_speakers).any() and (labels < train.num_speakers).any()  # perturbed and not
    assert sorted(labels[:9] % train.num_speakers) == sorted(train.labels)  # still one epoch of the files
    resumed = _batches(train, 2, start_index=16, **kwargs)
    for a, b in zip(first[4:], resumed):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["feats"], b["feats"])
    plain = _batches(train, 6, **(kwargs | dict(speed_perturb=False, augmenter=None)))
    assert not np.array_equal(plain[0]["feats"], first[0]["feats"])


def test_processes_read_disjoint_streams_from_shards(corpus, recipe_sources):
    train = manifest.scan_dir(corpus.train_dir)
    shard_set, _ = recipe_sources
    streams = [_batches(train, 3, shards=shard_set, shuffle_buffer=3, process_index=p, process_count=2)
               for p in range(2)]
    for p, batches in enumerate(streams):
        np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(12) * 2 + p)
    # The checkpoint stores process 0's last index + 1; each process resumes after its own last example.
    resumed = [_batches(train, 1, shards=shard_set, shuffle_buffer=3, process_index=p, process_count=2,
                        start_index=int(streams[0][1]["index"][-1]) + 1) for p in range(2)]
    for p in range(2):
        np.testing.assert_array_equal(resumed[p][0]["feats"], streams[p][2]["feats"])
