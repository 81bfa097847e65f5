"""data_pipeline.audio: decoding, cropping and the BadAudioError cases, on files made in tmp_path."""

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.signal
import soundfile

from data_pipeline.audio import (FFMPEG_ENV, AudioInfo, BadAudioError, FfmpegNotFoundError, audio_info, decode_audio,
                                 find_ffmpeg, load_audio, resample)


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


# ----------------------------------------------------------------------------------------------------------------
# decode_audio, find_ffmpeg, resample
# ----------------------------------------------------------------------------------------------------------------

try:
    FFMPEG = find_ffmpeg()
except FfmpegNotFoundError:
    FFMPEG = None
needs_ffmpeg_binary = pytest.mark.skipif(FFMPEG is None, reason="no ffmpeg (apt install ffmpeg / imageio-ffmpeg)")


def _tone(hz, seconds, sample_rate, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * sample_rate)) / sample_rate)).astype(np.float32)


def _peak_hz(wav, sample_rate):
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(wav.size)))
    return np.argmax(spectrum) * sample_rate / wav.size


def _encode_aac(path, data, sample_rate, *extra_args):
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", str(sample_rate), "-ac", "1",
                    "-i", "-", "-c:a", "aac", *extra_args, str(path)], input=data.tobytes(), check=True)
    return path


def _write_bytes(path, blob):
    path.write_bytes(blob)
    return path


def test_decode_audio_wav_native_and_resampled(tmp_path):
    path = _write(tmp_path / "a.wav", _signal(16000, seed=8))
    wav, rate = decode_audio(path)
    assert rate == 16000 and wav.dtype == np.float32
    np.testing.assert_array_equal(wav, load_audio(path))
    same, rate = decode_audio(path, sample_rate=16000)  # already at the rate: not resampled, exactly the samples
    assert rate == 16000
    np.testing.assert_array_equal(same, wav)

    narrow = _write(tmp_path / "tone8k.flac", _tone(440, 1.5, 8000), sample_rate=8000)
    wav, rate = decode_audio(narrow, sample_rate=16000)
    assert rate == 16000 and wav.shape == (24000,) and wav.dtype == np.float32
    assert _peak_hz(wav, 16000) == pytest.approx(440, abs=2)


def test_decode_audio_stereo_gives_channel_zero(tmp_path):
    data = _signal(4000, seed=9, channels=2)
    wav, _ = decode_audio(_write(tmp_path / "stereo.flac", data))
    np.testing.assert_allclose(wav, data[:, 0], atol=1.0 / 32768)


@needs_ffmpeg_binary
def test_decode_audio_m4a_native_and_resampled(tmp_path):
    tone = _tone(1000, 2.0, 16000)
    wav, rate = decode_audio(_encode_aac(tmp_path / "a.m4a", tone, 16000))
    assert rate == 16000 and wav.dtype == np.float32
    assert abs(wav.size - tone.size) <= 16 * 5  # mp4 edit lists trim the AAC priming; allow 5 ms either way
    n = min(wav.size, tone.size)
    assert np.corrcoef(wav[:n], tone[:n])[0, 1] > 0.99

    wav, rate = decode_audio(_encode_aac(tmp_path / "b.m4a", _tone(1000, 1.0, 48000), 48000), sample_rate=16000)
    assert rate == 16000 and abs(wav.size - 16000) <= 16 * 5
    assert _peak_hz(wav, 16000) == pytest.approx(1000, abs=2)


@needs_ffmpeg_binary
def test_decode_audio_falls_back_to_ffmpeg_for_containers_libsndfile_cannot_open(tmp_path):
    tone = _tone(440, 1.0, 16000)
    misnamed = _encode_aac(tmp_path / "aac.m4a", tone, 16000).rename(tmp_path / "aac.mp3")
    wav, rate = decode_audio(misnamed)
    assert rate == 16000 and abs(wav.size - tone.size) <= 16 * 5
    with pytest.raises(BadAudioError, match="cannot open as audio"):  # no fallback for WAV: a corrupt one is bad
        decode_audio(_write_bytes(tmp_path / "aac.wav", misnamed.read_bytes()))


