"""data_pipeline.prepare: converting a small mixed tree (wav at 8/16/44.1 kHz, flac, m4a, bad files) to 16 kHz wav."""

import os
import pathlib
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
import scipy.signal
import soundfile

from data_pipeline import prepare
from data_pipeline.audio import FFMPEG_ENV, FfmpegNotFoundError, find_ffmpeg

try:
    FFMPEG = find_ffmpeg()
except FfmpegNotFoundError:
    FFMPEG = None

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tone(hz, seconds, sample_rate):
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * sample_rate)) / sample_rate)).astype(np.float32)


def _noise(seconds, sample_rate, seed, channels=1, max_hz=None):
    shape = (int(seconds * sample_rate),) + ((channels,) if channels > 1 else ())
    noise = np.random.default_rng(seed).uniform(-0.5, 0.5, shape)
    if max_hz is not None:  # content well below 8 kHz, where resamplers agree (their anti-alias filters differ)
        noise = scipy.signal.sosfiltfilt(scipy.signal.butter(8, max_hz, fs=sample_rate, output="sos"), noise, axis=0)
    return noise.astype(np.float32)


def _peak_hz(wav, sample_rate):
    return np.argmax(np.abs(np.fft.rfft(wav * np.hanning(wav.size)))) * sample_rate / wav.size


def _write(root, rel, data, sample_rate):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data, sample_rate, subtype="PCM_16")
    return path


def _write_m4a(root, rel, data, sample_rate):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "-",
                    "-c:a", "aac", str(path)], input=data.tobytes(), check=True)


class Tree(NamedTuple):
    root: pathlib.Path
    sources: dict  # relative path of each good file -> (float32 data written, sample rate)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A VoxCeleb-like tree of good files at several rates and formats, two bad files and two to ignore."""
    root = tmp_path_factory.mktemp("src")
    sources = {
        "id001/vidA/00001.wav": (_noise(1.0, 16000, seed=0), 16000),
        "id001/vidA/00002.wav": (_tone(440, 1.5, 8000), 8000),
        "id002/vidB/00001.wav": (_tone(1000, 1.2, 44100), 44100),
        "id002/vidB/00002.flac": (_noise(0.8, 16000, seed=1, channels=2), 16000),
        "id002/vidC/00003.wav": (_noise(0.5, 44100, seed=2, max_hz=6000), 44100),
    }
    for rel, (data, rate) in sources.items():
        _write(root, rel, data, rate)
    if FFMPEG is not None:  # the m4a part of the checks is skipped only when no ffmpeg can be found
        for rel, data, rate in (("id003/vidD/00001.m4a", _tone(1000, 2.0, 16000), 16000),
                                ("id003/vidD/00002.m4a", _tone(300, 1.0, 48000), 48000)):
            _write_m4a(root, rel, data, rate)
            sources[rel] = (data, rate)
    (root / "id004" / "vidE").mkdir(parents=True)
    (root / "id004" / "vidE" / "corrupt.wav").write_bytes(np.random.default_rng(3).bytes(4000))
    (root / "id004" / "vidE" / "empty.wav").write_bytes(b"")
    (root / "id004" / "notes.txt").write_text("not audio")
    (root / "id004" / "._00001.wav").write_bytes(b"macOS metadata")  # hidden: ignored
    return Tree(root, sources)


BAD = ("id004/vidE/corrupt.wav", "id004/vidE/empty.wav")


def _outputs(dst):
    return sorted(str(p.relative_to(dst)) for p in dst.rglob("*.wav"))


def _check_output(dst, rel, data, rate):
    out = dst / prepare.output_path(rel)
    info = soundfile.info(str(out))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV"), rel
    wav, _ = soundfile.read(str(out), dtype="float32")
    mono = data if data.ndim == 1 else data[:, 0]
    expected_samples = int(np.ceil(mono.size * 16000 / rate))
    if rel.endswith(".m4a"):
        assert abs(wav.size - expected_samples) <= 16 * 5, rel  # within 5 ms: AAC priming/padding
    else:
        assert wav.size == expected_samples, rel
    # An independent resampler as the reference for the content.
    reference = mono if rate == 16000 else scipy.signal.resample_poly(mono.astype(np.float64), 16000, rate)
    n = min(wav.size, reference.size)
    min_correlation = 0.95 if rel.endswith(".m4a") else 0.99  # AAC is lossy
    assert np.corrcoef(wav[:n], reference[:n])[0, 1] > min_correlation, rel
    if rate == 16000 and not rel.endswith(".m4a"):  # int16 sources at the output rate are copied exactly
        np.testing.assert_allclose(wav, reference, atol=1 / 32768)
    if rel.endswith(".m4a") or rate != 16000:
        assert _peak_hz(wav, 16000) == pytest.approx(_peak_hz(mono, rate), abs=3), rel


