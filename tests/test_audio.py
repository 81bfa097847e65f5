"""data_pipeline.audio: decoding, cropping and the BadAudioError cases, on files made in tmp_path."""

import io
import os
import pickle

import numpy as np
import pytest
import soundfile

from data_pipeline.audio import AudioInfo, BadAudioError, audio_info, load_audio


def _signal(num_samples, seed=0, channels=1):
    rng = np.random.default_rng(seed)
    shape = (num_samples,) if channels == 1 else (num_samples, channels)
    return rng.uniform(-0.9, 0.9, shape).astype(np.float32)


def _write(path, data, sample_rate=16000, subtype="PCM_16"):
    soundfile.write(str(path), data, sample_rate, subtype=subtype)
    return path


def _quantised(data):
    """data after a PCM_16 round trip (libsndfile's float -> int16 -> float conversion), via memory."""
    buffer = io.BytesIO()
    soundfile.write(buffer, data, 16000, format="WAV", subtype="PCM_16")
    buffer.seek(0)
    return soundfile.read(buffer, dtype="float32")[0]


def test_wav_round_trip_and_info(tmp_path):
    data = _signal(16000 * 3 + 17)
    path = _write(tmp_path / "a.wav", data)
    info = audio_info(path)
    assert info == AudioInfo(num_samples=data.size, sample_rate=16000, channels=1)
    assert info.seconds == pytest.approx(data.size / 16000)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.flags.c_contiguous
    np.testing.assert_allclose(audio, data, atol=1.0 / 32768)
    np.testing.assert_array_equal(audio, _quantised(data))
    assert np.abs(audio).max() <= 1.0


def test_int16_scale(tmp_path):
    path = tmp_path / "edges.wav"
    soundfile.write(str(path), np.array([-32768, -1, 0, 1, 32767], np.int16), 16000, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(path), np.array([-32768, -1, 0, 1, 32767], np.float32) / 32768)


def test_flac_round_trip(tmp_path):
    # int16 data is stored exactly (libsndfile's float -> int rounding differs between WAV and FLAC writers).
    pcm = np.random.default_rng(1).integers(-32768, 32768, 16000 * 2 + 5).astype(np.int16)
    flac = load_audio(_write(tmp_path / "a.flac", pcm))
    np.testing.assert_array_equal(flac, pcm.astype(np.float32) / 32768)
    np.testing.assert_array_equal(flac, load_audio(_write(tmp_path / "a.wav", pcm)))
    assert audio_info(tmp_path / "a.flac") == AudioInfo(pcm.size, 16000, 1)


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_crop_equals_slice_of_full_read(tmp_path, suffix):
    path = _write(tmp_path / f"long.{suffix}", _signal(16000 * 5, seed=2))
    full = load_audio(path)
    for start, num in [(0, 32240), (12345, 32240), (full.size - 32240, 32240), (100, 0), (7, -1)]:
        crop = load_audio(path, start=start, num_samples=num)
        np.testing.assert_array_equal(crop, full[start:] if num == -1 else full[start:start + num])


