"""Augmentation: the resampler against scipy's resample_poly and soxr (sox's resampler, which WeSpeaker uses),
reverb and noise against direct numpy transcriptions of WeSpeaker's add_reverb_noise, and the Augmenter's
choices, determinism, file handling and errors (through tf.data) on generated RIR / MUSAN-like trees."""

import os

import numpy as np
import pytest
import scipy.signal
import soundfile
import tensorflow as tf

from data_pipeline import augment
from data_pipeline.audio import BadAudioError

SR = 16000
N = 32240  # a 200-frame chunk


def _band_limited(n, seed=0, cutoff_hz=6000.0):
    rng = np.random.default_rng(seed)
    taps = scipy.signal.firwin(511, cutoff_hz, fs=SR)
    x = scipy.signal.lfilter(taps, 1.0, rng.standard_normal(n + 511))[511:]
    return (x / np.abs(x).max()).astype(np.float32)


@pytest.mark.parametrize("speed", [0.9, 1.1, 1.25])
def test_speed_perturb_matches_resample_poly(speed):
    x = np.random.default_rng(1).standard_normal((2, 3001)).astype(np.float32)
    up, down = augment._ratio(speed)
    ref = scipy.signal.resample_poly(x.astype(np.float64), up, down, axis=-1)  # length ceil, ours round
    y = augment.speed_perturb(x, speed).numpy()
    assert y.shape == (2, augment.speed_output_length(3001, speed)) == (2, round(3001 / speed))
    np.testing.assert_allclose(y, ref[:, :y.shape[1]], atol=2e-6)
    np.testing.assert_array_equal(augment.speed_perturb(x[1], speed).numpy(), y[1])  # unbatched


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_perturb_matches_soxr_away_from_edges(speed):
    soxr = pytest.importorskip("soxr")
    x = _band_limited(20000)
    y = augment.speed_perturb(x, speed).numpy()
    z = soxr.resample(x, SR * speed, SR, quality="HQ")
    assert len(y) == len(z)  # both round(n / speed)
    assert np.abs(y[100:-100] - z[100:-100]).max() < 1e-2


@pytest.mark.parametrize("speed", augment.SPEEDS)
def test_speed_perturb_moves_a_tone_and_keeps_the_length_contract(speed):
    t = np.arange(N) / SR
    y = augment.speed_perturb(np.sin(2 * np.pi * 1000 * t).astype(np.float32), speed).numpy()
    assert len(y) == round(N / speed)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)), 1 << 18))
    assert np.argmax(spectrum) * SR / (1 << 18) == pytest.approx(1000 * speed, abs=2.0)
    # A crop of speed_input_length samples gives the same first N outputs as a longer crop.
    x = _band_limited(N * 2, seed=2)
    n_in = augment.speed_input_length(N, speed)
    assert augment.speed_output_length(n_in, speed) >= N
    np.testing.assert_array_equal(augment.speed_perturb(x[:n_in], speed).numpy()[:N],
                                  augment.speed_perturb(x, speed).numpy()[:N])


def test_speed_one_is_identity_and_bad_speed_is_rejected():
    x = tf.constant(np.arange(10, dtype=np.float32))
    np.testing.assert_array_equal(augment.speed_perturb(x, 1.0).numpy(), x.numpy())
    assert augment.speed_input_length(N, 1.0) == N
    with pytest.raises(ValueError, match="speed"):
        augment.speed_perturb(x, 0.0)


@pytest.mark.parametrize("rir_len", [1, 700, 5000])
def test_reverberate_matches_full_convolution_cut_to_length(rir_len):
    rng = np.random.default_rng(rir_len)
    x = rng.standard_normal(3000).astype(np.float32)
    rir = (rng.standard_normal(rir_len) * np.exp(-np.arange(rir_len) / 300)).astype(np.float32)
    ref = scipy.signal.convolve(x, rir / np.sqrt(np.sum(rir**2)), mode="full")[:len(x)]
    np.testing.assert_allclose(augment.reverberate(x, 7 * rir).numpy(), ref, atol=1e-4 * np.abs(ref).max())


def _wespeaker_noise(audio, noise_audio, noise_snr):
    audio_db = 10 * np.log10(np.mean(audio**2) + 1e-4)
    noise_db = 10 * np.log10(np.mean(noise_audio**2) + 1e-4)
    noise_audio = np.sqrt(10**((audio_db - noise_db - noise_snr) / 10)) * noise_audio
    out_audio = audio + noise_audio
    return out_audio / (np.max(np.abs(out_audio)) + 1e-4)