def test_converts_tree_and_reports_failures(src, tmp_path):
    dst = tmp_path / "wav"
    report = prepare.prepare_tree(src.root, dst, num_workers=1)
    good = sorted(src.sources)
    assert (report.converted, report.already_done, report.failed) == (len(good), 0, 2)
    assert _outputs(dst) == sorted(prepare.output_path(rel) for rel in good)
    for rel, (data, rate) in src.sources.items():
        _check_output(dst, rel, data, rate)
    expected_s = sum(int(np.ceil(d.shape[0] * 16000 / r)) / 16000 for d, r in src.sources.values())
    assert report.audio_s == pytest.approx(expected_s, abs=0.02)

    reasons = dict(report.failures)
    assert sorted(reasons) == sorted(BAD)
    assert "cannot open as audio" in reasons[BAD[0]] and "empty (0 bytes)" in reasons[BAD[1]]
    lines = (dst / prepare.FAILURES_FILE).read_text().splitlines()
    assert report.failures_file == dst / prepare.FAILURES_FILE
    assert [line.split("\t")[0] for line in lines] == sorted(BAD) and all(line.count("\t") == 1 for line in lines)
    assert "2 failed" in report.summary() and prepare.FAILURES_FILE in report.summary()
    assert not list(dst.rglob(f"*{prepare.TMP_SUFFIX}"))


def test_rerun_skips_finished_files_and_redoes_leftovers(src, tmp_path):
    dst = tmp_path / "wav"
    prepare.prepare_tree(src.root, dst, num_workers=1, extensions=[".wav", "flac"])
    done = {rel: (dst / rel).stat().st_mtime_ns for rel in _outputs(dst)}
    # A killed run: one utterance has only a half-written temporary file and no final file.
    redo = dst / "id001" / "vidA" / "00002.wav"
    redo.unlink()
    leftover = redo.with_name(f".{redo.name}{prepare.TMP_SUFFIX}")
    leftover.write_bytes(b"RIFF half-written")

    report = prepare.prepare_tree(src.root, dst, num_workers=1, extensions=[".wav", "flac"])
    assert (report.converted, report.already_done, report.failed) == (1, len(done) - 1, 2)
    assert {rel: (dst / rel).stat().st_mtime_ns for rel in _outputs(dst) if dst / rel != redo} == {
        rel: t for rel, t in done.items() if dst / rel != redo}
    assert not leftover.exists()
    _check_output(dst, "id001/vidA/00002.wav", *src.sources["id001/vidA/00002.wav"])


def test_failures_file_removed_when_nothing_fails(src, tmp_path):
    dst = tmp_path / "wav"
    (dst).mkdir()
    (dst / prepare.FAILURES_FILE).write_text("id001/old.wav\tstale\n")
    report = prepare.prepare_tree(src.root, dst, num_workers=1, extensions=[".flac"])
    assert (report.converted, report.failed, report.failures_file) == (1, 0, None)
    assert not (dst / prepare.FAILURES_FILE).exists()


def test_missing_ffmpeg_fails_fast_with_instructions(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _write(src, "id001/v/00001.wav", _tone(440, 0.2, 16000), 16000)
    (src / "id001" / "v" / "00002.m4a").write_bytes(b"needs ffmpeg")
    with pytest.raises(FfmpegNotFoundError, match=r"decoding .*00002\.m4a \(\.m4a\) needs ffmpeg, but the ffmpeg "
                                                  r"argument names .*no-ffmpeg"):
        prepare.prepare_tree(src, tmp_path / "out1", num_workers=1, ffmpeg=tmp_path / "no-ffmpeg")
    assert not (tmp_path / "out1").exists()  # checked once, before any file was converted

    monkeypatch.delenv(FFMPEG_ENV, raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(FfmpegNotFoundError, match="not found on PATH.*apt install ffmpeg.*pip install imageio-ffmpeg"):
        prepare.prepare_tree(src, tmp_path / "out2", num_workers=1)


def test_bad_source_and_destination(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"source directory '{tmp_path / 'nope'}' does not exist"):
        prepare.prepare_tree(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty" / "id001").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"source directory '{tmp_path / 'empty'}' contains no files"):
        prepare.prepare_tree(tmp_path / "empty", tmp_path / "out")
    _write(tmp_path / "src", "id001/v/a.wav", _tone(440, 0.1, 16000), 16000)
    _write(tmp_path / "src", "id001/v/a.flac", _tone(440, 0.1, 16000), 16000)
    with pytest.raises(ValueError, match="inside the source"):
        prepare.prepare_tree(tmp_path / "src", tmp_path / "src" / "wav16k")
    with pytest.raises(ValueError, match=r"1 pairs of files would be written to the same \.wav.*a\.flac and .*a\.wav"):
        prepare.prepare_tree(tmp_path / "src", tmp_path / "out")


def test_cli_exit_status_and_report(src, tmp_path):
    dst = tmp_path / "wav"
    command = [sys.executable, "-m", "data_pipeline.prepare", f"--src={src.root}", f"--dst={dst}",
               "--extensions=.wav,.flac", "--log_every=2"]
    env = {**os.environ, "PYTHONPATH": REPO}
    first = subprocess.run(command + ["--num_workers=2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120, check=False)
    assert first.returncode == 1, first.stderr  # --on_bad_audio=error: bad files make the status nonzero
    assert "5 converted, 0 already done, 2 failed" in first.stdout
    assert "files: " in first.stderr  # progress lines
    assert len((dst / prepare.FAILURES_FILE).read_text().splitlines()) == 2

    second = subprocess.run(command + ["--num_workers=1", "--on_bad_audio=skip"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr
    assert "0 converted, 5 already done, 2 failed" in second.stdout

    missing = subprocess.run([sys.executable, "-m", "data_pipeline.prepare", f"--src={tmp_path / 'nope'}",
                              f"--dst={dst}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                             check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