def test_stereo_gives_channel_zero(tmp_path):
    data = _signal(8000, seed=3, channels=2)
    path = _write(tmp_path / "stereo.wav", data)
    assert audio_info(path).channels == 2
    np.testing.assert_array_equal(load_audio(path), _quantised(data)[:, 0])
    np.testing.assert_array_equal(load_audio(path, start=10, num_samples=20), _quantised(data)[10:30, 0])


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    for call in (audio_info, load_audio):
        with pytest.raises(BadAudioError, match="no such file") as err:
            call(path)
        assert err.value.path == str(path) and str(err.value).startswith(str(path))


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(BadAudioError, match="not a regular file"):
        load_audio(tmp_path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    for call in (audio_info, load_audio):
        with pytest.raises(BadAudioError, match=r"empty \(0 bytes\)") as err:
            call(path)
        assert err.value.path == str(path)


def test_zero_samples(tmp_path):
    path = _write(tmp_path / "header_only.wav", np.zeros(0, np.float32))
    for call in (audio_info, load_audio):
        with pytest.raises(BadAudioError, match="no audio samples"):
            call(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"RIFF" + np.random.default_rng(4).bytes(2000))
    with pytest.raises(Exception) as soundfile_error:
        soundfile.info(str(path))
    for call in (audio_info, load_audio):
        with pytest.raises(BadAudioError) as err:
            call(path)
        message = str(err.value)
        assert message.startswith(f"{path}: cannot open as audio: ") and str(soundfile_error.value) in message
        assert isinstance(err.value, ValueError)


def test_truncated_wav(tmp_path):
    good = _write(tmp_path / "good.wav", _signal(16000))
    path = tmp_path / "truncated.wav"
    path.write_bytes(good.read_bytes()[:16000])  # header intact: declares 32000 data bytes
    for call in (audio_info, load_audio, lambda p: load_audio(p, num_samples=100)):
        with pytest.raises(BadAudioError, match="truncated: the WAV header declares 32000 bytes"):
            call(path)


def test_truncated_flac(tmp_path):
    good = _write(tmp_path / "good.flac", _signal(16000 * 4, seed=5))
    path = tmp_path / "truncated.flac"
    blob = good.read_bytes()
    path.write_bytes(blob[:len(blob) // 2])  # STREAMINFO still promises 64000 samples
    assert audio_info(path).num_samples == 64000
    with pytest.raises(BadAudioError, match=r"truncated|decoding samples \[0, 64000\) failed") as err:
        load_audio(path)
    assert err.value.path == str(path)
    np.testing.assert_array_equal(load_audio(path, num_samples=1000), load_audio(good, num_samples=1000))


def test_wrong_sample_rate(tmp_path):
    path = _write(tmp_path / "narrowband.wav", _signal(8000), sample_rate=8000)
    assert audio_info(path).sample_rate == 8000  # info does not judge the rate
    with pytest.raises(BadAudioError) as err:
        load_audio(path)
    assert str(err.value).startswith(f"{path}: sample rate is 8000 Hz, expected 16000 Hz; resample it first")
    assert load_audio(path, sample_rate=8000).size == 8000


def test_bad_ranges_are_value_errors_not_bad_audio(tmp_path):
    path = _write(tmp_path / "a.wav", _signal(1000))
    for kwargs in ({"start": -1}, {"num_samples": -2}, {"start": 900, "num_samples": 200}, {"start": 1001}):
        with pytest.raises(ValueError, match=str(path)) as err:
            load_audio(path, **kwargs)
        assert not isinstance(err.value, BadAudioError)
    assert load_audio(path, start=1000).size == 0


def test_float_file_and_pathlike(tmp_path):
    data = _signal(500, seed=6)
    path = _write(tmp_path / "float.wav", data, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(os.fspath(path)), data)
    np.testing.assert_array_equal(load_audio(path), data)


def test_bad_audio_error_pickles():
    err = pickle.loads(pickle.dumps(BadAudioError("/x/y.wav", "file is empty (0 bytes)")))
    assert isinstance(err, BadAudioError) and err.path == "/x/y.wav"
    assert str(err) == "/x/y.wav: file is empty (0 bytes)"


def test_short_read_is_truncation(tmp_path, monkeypatch):
    # Some decoders stop early without an error; load_audio must not return a short crop silently.
    path = _write(tmp_path / "a.flac", _signal(4000, seed=7))
    real_read = soundfile.SoundFile.read
    monkeypatch.setattr(soundfile.SoundFile, "read", lambda self, frames=-1, **kw: real_read(self, frames, **kw)[:-10])
    with pytest.raises(BadAudioError, match=r"truncated: the header promises 4000 samples but reading "
                                            r"\[100, 1100\) returned only 990"):
        load_audio(path, start=100, num_samples=1000)
