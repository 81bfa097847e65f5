"""tf.data pipelines: seeded determinism, exact continuation from a stream position, evaluation buckets."""

import numpy as np
import pytest

from data_pipeline import features, input_pipeline, manifest, synthetic

FBANK = input_pipeline.FbankConfig(num_mel_bins=24)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    spec = synthetic.CorpusSpec(num_train_speakers=3, num_test_speakers=2, utts_per_train_speaker=3,
                                utts_per_test_speaker=3, min_seconds=0.6, max_seconds=2.5)
    return synthetic.generate_corpus(tmp_path_factory.mktemp("c") / "corpus", spec, num_workers=1)


def _batches(train, count, **kwargs):
    ds = input_pipeline.create_train_dataset(train.paths, train.labels, batch_size=4, num_frames=100, seed=7,
                                             fbank=FBANK, **kwargs)
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
    other_seed = input_pipeline.create_train_dataset(train.paths, train.labels, batch_size=4, num_frames=100,
                                                     seed=8, fbank=FBANK)
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
