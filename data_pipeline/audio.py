"""Decoding audio files (.wav, .flac and whatever else libsndfile reads) to float32 numpy, with clear errors.

`load_audio` returns mono float32: integer PCM is scaled to [-1, 1) (int16 x -> x / 32768); float-format
files are returned as stored. Multi-channel files give channel 0, as WeSpeaker's loader does. A
[start, start + num_samples) range is read by seeking, so a random 2-s crop of a long file costs only
those samples.

Every problem with a file raises `BadAudioError` (a ValueError) whose message starts with the path: missing
file, empty file (0 bytes or 0 samples), undecodable data (soundfile's message included), wrong sample
rate, and truncated files (a WAV whose data chunk is shorter than its header declares, or a read that
returns fewer samples than the header promised). Bad arguments (a negative start, a range past the end of
the file) raise a plain ValueError instead: they are the caller's mistake, not the file's.

`decode_audio` reads a whole file of any format at any rate, for data preparation: libsndfile formats with
soundfile, others (.m4a, .aac, ...) through an ffmpeg subprocess (`find_ffmpeg`: $SV_JAX_FFMPEG, PATH, or the
imageio-ffmpeg package; `FfmpegNotFoundError` says how to install one), then `resample` (soxr) to the rate
asked for. It follows the same BadAudioError conventions, with ffmpeg's messages in the problem text.

No jax / tensorflow imports: this module is used by the input pipeline and by data preparation.
"""

import dataclasses
import io
import os
import shutil
import stat
import subprocess

import numpy as np
import soundfile

from cli import UserError

_RESAMPLE_HINT = "resample it first (python -m data_pipeline.prepare --src=<tree> --dst=<new tree> converts a tree)"


