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

No jax / tensorflow imports: this module is used by the input pipeline and by data preparation.
"""

import dataclasses
import os
import stat

import numpy as np
import soundfile

_RESAMPLE_HINT = "resample it first (e.g. sox in.wav -r 16000 out.wav)"


class BadAudioError(ValueError):
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
    try:
        handle = soundfile.SoundFile(path)
    except (soundfile.SoundFileError, RuntimeError, OSError) as e:
        raise BadAudioError(path, f"cannot open as audio: {e}") from e
    with handle:
        info = _info(path, handle)
        check_sample_rate(info, path, sample_rate)
        stop = info.num_samples if num_samples == -1 else start + num_samples
        if start > info.num_samples or stop > info.num_samples:
            raise ValueError(f"{path}: requested samples [{start}, {stop}) but the file has "
                             f"{info.num_samples} samples")
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
