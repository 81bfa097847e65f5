"""data_pipeline.features against kaldi-native-fbank (an independent C++ Kaldi implementation).

The parity bound is max |log-mel difference| <= 1e-3 over all frames and bins. The test signals keep every
mel energy far above the log floor (asserted: reference log-mel > 0, floor is log(1.19e-7) = -15.9), so the
floor never decides a value and the comparison covers every bin.
"""

import librosa
import numpy as np
import pytest
import scipy.signal
import tensorflow as tf

kaldi_native_fbank = pytest.importorskip("kaldi_native_fbank")

from data_pipeline import features  # noqa: E402
from data_pipeline.features import fbank, mean_normalize, num_frames_for_samples, num_samples_for_frames  # noqa: E402

TOLERANCE = 1e-3


def speech_like(sample_rate, seconds, seed=0):
    """Voiced speech stand-in: glottal pulse train (gliding f0) through four formant resonators, plus noise."""
    rng = np.random.default_rng(seed)
    n = int(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    f0 = 120.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t)
    pulses = (np.diff(np.floor(np.cumsum(f0 / sample_rate)), prepend=0.0) > 0).astype(np.float64)
    y = scipy.signal.lfilter([1.0], [1.0, -0.95], pulses)  # glottal roll-off
    for formant, bandwidth in [(700, 130), (1220, 70), (2600, 160), (3500, 250)]:
        if formant >= sample_rate / 2:
            continue
        r, theta = np.exp(-np.pi * bandwidth / sample_rate), 2 * np.pi * formant / sample_rate
        y = scipy.signal.lfilter([1.0 - r], [1.0, -2 * r * np.cos(theta), r * r], y)
    y = 0.5 * y / np.abs(y).max() + 0.01 * rng.standard_normal(n)
    return (0.8 * y / np.abs(y).max()).astype(np.float32)


def tone(sample_rate, seconds, freq=440.0):
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def white_noise(sample_rate, seconds, seed=1):
    return np.clip(0.3 * np.random.default_rng(seed).standard_normal(int(sample_rate * seconds)), -1, 1).astype(
        np.float32)


def kaldi_fbank(waveform, sample_rate, window_type="hamming", num_mel_bins=80, snip_edges=True, dither=0.0):
    """kaldi-native-fbank on the int16-scaled waveform -> [num_frames, num_mel_bins] (float32 inside)."""
    opts = kaldi_native_fbank.FbankOptions()
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.dither = dither
    opts.frame_opts.window_type = window_type
    opts.frame_opts.snip_edges = snip_edges
    opts.mel_opts.num_bins = num_mel_bins
    for name in ("is_librosa", "htk_mode"):  # newer versions: make sure Kaldi's own mel banks are used
        if hasattr(opts.mel_opts, name):
            assert not getattr(opts.mel_opts, name)
    assert not opts.use_energy
    computer = kaldi_native_fbank.OnlineFbank(opts)
    computer.accept_waveform(sample_rate, (np.asarray(waveform, np.float64) * 32768.0).tolist())
    computer.input_finished()
    frames = [np.asarray(computer.get_frame(i)) for i in range(computer.num_frames_ready)]
    return np.stack(frames) if frames else np.zeros((0, num_mel_bins), np.float32)


def _resampled_8k():
    return librosa.resample(speech_like(8000, 3.0, seed=2), orig_sr=8000, target_sr=16000).astype(np.float32)


