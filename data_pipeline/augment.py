"""WeSpeaker's waveform augmentation in TensorFlow ops: speed perturbation, RIR reverberation, MUSAN noise.

Reference: wespeaker/dataset/processor.py (`speed_perturb`, `get_random_chunk`, `add_reverb_noise`),
lmdb_data.py (`random_one`), dataset.py (order) and examples/voxceleb/v2/local/prepare_data.sh (file keys).
What WeSpeaker does, and this module reproduces:
- speed: one of [1.0, 0.9, 1.1] uniformly; sox `speed s` then `rate sr`, so the output has n/s samples and
  pitch and tempo scale by s; the label becomes label + num_speakers * speed_index.
- then a random 200-frame chunk, then with probability aug_prob (`aug_prob > random()`) one augmentation,
  reverb or noise with equal probability:
  reverb: a uniformly chosen RIR, rir / sqrt(sum(rir**2)), convolve(audio, rir, 'full')[:len(audio)];
  noise: a uniformly chosen MUSAN file (over all categories; the category is the key's first path part),
  a random crop of len(audio) (np.tile wrap-around when shorter), snr ~ U(category range),
  db(x) = 10 log10(mean(x**2) + 1e-4), audio + sqrt(10**((db(audio) - db(noise) - snr) / 10)) * noise;
  after either, out / (max|out| + 1e-4). Unaugmented chunks are not peak-normalised.
Deviations (deliberate):
- Resampler: a polyphase Kaiser windowed-sinc filter (scipy.signal.resample_poly's design: 10 zero
  crossings each side at the lower rate, beta 5, cutoff at the lower Nyquist; outputs equal resample_poly's
  to float32 rounding) instead of sox's steeper `rate`. Against soxr (sox's resampler, HQ) on tones: equal
  within 0.3% below 6.3 kHz; above, ours rolls off earlier (-1.6 dB at 6.75 kHz for 0.9, -3 dB at 7.7 kHz
  for 1.1) and at 1.1 lets input above 7.27 kHz fold back into 7.2-8 kHz 6-16 dB down (sox: none), so
  only the top few of 80 mel bins differ. Output length is round(n / speed), as sox (and soxr) give.
- Chunk, then perturb: the pipeline reads `speed_input_length(num_samples, s)` samples from a uniform start,
  perturbs and keeps the first num_samples. The chunk's start in perturbed time is uniform as in
  WeSpeaker's perturb-then-chunk, so the distribution is the same up to the sub-sample phase; the first
  ~10 output samples fade in from the zero padding (0.7 ms; WeSpeaker has that only at utterance edges).
- Either source may be missing (WeSpeaker needs both); reverb or noise is then always the available one.
- A RIR or noise file at another sample rate is a BadAudioError (WeSpeaker resamples it; MUSAN and
  simulated_rirs are 16 kHz); so is an all-zero RIR (WeSpeaker would divide by zero).
- MUSAN files outside the category directories are an error (WeSpeaker gives unknown keys 0-15 dB).
- Random draws come from (seed, index) only, so resumed runs repeat them; see `Augmenter`.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import logging
import math
import os
import threading

import numpy as np
import tensorflow as tf

from data_pipeline import audio as audio_lib
from data_pipeline.fake_sources import write_fake_sources  # noqa: F401  (re-exported for tests and demos)

log = logging.getLogger(__name__)

SPEEDS = (1.0, 0.9, 1.1)
KINDS = ("none", "reverb", "noise")  # the codes Augmenter.apply returns
DEFAULT_SNR_DB = {"noise": (0.0, 15.0), "speech": (10.0, 30.0), "music": (5.0, 15.0)}
AUDIO_SUFFIXES = (".wav", ".flac")
ON_BAD_AUDIO = ("error", "skip")
_EPS = 1e-4  # WeSpeaker's floor in the dB formula and in the peak normalisation
_HALF_ZERO_CROSSINGS, _KAISER_BETA = 10, 5.0
_RNG_TAG = 0x617567  # keeps these draws independent of others seeded from [seed, index] (chunk start)
# 5-smooth FFT lengths: TF's FFT is no slower per point on them than on powers of two, and the next one is
# often much shorter (a 2-s chunk and a 0.8-s RIR: 46080 points, 0.9 ms for 3 FFTs; 65536 points, 1.1 ms).
_FFT_LENGTHS = np.array(sorted(2**a * 3**b * 5**c for a in range(31) for b in range(20) for c in range(14)
                               if 2**a * 3**b * 5**c <= 2**30), np.int64)


def _ratio(speed) -> tuple[int, int]:
    """(up, down): the output has up/down times as many samples, i.e. 1/speed."""
    try:
        value = float(speed)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"speed must be a positive number, got {speed!r}")
    f = fractions.Fraction(value).limit_denominator(100)
    return f.denominator, f.numerator


@functools.lru_cache(maxsize=16)
def _polyphase_kernel(up: int, down: int):
    """conv1d kernel [width, 1, up] and left padding: output channel r gives outputs r, r + up, r + 2 up, ...

    Output j is sum_i x[i] h[j*down + half - i*up] (the filter centred, as in resample_poly). With
    j = q*up + r that is a `down`-strided correlation of x with one sub-filter per r, so all phases come
    out of one strided conv and only the taps that meet nonzero samples of the upsampled signal are computed.
    """
    rate = max(up, down)
    half = _HALF_ZERO_CROSSINGS * rate
    taps = np.arange(-half, half + 1)
    h = np.sinc(taps / rate) * np.kaiser(2 * half + 1, _KAISER_BETA)  # cutoff at the lower rate's Nyquist
    h *= up / h.sum()  # unit DC gain after zero-stuffing by `up`
    phases = []
    for r in range(up):
        base, phase = divmod(r * down + half, up)
        phases.append((base, h[phase::up]))  # taps for x[q*down + base - m], m = 0, 1, ...
    lo = min(base - len(g) + 1 for base, g in phases)
    width = max(base for base, _ in phases) - lo + 1
    kernel = np.zeros((width, 1, up), np.float32)
    for r, (base, g) in enumerate(phases):
        kernel[base - lo - np.arange(len(g)), 0, r] = g
    assert lo <= 0, (up, down, lo)
    return kernel, -lo, half


def speed_output_length(num_samples: int, speed: float) -> int:
    """Samples `speed_perturb` returns for `num_samples` input samples: round(num_samples / speed)."""
    up, down = _ratio(speed)
    return (2 * int(num_samples) * up + down) // (2 * down)


def speed_input_length(num_samples: int, speed: float) -> int:
    """Input samples whose perturbation gives `num_samples` outputs untouched by the end padding.

    That is the input span of the filter behind output num_samples - 1 (about num_samples * speed + 11),
    so `speed_perturb(x, speed)[:num_samples]` of a crop this long equals the same slice of a longer crop.
    """
    up, down = _ratio(speed)
    if up == down:
        return int(num_samples)
    _, _, half = _polyphase_kernel(up, down)
    return ((int(num_samples) - 1) * down + half) // up + 1


def speed_perturb(wav, speed: float) -> tf.Tensor:
    """Resamples float32 wav [n] or [batch, n] from rate sr to sr / speed (speed 1.1: shorter, higher pitch).

    Returns speed_output_length(n, speed) samples per row; speed 1.0 returns the input. The rational ratio
    is Fraction(speed).limit_denominator(100), e.g. 1.1 -> up 10 / down 11.
    """
    up, down = _ratio(speed)
    wav = tf.convert_to_tensor(wav, tf.float32)
    if up == down:
        return wav
    kernel, left, _ = _polyphase_kernel(up, down)
    width = kernel.shape[0]
    x = wav if wav.shape.rank == 2 else wav[None]
    n = tf.cast(tf.shape(x)[1], tf.int64)
    n_out = (2 * n * up + down) // (2 * down)
    rows = (n_out + up - 1) // up
    right = tf.maximum((rows - 1) * down + width - n - left, 0)
    x = tf.pad(x, tf.stack([tf.constant([0, 0], tf.int64), tf.stack([tf.constant(left, tf.int64), right])]))
    y = tf.nn.conv1d(x[:, :, None], kernel, stride=down, padding="VALID")  # [batch, rows, up]
    y = tf.reshape(y, [tf.shape(x)[0], -1])[:, :tf.cast(n_out, tf.int32)]
    return y if wav.shape.rank == 2 else y[0]


def _fft_length(min_length) -> tf.Tensor:
    index = tf.searchsorted(_FFT_LENGTHS, tf.reshape(tf.cast(min_length, tf.int64), [1]), side="left")
    return tf.cast(tf.gather(_FFT_LENGTHS, index), tf.int32)


def reverberate(wav, rir) -> tf.Tensor:
    """wav [..., n] convolved with rir [r] scaled to unit energy, cut to n samples (WeSpeaker's reverb).

    The full linear convolution is computed by FFT of the smallest 2^a 3^b 5^c length >= n + r - 1.
    """
    wav = tf.convert_to_tensor(wav, tf.float32)
    rir = tf.convert_to_tensor(rir, tf.float32)
    rir = rir * tf.math.rsqrt(tf.reduce_sum(tf.square(rir)))
    n = tf.shape(wav)[-1]
    size = _fft_length(n + tf.shape(rir)[0] - 1)
    spectrum = tf.signal.rfft(wav, size) * tf.signal.rfft(rir, size)
    return tf.signal.irfft(spectrum, size)[..., :n]


def _db(x):
    return 10.0 * tf.math.log(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + _EPS) / math.log(10.0)


def add_noise(wav, noise, snr_db) -> tf.Tensor:
    """wav + noise scaled to `snr_db` by WeSpeaker's formula (powers floored at 1e-4, about -40 dBFS, so the
    realised SNR of quieter signals is higher than asked). noise has wav's shape (already cropped / tiled)."""
    wav = tf.convert_to_tensor(wav, tf.float32)
    noise = tf.convert_to_tensor(noise, tf.float32)
    gain_db = _db(wav) - _db(noise) - tf.cast(snr_db, tf.float32)
    return wav + tf.sqrt(tf.pow(10.0, gain_db / 10.0)) * noise