class BadAudioError(UserError, ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""

    path: str

    def __init__(self, path, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable across worker processes despite the two-argument __init__
        return type(self), (self.path, self.problem)


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    num_samples: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate


def _check_file(path: str) -> None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise BadAudioError(path, "no such file") from None
    except OSError as e:
        raise BadAudioError(path, f"cannot access: {e}") from e
    if not stat.S_ISREG(status.st_mode):
        raise BadAudioError(path, "not a regular file")
    if status.st_size == 0:
        raise BadAudioError(path, "file is empty (0 bytes)")


def _wav_data_shortfall(path: str):
    """For a RIFF/WAVE file: (declared, present) bytes of the data chunk when fewer are present, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size_of_file = os.fstat(f.fileno()).st_size
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if chunk_id == b"data":
                    if size in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
                        return None
                    present = size_of_file - f.tell()
                    return (size, present) if present < size else None
                f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None


def _info(path: str, handle) -> AudioInfo:
    info = AudioInfo(num_samples=int(handle.frames), sample_rate=int(handle.samplerate),
                     channels=int(handle.channels))
    if info.num_samples <= 0:
        raise BadAudioError(path, "contains no audio samples (0 frames)")
    shortfall = _wav_data_shortfall(path)
    if shortfall is not None:
        declared, present = shortfall
        raise BadAudioError(path, f"truncated: the WAV header declares {declared} bytes of audio data but "
                                  f"only {present} are present ({info.num_samples} samples readable)")
    return info


def audio_info(path) -> AudioInfo:
    """Sample count, rate and channels from the header (soundfile.info); raises BadAudioError."""
    path = os.fspath(path)
    _check_file(path)
    try:
        handle = soundfile.info(path)
    except (soundfile.SoundFileError, RuntimeError, OSError) as e:
        raise BadAudioError(path, f"cannot open as audio: {e}") from e
    return _info(path, handle)


def check_sample_rate(info: AudioInfo, path, sample_rate: int) -> None:
    """BadAudioError naming the file if its rate is not `sample_rate` (features assume one rate)."""
    if info.sample_rate != sample_rate:
        raise BadAudioError(path, f"sample rate is {info.sample_rate} Hz, expected {sample_rate} Hz; "
                                  f"{_RESAMPLE_HINT}")


def load_audio(path, sample_rate: int = 16000, *, start: int = 0, num_samples: int = -1) -> np.ndarray:
    """Samples [start, start + num_samples) of channel 0 as float32 [n]; num_samples=-1 reads to the end.

    The file's rate must equal `sample_rate` (to load any rate, pass audio_info(path).sample_rate).
    Raises BadAudioError for unusable files and ValueError for a bad range.
    """
    path = os.fspath(path)
    if int(start) != start or start < 0:
        raise ValueError(f"{path}: start must be an int >= 0, got {start!r}")
    if int(num_samples) != num_samples or num_samples < -1:
        raise ValueError(f"{path}: num_samples must be an int >= 0 or -1 (to the end), got {num_samples!r}")
    start, num_samples = int(start), int(num_samples)
    _check_file(path)
    with _open(path) as handle:
        info = _info(path, handle)
        check_sample_rate(info, path, sample_rate)
        stop = info.num_samples if num_samples == -1 else start + num_samples
        if start > info.num_samples or stop > info.num_samples:
            raise ValueError(f"{path}: requested samples [{start}, {stop}) but the file has "
                             f"{info.num_samples} samples")
        return _read_channel0(path, handle, info, start, stop)


def _open(path: str) -> soundfile.SoundFile:
    try:
        return soundfile.SoundFile(path)
    except (soundfile.SoundFileError, RuntimeError, OSError) as e:
        raise BadAudioError(path, f"cannot open as audio: {e}") from e


def _read_channel0(path: str, handle, info: AudioInfo, start: int, stop: int) -> np.ndarray:
    try:
        if start:
            handle.seek(start)
        data = handle.read(stop - start, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as e:
        raise BadAudioError(path, f"decoding samples [{start}, {stop}) failed, the header promises "
                                  f"{info.num_samples} (truncated or corrupt file): {e}") from e
    if data.shape[0] < stop - start:
        raise BadAudioError(path, f"truncated: the header promises {info.num_samples} samples but reading "
                                  f"[{start}, {stop}) returned only {data.shape[0]}")
    return np.ascontiguousarray(data[:, 0])


# ----------------------------------------------------------------------------------------------------------------
# Any format, any rate: decode_audio (soundfile or ffmpeg) and resample (soxr)
# ----------------------------------------------------------------------------------------------------------------

FFMPEG_ENV = "SV_JAX_FFMPEG"

# What libsndfile decodes exactly and fast, in-process. It identifies files by content, not by name, but the
# extension is what tells us whether to try it at all.
_SOUNDFILE_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf",
                                   ".w64", ".rf64", ".sph", ".nist", ".ogg", ".oga", ".mp3"})
# Containers of which libsndfile reads only some codecs (Ogg Vorbis/Opus/FLAC, not Speex; some MP3 variants):
# when it cannot open one, ffmpeg gets a try before the file is called bad.
_FFMPEG_FALLBACK_EXTENSIONS = frozenset({".ogg", ".oga", ".mp3"})
_MAX_STDERR_CHARS = 1000


class FfmpegNotFoundError(UserError, RuntimeError):
    """No usable ffmpeg executable; the message says which file needed it and how to install one."""


def needs_ffmpeg(path) -> bool:
    """Whether `decode_audio` hands this file to ffmpeg (by extension: .m4a, .aac, .mp4, .opus, ...)."""
    return os.path.splitext(os.fspath(path))[1].lower() not in _SOUNDFILE_EXTENSIONS


def find_ffmpeg(ffmpeg=None, *, for_path=None) -> str:
    """Path of the ffmpeg executable; raises FfmpegNotFoundError.

    Looks at, in order: `ffmpeg` (a name or path), the SV_JAX_FFMPEG environment variable, `ffmpeg` on PATH, and
    the binary bundled with the imageio-ffmpeg package. An explicit choice (argument or variable) that is not an
    executable is an error rather than a reason to look further, so a typo is not silently replaced by another
    ffmpeg. `for_path` only improves the message.
    """
    purpose = "decoding this audio"
    if for_path is not None:
        purpose = f"decoding {os.fspath(for_path)} ({os.path.splitext(os.fspath(for_path))[1] or 'no extension'})"
    for chosen, origin in ((ffmpeg, "the ffmpeg argument"), (os.environ.get(FFMPEG_ENV), FFMPEG_ENV)):
        if chosen:
            found = shutil.which(os.fspath(chosen))
            if found is None:
                raise FfmpegNotFoundError(f"{purpose} needs ffmpeg, but {origin} names {os.fspath(chosen)!r}, "
                                          "which is not an executable file")
            return found
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    try:
        import imageio_ffmpeg  # pylint: disable=import-outside-toplevel  # optional: only a test dependency
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):  # RuntimeError: the package is installed without its binary
        pass
    raise FfmpegNotFoundError(
        f"{purpose} needs ffmpeg, which was not found on PATH (nor in the imageio-ffmpeg package). Install it "
        f"with `apt install ffmpeg` (or `conda install -c conda-forge ffmpeg`, `brew install ffmpeg`), or "
        f"`pip install imageio-ffmpeg`, or set {FFMPEG_ENV}=/path/to/ffmpeg.")


def _decode_ffmpeg(path: str, exe: str) -> tuple[np.ndarray, int]:
    # WAV on stdout rather than raw samples: its header carries the native sample rate, so no ffprobe is needed.
    # -xerror stops at the first damaged packet; at -v error anything ffmpeg prints is a problem with the file
    # (a truncated faststart .m4a decodes "successfully" to a shorter signal, with messages only).
    command = [exe, "-nostdin", "-hide_banner", "-v", "error", "-xerror", "-i", path, "-map", "0:a:0",
               "-c:a", "pcm_f32le", "-f", "wav", "-"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    messages = result.stderr.decode("utf-8", "replace").strip()
    if result.returncode != 0 or messages:
        if len(messages) > _MAX_STDERR_CHARS:
            messages = messages[:_MAX_STDERR_CHARS] + " [...]"
        raise BadAudioError(path, f"ffmpeg could not decode it (exit status {result.returncode}): "
                                  f"{messages or 'no message'}")
    try:
        data, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as e:
        raise BadAudioError(path, f"ffmpeg's output could not be read ({len(result.stdout)} bytes): {e}") from e
    if data.shape[0] == 0:
        raise BadAudioError(path, "contains no audio samples (ffmpeg decoded 0 frames)")
    return np.ascontiguousarray(data[:, 0]), int(rate)


def _decode_soundfile(path: str, handle) -> tuple[np.ndarray, int]:
    with handle:
        info = _info(path, handle)
        return _read_channel0(path, handle, info, 0, info.num_samples), info.sample_rate


def decode_audio(path, sample_rate: int | None = None, *, ffmpeg=None) -> tuple[np.ndarray, int]:
    """The whole file as mono float32 [n] (channel 0, as `load_audio`) and its sample rate.

    WAV, FLAC and the other libsndfile formats are read with soundfile; everything else (.m4a, .aac, .mp4,
    .opus, and Ogg/MP3 files libsndfile cannot open) is decoded by an ffmpeg subprocess (see `find_ffmpeg`;
    `ffmpeg` overrides which executable). ffmpeg always decodes at the file's own rate: when `sample_rate` is
    given and differs, `resample` converts, so every format goes through the same resampler. Integer PCM is
    scaled to [-1, 1) as in `load_audio`; decoded AAC may slightly exceed that range.

    Returns:
      (samples, rate) with rate == sample_rate when one is given, else the file's rate.

    Raises:
      BadAudioError: missing, empty, undecodable (ffmpeg's messages included) or sample-less files.
      FfmpegNotFoundError: the file needs ffmpeg and none was found.
    """
    path = os.fspath(path)
    _check_file(path)
    handle = None
    if not needs_ffmpeg(path):
        try:
            handle = _open(path)
        except BadAudioError:
            if os.path.splitext(path)[1].lower() not in _FFMPEG_FALLBACK_EXTENSIONS:
                raise
    if handle is not None:
        wav, rate = _decode_soundfile(path, handle)
    else:
        wav, rate = _decode_ffmpeg(path, find_ffmpeg(ffmpeg, for_path=path))
    if sample_rate is not None and sample_rate != rate:
        wav, rate = resample(wav, rate, sample_rate), sample_rate
    return wav, rate


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """float32 [n] at orig_sr -> float32 [ceil(n * target_sr / orig_sr)] at target_sr; `wav` itself if equal.

    soxr's high-quality band-limited resampler via librosa (res_type='soxr_hq'): the one resampler of this
    package, also behind data preparation.
    """
    for name, rate in (("orig_sr", orig_sr), ("target_sr", target_sr)):
        if int(rate) != rate or rate <= 0:
            raise ValueError(f"resample: {name} must be a positive integer (Hz), got {rate!r}")
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"resample: expected mono samples of shape [n], got shape {wav.shape}")
    if orig_sr == target_sr:
        return wav
    import librosa  # pylint: disable=import-outside-toplevel  # ~1.5 s (scipy.signal, numba): only when needed
    out = librosa.resample(wav, orig_sr=int(orig_sr), target_sr=int(target_sr), res_type="soxr_hq")
    return np.ascontiguousarray(out, dtype=np.float32)