@pytest.mark.parametrize("snr", [0.0, 7.5, 30.0])
def test_add_noise_matches_wespeaker_and_reaches_the_snr(snr):
    rng = np.random.default_rng(3)
    x = (0.3 * rng.standard_normal(N)).astype(np.float32)
    for noise_std in (0.3, 0.03):
        noise = (noise_std * rng.standard_normal(N)).astype(np.float32)
        noisy = augment.add_noise(x, noise, snr).numpy()
        np.testing.assert_allclose(augment.peak_normalize(noisy).numpy(), _wespeaker_noise(x, noise, snr),
                                   atol=1e-5)
        realised = 10 * np.log10(np.mean(x**2) / np.mean((noisy - x) ** 2))
        # The 1e-4 power floors shift the SNR by 10 log10(1 + 1e-4 / power): ~0.5 dB for this quiet noise.
        floors = 10 * np.log10((1 + 1e-4 / np.mean(noise**2)) / (1 + 1e-4 / np.mean(x**2)))
        assert realised == pytest.approx(snr + floors, abs=1e-3)
        if noise_std == 0.3:
            assert realised == pytest.approx(snr, abs=0.01)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return augment.write_fake_sources(tmp_path_factory.mktemp("aug"), num_rirs=4, num_noises=2)


@pytest.fixture(scope="module")
def wav():
    return _band_limited(N, seed=4) * 0.5


def test_fake_sources_layout_and_counts(sources):
    rir_dir, musan_dir = sources
    aug = augment.Augmenter(rir_dir, musan_dir)
    assert aug.num_rirs == 4 and aug.num_noises == {"noise": 2, "speech": 2, "music": 2}
    assert "4 RIRs" in aug.describe() and "speech 2 at 10-30 dB" in aug.describe()
    info = soundfile.info(aug.rir_paths[0])
    assert info.samplerate == SR and info.subtype == "PCM_16" and 0.3 <= info.duration <= 0.8


def test_choices_follow_the_recipe_proportions(sources):
    aug = augment.Augmenter(*sources, seed=5)
    choices = [aug.choose(i) for i in range(2000)]
    augmented = [c for c in choices if c.kind != "none"]
    assert len(augmented) / len(choices) == pytest.approx(0.6, abs=0.04)
    assert sum(c.kind == "reverb" for c in augmented) / len(augmented) == pytest.approx(0.5, abs=0.05)
    noises = [c for c in augmented if c.kind == "noise"]
    assert {c.category for c in noises} == {"noise", "speech", "music"}
    for c in noises:
        lo, hi = augment.DEFAULT_SNR_DB[c.category]
        assert lo <= c.snr_db <= hi and os.sep + c.category + os.sep in c.path
    assert choices == [aug.choose(i) for i in range(2000)]
    assert [aug.choose(i) for i in range(50)] != [augment.Augmenter(*sources, seed=6).choose(i) for i in range(50)]


def test_apply_is_deterministic_and_matches_the_reference(sources, wav):
    aug = augment.Augmenter(*sources, aug_prob=1.0, seed=0)
    seen = set()
    for index in range(12):
        out, kind, snr = aug.apply(wav, tf.constant(index, tf.int64))
        choice = aug.choose(index)
        assert augment.KINDS[int(kind)] == choice.kind != "none"
        np.testing.assert_array_equal(aug(wav, index).numpy(), out.numpy())
        _, source, _ = aug._source(N, index)
        if choice.kind == "reverb":
            ref = scipy.signal.convolve(wav, source / np.sqrt(np.sum(source**2)), mode="full")[:N]
            ref = ref / (np.max(np.abs(ref)) + 1e-4)
        else:
            assert float(snr) == pytest.approx(choice.snr_db)
            ref = _wespeaker_noise(wav, source, choice.snr_db)
        np.testing.assert_allclose(out.numpy(), ref, atol=2e-5)
        seen.add(choice.kind)
        assert not np.array_equal(out.numpy(), wav)
    assert seen == {"reverb", "noise"}
    assert not np.array_equal(aug(wav, 0).numpy(), aug(wav, 1).numpy())


def test_noise_is_a_random_crop_or_wrapped(tmp_path):
    musan = tmp_path / "musan"
    (musan / "noise" / "a").mkdir(parents=True)
    ramp = np.arange(5000, dtype=np.int16)
    soundfile.write(str(musan / "noise" / "a" / "short.wav"), ramp, SR, subtype="PCM_16")
    aug = augment.Augmenter("", musan, aug_prob=1.0)
    _, noise, _ = aug._source(12000, 0)
    np.testing.assert_array_equal(noise, np.tile(ramp / 32768.0, 3)[:12000].astype(np.float32))
    starts = {int(aug._source(1000, i)[1][0] * 32768) for i in range(20)}
    assert len(starts) > 10 and all(0 <= s <= 4000 for s in starts)
    _, noise, _ = aug._source(1000, 3)
    np.testing.assert_array_equal(noise, ramp[int(noise[0] * 32768):][:1000] / np.float32(32768))