@needs_ffmpeg_binary
def test_decode_audio_bad_m4a_includes_ffmpeg_message(tmp_path):
    garbage = tmp_path / "garbage.m4a"
    garbage.write_bytes(np.random.default_rng(10).bytes(3000))
    with pytest.raises(BadAudioError, match=r"ffmpeg could not decode it \(exit status [1-9]\d*\): .*Invalid data"):
        decode_audio(garbage)

    # With the index first (faststart), ffmpeg decodes a truncated file to a shorter signal and only complains.
    whole = _encode_aac(tmp_path / "whole.m4a", _tone(440, 4.0, 16000), 16000, "-movflags", "+faststart")
    truncated = tmp_path / "truncated.m4a"
    truncated.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    with pytest.raises(BadAudioError, match="ffmpeg could not decode it") as err:
        decode_audio(truncated)
    assert err.value.path == str(truncated)


def test_decode_audio_empty_and_missing_need_no_ffmpeg(tmp_path):
    empty = tmp_path / "empty.m4a"
    empty.write_bytes(b"")
    with pytest.raises(BadAudioError, match=r"empty \(0 bytes\)"):
        decode_audio(empty, ffmpeg=tmp_path / "no-ffmpeg")
    with pytest.raises(BadAudioError, match="no such file"):
        decode_audio(tmp_path / "nope.m4a", ffmpeg=tmp_path / "no-ffmpeg")
    with pytest.raises(BadAudioError, match="cannot open as audio"):  # a corrupt .wav is soundfile's, not ffmpeg's
        decode_audio(_write_bytes(tmp_path / "corrupt.wav", b"RIFF" + bytes(100)), ffmpeg=tmp_path / "no-ffmpeg")


def test_find_ffmpeg_overrides_and_missing(tmp_path, monkeypatch):
    path = _write_bytes(tmp_path / "utt.m4a", b"not really aac")
    monkeypatch.setenv(FFMPEG_ENV, str(tmp_path / "typo-ffmpeg"))
    with pytest.raises(FfmpegNotFoundError, match=f"{FFMPEG_ENV} names .*typo-ffmpeg.*not an executable"):
        decode_audio(path)
    with pytest.raises(FfmpegNotFoundError, match="the ffmpeg argument names .*other"):
        find_ffmpeg(tmp_path / "other")

    monkeypatch.delenv(FFMPEG_ENV)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails, as when it is not installed
    with pytest.raises(FfmpegNotFoundError) as err:
        decode_audio(path)
    message = str(err.value)
    assert message.startswith(f"decoding {path} (.m4a) needs ffmpeg, which was not found on PATH")
    assert "apt install ffmpeg" in message and "pip install imageio-ffmpeg" in message and FFMPEG_ENV in message
    assert isinstance(err.value, RuntimeError) and not isinstance(err.value, BadAudioError)


def test_resample():
    wav = _tone(1000, 1.0, 44100)
    assert resample(wav, 44100, 44100) is wav
    out = resample(wav, 44100, 16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    assert _peak_hz(out, 16000) == pytest.approx(1000, abs=2)
    assert resample(wav[:1001], 44100, 16000).shape == (int(np.ceil(1001 * 16000 / 44100)),)
    # An independent polyphase resampler agrees away from the edges.
    reference = scipy.signal.resample_poly(wav.astype(np.float64), 160, 441)
    assert np.corrcoef(out[500:-500], reference[500:-500])[0, 1] > 0.999
    for bad in ((wav, 0, 16000), (wav, 44100, 16000.5), (wav[None], 44100, 16000)):
        with pytest.raises(ValueError, match="resample"):
            resample(*bad)