def peak_normalize(wav) -> tf.Tensor:
    """out / (max|out| + 1e-4) over the last axis: WeSpeaker's step after reverb or noise."""
    wav = tf.convert_to_tensor(wav, tf.float32)
    return wav / (tf.reduce_max(tf.abs(wav), axis=-1, keepdims=True) + _EPS)


@dataclasses.dataclass(frozen=True)
class Choice:
    """What `Augmenter` does to the example at one stream position (`Augmenter.choose`)."""

    kind: str  # one of KINDS
    path: str | None = None  # the RIR or noise file
    category: str | None = None  # MUSAN category of a noise file
    snr_db: float | None = None


def _scan(directory, name: str) -> list[str]:
    """Audio files under `directory`, recursively, in a fixed (sorted) order."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"{name} {directory!r} is not a directory")
    paths = []
    for root, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        paths.extend(os.path.join(root, f) for f in sorted(filenames) if f.lower().endswith(AUDIO_SUFFIXES))
    if not paths:
        raise ValueError(f"{name} {directory!r} holds no {' or '.join(AUDIO_SUFFIXES)} files")
    return paths


class Augmenter:
    """With probability aug_prob, RIR reverb or one MUSAN noise, then peak normalisation (WeSpeaker's recipe).

    rir_dir: any tree of RIR files (use RIRS_NOISES/simulated_rirs, as WeSpeaker does: the RIRS_NOISES root
    also holds noises). musan_dir: the MUSAN root; a file's category (its SNR range in `snr_db`) is its
    top-level directory, and a file anywhere else is a ValueError. '' disables that source; both '' disables
    augmentation. Use as `ds.map(lambda x: augmenter(x['wav'], x['index']))`.

    Every random choice is drawn from numpy's generator seeded with (seed, index): the same position always
    gets the same augmentation, whatever ran before. Per example the cost is one read of only the samples
    needed (noise file lengths come from the header once and are cached) and, for reverb, three FFTs.
    Bad RIR / noise files raise BadAudioError naming the file through tf.data (on_bad_audio='error'), or
    (on_bad_audio='skip') are reported once to bad_audio_log.add and leave their examples unaugmented.
    """

    def __init__(self, rir_dir, musan_dir, *, sample_rate: int = 16000, aug_prob: float = 0.6, seed: int = 0,
                 snr_db: dict | None = None, on_bad_audio: str = "error", bad_audio_log=None):
        if on_bad_audio not in ON_BAD_AUDIO:
            raise ValueError(f"unknown on_bad_audio {on_bad_audio!r}; choose one of {list(ON_BAD_AUDIO)}")
        if not 0.0 <= aug_prob <= 1.0:
            raise ValueError(f"aug_prob must be in [0, 1], got {aug_prob}")
        self.snr_db = {}
        for category, bounds in (DEFAULT_SNR_DB if snr_db is None else snr_db).items():
            lo, hi = (float(b) for b in bounds)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"snr_db[{category!r}] must be (low, high) with low <= high, got {bounds!r}")
            self.snr_db[category] = (lo, hi)
        self.sample_rate, self.aug_prob, self.seed = int(sample_rate), float(aug_prob), int(seed)
        self.on_bad_audio, self.bad_audio_log = on_bad_audio, bad_audio_log
        self.rir_dir, self.musan_dir = os.fspath(rir_dir or ""), os.fspath(musan_dir or "")
        self.rir_paths = _scan(self.rir_dir, "rir_dir") if self.rir_dir else []
        self.noise_paths = _scan(self.musan_dir, "musan_dir") if self.musan_dir else []
        self.noise_categories = [self._category(p) for p in self.noise_paths]
        self._kinds = [k for k, paths in (("reverb", self.rir_paths), ("noise", self.noise_paths)) if paths]
        self._lengths: dict[str, int] = {}  # noise file -> samples (rate checked), filled on first use
        self._bad: set[str] = set()  # files that failed under 'skip': not read again
        self._lock = threading.Lock()

    def _category(self, path: str) -> str:
        parts = os.path.relpath(path, self.musan_dir).split(os.sep)
        if len(parts) < 2 or parts[0] not in self.snr_db:
            raise ValueError(f"musan_dir {self.musan_dir!r}: {path} is not inside one of the category directories "
                             f"{sorted(self.snr_db)}; musan_dir must be the MUSAN root (or add the category to "
                             f"snr_db)")
        return parts[0]

    @property
    def num_rirs(self) -> int:
        return len(self.rir_paths)

    @property
    def num_noises(self) -> dict[str, int]:
        return {c: self.noise_categories.count(c) for c in self.snr_db}

    def describe(self) -> str:
        if not self._kinds:
            return "augmentation: off (no rir_dir or musan_dir)"
        parts = []
        if self.rir_paths:
            parts.append(f"reverb from {self.num_rirs} RIRs in {self.rir_dir}")
        if self.noise_paths:
            counts = ", ".join(f"{c} {k} at {self.snr_db[c][0]:g}-{self.snr_db[c][1]:g} dB SNR"
                               for c, k in self.num_noises.items() if k)
            parts.append(f"noise from {len(self.noise_paths)} files in {self.musan_dir} ({counts})")
        return f"augmentation with p={self.aug_prob:g}: " + "; ".join(parts)

    def _draw(self, index: int):
        rng = np.random.default_rng([self.seed % 2**64, int(index), _RNG_TAG])
        if not self._kinds or not self.aug_prob > rng.random():
            return Choice("none"), rng
        kind = self._kinds[int(rng.integers(2)) % len(self._kinds)]
        if kind == "reverb":
            return Choice("reverb", self.rir_paths[int(rng.integers(len(self.rir_paths)))]), rng
        i = int(rng.integers(len(self.noise_paths)))
        category = self.noise_categories[i]
        return Choice("noise", self.noise_paths[i], category, float(rng.uniform(*self.snr_db[category]))), rng

    def choose(self, index: int) -> Choice:
        """The augmentation of stream position `index` (without reading any file)."""
        return self._draw(index)[0]

    def _read_rir(self, path: str) -> np.ndarray:
        rir = audio_lib.load_audio(path, self.sample_rate)
        energy = float(np.sum(np.square(rir, dtype=np.float64)))
        if not (math.isfinite(energy) and energy > 0.0):
            raise audio_lib.BadAudioError(path, "RIR has no energy or non-finite samples; cannot normalise it")
        return rir

    def _read_noise(self, path: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        length = self._lengths.get(path)
        if length is None:
            info = audio_lib.audio_info(path)
            audio_lib.check_sample_rate(info, path, self.sample_rate)
            length = self._lengths[path] = info.num_samples
        if length >= num_samples:
            start = int(rng.integers(0, length - num_samples + 1))
            noise = audio_lib.load_audio(path, self.sample_rate, start=start, num_samples=num_samples)
        else:
            noise = audio_lib.load_audio(path, self.sample_rate)
            noise = np.tile(noise, num_samples // len(noise) + 1)[:num_samples]
        if not np.all(np.isfinite(noise)):
            raise audio_lib.BadAudioError(path, "contains NaN or infinite samples")
        return noise

    def _source(self, num_samples, index):
        """numpy_function body: (kind code, RIR or noise samples, snr_db) for one example."""
        choice, rng = self._draw(int(index))
        if choice.kind == "none" or choice.path in self._bad:
            return np.int32(0), np.zeros(0, np.float32), np.float32(np.nan)
        try:
            if choice.kind == "reverb":
                samples = self._read_rir(choice.path)
            else:
                samples = self._read_noise(choice.path, int(num_samples), rng)
        except audio_lib.BadAudioError as error:
            if self.on_bad_audio == "error":
                raise
            with self._lock:  # parallel map calls can fail on the same file at once; report it once
                first = choice.path not in self._bad
                self._bad.add(choice.path)
            if first and self.bad_audio_log is not None:
                self.bad_audio_log.add(error)
            elif first:
                log.warning("augmentation skips bad audio (on_bad_audio='skip'): %s", error)
            return np.int32(0), np.zeros(0, np.float32), np.float32(np.nan)
        snr = np.nan if choice.snr_db is None else choice.snr_db
        return np.int32(KINDS.index(choice.kind)), samples.astype(np.float32, copy=False), np.float32(snr)

    def apply(self, wav, index):
        """(augmented wav [n], kind code into KINDS (int32), snr_db (float32, NaN unless noise))."""
        wav = tf.convert_to_tensor(wav, tf.float32)
        if not self._kinds:
            return wav, tf.constant(0, tf.int32), tf.constant(np.nan, tf.float32)
        kind, source, snr = tf.numpy_function(self._source, [tf.size(wav), tf.cast(index, tf.int64)],
                                              [tf.int32, tf.float32, tf.float32], stateful=False)
        kind.set_shape([])
        source.set_shape([None])
        snr.set_shape([])
        out = tf.switch_case(kind, [lambda: wav, lambda: peak_normalize(reverberate(wav, source)),
                                    lambda: peak_normalize(add_noise(wav, source, snr))])
        return tf.ensure_shape(out, wav.shape), kind, snr

    def __call__(self, wav, index) -> tf.Tensor:
        """Augmented float32 wav [num_samples] for stream position `index` (int64 scalar); usable in ds.map."""
        return self.apply(wav, index)[0]