PARITY_CASES = {
    "speech": (lambda: speech_like(16000, 3.0), {}),
    "tone": (lambda: tone(16000, 2.0), {}),
    "white_noise": (lambda: white_noise(16000, 2.0), {}),
    "8k_resampled_to_16k": (_resampled_8k, {}),
    "povey_40_bins": (lambda: speech_like(16000, 3.0), {"window_type": "povey", "num_mel_bins": 40}),
    "no_snip_edges": (lambda: speech_like(16000, 3.0), {"snip_edges": False}),
    "hanning_short_no_snip": (lambda: speech_like(16000, 3.0)[:5000], {"window_type": "hanning", "snip_edges": False}),
    "rectangular": (lambda: white_noise(16000, 1.0), {"window_type": "rectangular"}),
    "dc_offset": (lambda: 0.3 * speech_like(16000, 2.0) + 0.5, {}),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_parity_with_kaldi_native_fbank(case):
    make, options = PARITY_CASES[case]
    waveform = make()
    reference = kaldi_fbank(waveform, 16000, **options)
    ours = fbank(waveform, 16000, **options).numpy()
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape
    assert reference.min() > 0.0, "test signal must keep all mel energies far above the log floor"
    max_diff = float(np.abs(ours - reference).max())
    print(f"{case}: frames={ours.shape[0]} max|diff|={max_diff:.2e}")
    assert max_diff <= TOLERANCE, f"{case}: max |diff| {max_diff:.3e}"


def test_batched_equals_per_utterance():
    rng = np.random.default_rng(3)
    batch = np.stack([speech_like(16000, 1.0, seed=s) for s in range(4)]) * rng.uniform(0.2, 1.0, (4, 1))
    batch = batch.astype(np.float32)
    batched = fbank(batch).numpy()
    assert batched.shape == (4, 98, 80)
    for i in range(4):
        np.testing.assert_allclose(batched[i], fbank(batch[i]).numpy(), atol=1e-5, rtol=0)
    nested = fbank(batch.reshape(2, 2, -1), snip_edges=False).numpy()
    assert nested.shape == (2, 2, 100, 80)
    np.testing.assert_allclose(nested.reshape(4, 100, 80), fbank(batch, snip_edges=False).numpy(), atol=1e-5)


def test_inside_tf_data_graph_with_unknown_length():
    waves = [speech_like(16000, 1.0, seed=5)[:n] for n in (16000, 9000)]
    ds = tf.data.Dataset.from_generator(lambda: iter(waves), output_signature=tf.TensorSpec([None], tf.float32))
    for got, wave in zip(ds.map(fbank), waves):
        assert got.shape[-1] == 80
        np.testing.assert_allclose(got.numpy(), fbank(wave).numpy(), atol=1e-5)


def test_dither():
    waveform = np.stack([speech_like(16000, 1.0, seed=s) for s in range(2)])
    plain = fbank(waveform).numpy()
    np.testing.assert_array_equal(plain, fbank(waveform).numpy())  # dither=0: deterministic
    seed = tf.constant([7, 11])
    a = fbank(waveform, dither=1.0, seed=seed).numpy()
    np.testing.assert_array_equal(a, fbank(waveform, dither=1.0, seed=seed).numpy())
    b = fbank(waveform, dither=1.0, seed=tf.constant([7, 12])).numpy()
    assert np.abs(a - b).max() > 1e-4
    c, d = fbank(waveform, dither=1.0).numpy(), fbank(waveform, dither=1.0).numpy()  # global RNG
    assert np.abs(c - d).max() > 1e-4
    assert np.abs(a - plain).max() > 1e-4 and np.all(np.isfinite(a))


def test_dither_level_matches_kaldi_on_silence():
    # On digital silence the features are pure dither; the per-bin means over ~2000 frames must agree.
    silence = np.zeros(16000 * 20, np.float32)
    ours = fbank(silence, dither=1.0, seed=tf.constant([1, 2])).numpy()
    reference = kaldi_fbank(silence, 16000, dither=1.0)
    assert ours.shape == reference.shape
    assert np.abs(ours.mean(0) - reference.mean(0)).max() < 0.3  # typical 0.05-0.12; knf draws at random
    assert np.abs(ours.std(0) - reference.std(0)).max() < 0.2  # typical 0.05-0.08
    assert np.all(fbank(silence[:4000]).numpy() == np.float32(np.log(np.finfo(np.float32).eps)))


@pytest.mark.parametrize("num_samples", [0, 1, 100, 399, 400, 559, 560, 5000, 32240])
def test_frame_counts(num_samples):
    waveform = white_noise(16000, 3.0)[:num_samples]
    for snip_edges in (True, False):
        got = fbank(waveform, snip_edges=snip_edges).numpy().shape[0]
        assert got == kaldi_fbank(waveform, 16000, snip_edges=snip_edges).shape[0]
        expected = num_frames_for_samples(num_samples) if snip_edges else (num_samples + 80) // 160
        assert got == expected, (num_samples, snip_edges)


def test_num_samples_for_frames():
    assert num_samples_for_frames(200) == 32240
    assert num_frames_for_samples(32240) == 200 and num_frames_for_samples(32239) == 199
    assert num_frames_for_samples(399) == 0 and num_frames_for_samples(400) == 1
    assert num_samples_for_frames(1, sample_rate=8000) == 200
    for frames in (1, 2, 57, 300):
        assert num_frames_for_samples(num_samples_for_frames(frames)) == frames


def test_mean_normalize():
    feats = fbank(np.stack([speech_like(16000, 1.0, seed=s) for s in range(3)]))
    normed = mean_normalize(feats).numpy()
    np.testing.assert_allclose(normed.mean(axis=-2), 0.0, atol=1e-4)
    np.testing.assert_allclose(normed, feats.numpy() - feats.numpy().mean(axis=-2, keepdims=True), atol=1e-5)


def test_bad_arguments():
    wave = white_noise(16000, 0.5)
    with pytest.raises(ValueError, match="unknown window_type 'hammming'.*hamming.*povey.*rectangular"):
        fbank(wave, window_type="hammming")
    with pytest.raises(ValueError, match="floating point"):
        fbank((wave * 32767).astype(np.int16))
    with pytest.raises(ValueError, match="mel frequency range"):
        fbank(wave, low_freq_hz=9000.0)
    with pytest.raises(ValueError, match="no FFT bins"):
        fbank(wave, num_mel_bins=250)
    with pytest.raises(ValueError, match="sample_rate"):
        fbank(wave, sample_rate=16000.0)
    with pytest.raises(ValueError, match="dither"):
        fbank(wave, dither=-1.0)


def test_constants_are_cached():
    assert features._mel_matrix(80, 512, 16000, 20.0, 0.0) is features._mel_matrix(80, 512, 16000, 20.0, 0.0)
    mel = features._mel_matrix(80, 512, 16000, 20.0, 0.0)
    assert mel.shape == (257, 80) and not mel[256].any()  # Nyquist bin gets weight 0, as Kaldi