def test_probability_zero_is_identity_and_one_source_is_enough(sources, wav):
    rir_dir, musan_dir = sources
    never = augment.Augmenter(rir_dir, musan_dir, aug_prob=0.0)
    ds = tf.data.Dataset.range(20).map(lambda i: never(wav, i), num_parallel_calls=tf.data.AUTOTUNE)
    for out in ds.as_numpy_iterator():
        np.testing.assert_array_equal(out, wav)
    assert {augment.Augmenter(rir_dir, "", aug_prob=1.0).choose(i).kind for i in range(30)} == {"reverb"}
    assert {augment.Augmenter("", musan_dir, aug_prob=1.0).choose(i).kind for i in range(30)} == {"noise"}
    off = augment.Augmenter("", "")
    np.testing.assert_array_equal(off(wav, 3).numpy(), wav)
    assert "off" in off.describe()


def test_tf_data_map_matches_eager(sources, wav):
    aug = augment.Augmenter(*sources, seed=9)
    ds = tf.data.Dataset.range(16).map(lambda i: aug(wav, i), num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True)
    outs = list(ds.as_numpy_iterator())
    for index in (0, 5, 11):
        np.testing.assert_array_equal(outs[index], aug(wav, index).numpy())
    changed = [not np.array_equal(o, wav) for o in outs]
    assert changed == [aug.choose(i).kind != "none" for i in range(16)]


def _musan_with(tmp_path, name, write):
    musan = tmp_path / "musan"
    (musan / "noise" / "x").mkdir(parents=True)
    path = musan / "noise" / "x" / name
    write(path)
    return musan, str(path)


def test_corrupt_noise_file_error_names_it_through_tf_data(tmp_path, wav):
    musan, path = _musan_with(tmp_path, "bad.wav", lambda p: p.write_bytes(os.urandom(3000)))
    aug = augment.Augmenter("", musan, aug_prob=1.0)
    ds = tf.data.Dataset.range(4).map(lambda i: aug(wav, i))
    with pytest.raises(tf.errors.OpError, match="bad.wav"):
        list(ds.as_numpy_iterator())


def test_corrupt_noise_file_is_skipped_and_logged(tmp_path, wav):
    class Log:
        def __init__(self):
            self.errors = []

        def add(self, error):
            self.errors.append(error)

    musan, path = _musan_with(tmp_path, "bad.wav", lambda p: p.write_bytes(os.urandom(3000)))
    bad_log = Log()
    aug = augment.Augmenter("", musan, aug_prob=1.0, on_bad_audio="skip", bad_audio_log=bad_log)
    ds = tf.data.Dataset.range(6).map(lambda i: aug(wav, i), num_parallel_calls=2)
    for out in ds.as_numpy_iterator():
        np.testing.assert_array_equal(out, wav)
    assert [e.path for e in bad_log.errors] == [path]
    assert isinstance(bad_log.errors[0], BadAudioError)


def test_wrong_sample_rate_and_silent_rir_are_bad_audio(tmp_path, wav):
    musan, path = _musan_with(tmp_path, "8k.wav", lambda p: soundfile.write(
        str(p), np.zeros(8000, np.int16) + 100, 8000, subtype="PCM_16"))
    with pytest.raises(BadAudioError, match="8k.wav.*sample rate is 8000 Hz"):
        augment.Augmenter("", musan, aug_prob=1.0)._source(N, 0)
    rirs = tmp_path / "rirs"
    rirs.mkdir()
    soundfile.write(str(rirs / "zero.wav"), np.zeros(100, np.int16), SR, subtype="PCM_16")
    aug = augment.Augmenter(rirs, "", aug_prob=1.0)
    with pytest.raises(tf.errors.OpError, match="zero.wav: RIR has no energy"):
        list(tf.data.Dataset.range(1).map(lambda i: aug(wav, i)).as_numpy_iterator())


def test_bad_directories_and_options_are_value_errors(tmp_path, sources):
    rir_dir, musan_dir = sources
    with pytest.raises(ValueError, match="rir_dir .*nowhere.* is not a directory"):
        augment.Augmenter(tmp_path / "nowhere", musan_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="musan_dir .*empty.* holds no .wav or .flac"):
        augment.Augmenter(rir_dir, tmp_path / "empty")
    with pytest.raises(ValueError, match="free-sound.*not inside one of the category directories"):
        augment.Augmenter(rir_dir, musan_dir / "noise")  # the category level, not the MUSAN root
    with pytest.raises(ValueError, match="on_bad_audio"):
        augment.Augmenter(rir_dir, musan_dir, on_bad_audio="ignore")
    with pytest.raises(ValueError, match="aug_prob"):
        augment.Augmenter(rir_dir, musan_dir, aug_prob=1.5)
    with pytest.raises(ValueError, match="snr_db"):
        augment.Augmenter(rir_dir, musan_dir, snr_db={"noise": (10, 0)})
