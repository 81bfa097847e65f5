"""Small generated stand-ins for RIRS_NOISES/simulated_rirs and MUSAN, for tests, demos and benchmarks.

`write_fake_sources(root)` writes 16-bit PCM wav files in the real corpora's layouts, so `augment.Augmenter`
reads them exactly as it reads the real ones:

    root/RIRS_NOISES/simulated_rirs/smallroom/Room001/Room001-00001.wav   (num_rirs files)
    root/musan/{noise/free-sound, speech/librivox, music/fma}/*.wav      (num_noises files per category)

The signals only need to be plausible, not realistic: RIRs are a direct-path spike after 1-5 ms followed by
exponentially decaying noise (RT60 0.2-0.6 s, 0.3-0.8 s long); noise is coloured white noise, speech is noise
shaped by a syllable-rate envelope with pauses, music is a sequence of harmonic notes. Files are 1-4 s long,
so some are shorter than a 2-s training chunk and exercise the wrap-around padding. Output depends only on
the arguments (seeded numpy).
"""

from __future__ import annotations

import pathlib

import numpy as np
import scipy.signal
import soundfile

_MUSAN_LAYOUT = {"noise": "free-sound", "speech": "librivox", "music": "fma"}


def _write(path: pathlib.Path, wav: np.ndarray, sample_rate: int, peak: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = wav * (peak / max(float(np.max(np.abs(wav))), 1e-9))
    soundfile.write(str(path), np.round(wav * 32767).astype(np.int16), sample_rate, subtype="PCM_16")


def fake_rir(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A direct-path spike then an exponentially decaying noise tail."""
    length = int(rng.uniform(0.3, 0.8) * sample_rate)
    delay = int(rng.uniform(0.001, 0.005) * sample_rate)
    rt60 = rng.uniform(0.2, 0.6)
    t = np.arange(length - delay) / sample_rate
    rir = np.zeros(length)
    # ln(1000) = 6.9: the amplitude falls by 60 dB over rt60 seconds.
    rir[delay:] = 0.3 * rng.standard_normal(length - delay) * np.exp(-6.9 * t / rt60)
    rir[delay] = 1.0
    return rir


def fake_noise(category: str, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A few seconds of MUSAN-like audio of `category` ('noise', 'speech' or 'music')."""
    n = int(rng.uniform(1.0, 4.0) * sample_rate)
    t = np.arange(n) / sample_rate
    if category == "noise":
        # One-pole low-pass of white noise: a random colour from hiss to rumble.
        return scipy.signal.lfilter([1.0], [1.0, -rng.uniform(0.0, 0.95)], rng.standard_normal(n))
    if category == "speech":
        syllables = np.abs(np.sin(np.pi * rng.uniform(3.0, 5.0) * t))
        pauses = np.repeat(rng.random(n // sample_rate * 4 + 4) > 0.25, sample_rate // 4)[:n]
        voiced = sum(np.sin(2 * np.pi * k * rng.uniform(100, 220) * t) / k for k in range(1, 6))
        return (voiced + 0.3 * rng.standard_normal(n)) * syllables * pauses
    if category == "music":
        note_len = int(rng.uniform(0.25, 0.5) * sample_rate)
        freqs = np.repeat(rng.choice(220.0 * 2 ** (np.arange(24) / 12), n // note_len + 1), note_len)[:n]
        phase = 2 * np.pi * np.cumsum(freqs) / sample_rate
        return sum(np.sin(k * phase) / k**1.5 for k in range(1, 5))
    raise ValueError(f"unknown MUSAN category {category!r}; choose one of {list(_MUSAN_LAYOUT)}")


def write_fake_sources(root, *, sample_rate: int = 16000, num_rirs: int = 4, num_noises: int = 2,
                       seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes fake RIRs and MUSAN-like files under `root`; returns (rir_dir, musan_dir) for augment.Augmenter.

    `num_noises` files are written per MUSAN category.
    """
    if num_rirs < 0 or num_noises < 0:
        raise ValueError(f"num_rirs and num_noises must be >= 0, got {num_rirs} and {num_noises}")
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    rir_dir = root / "RIRS_NOISES" / "simulated_rirs"
    for i in range(num_rirs):
        _write(rir_dir / "smallroom" / "Room001" / f"Room001-{i + 1:05d}.wav", fake_rir(rng, sample_rate),
               sample_rate, peak=0.9)
    musan_dir = root / "musan"
    for category, subset in _MUSAN_LAYOUT.items():
        for i in range(num_noises):
            _write(musan_dir / category / subset / f"{category}-{subset}-{i:04d}.wav",
                   fake_noise(category, rng, sample_rate), sample_rate, peak=rng.uniform(0.1, 0.5))
    return rir_dir, musan_dir
