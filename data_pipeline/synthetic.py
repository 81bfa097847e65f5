"""A built-in synthetic speaker-verification corpus, so that a newcomer can train without downloading data.

Each synthetic speaker has persistent voice traits drawn from continuous distributions: F0 level and spread,
intonation (declination, accent size, frequency and alignment), vocal-tract length (formant scaling 0.8-1.25),
personal per-vowel formant offsets, formant bandwidths, glottal spectral tilt and colour, breathiness (aspiration
noise), jitter, shimmer and speaking rate. An utterance is a sequence of phone-like segments -- vowels (a glottal
pulse train through a cascade of five formant resonators), nasal murmurs, fricatives (band-passed noise whose
centre scales with the vocal tract) and short pauses -- joined by overlap-add with raised-cosine crossfades. Every
utterance then gets a channel drawn from its own seed, independently of the speaker: random peaking/shelving EQ
(+-6 dB) and a high-pass, white/pink/brown noise at a random SNR (10-35 dB) and a random peak level (-26 to -1
dBFS), so the channel never identifies the speaker.

The corpus is written in the VoxCeleb layout (``<split>/idNNNNN/<11-char video>/NNNNN.wav``, 16-bit PCM mono)
with a VoxCeleb-format trial list between held-out test speakers. Generation is deterministic by seed (speaker,
utterance and channel each get their own ``np.random.SeedSequence`` spawn key, so the bytes do not depend on the
worker count), parallel over speakers (fork; spawn if jax/TF threads already run, and then the calling script needs
the usual ``if __name__ == "__main__":`` guard), and crash-safe: files are written to a temporary sibling directory
that is renamed into place after the completion marker ``.complete.json`` has been written. Command line:
``python -m data_pipeline.synthetic --out=DIR [--num_train_speakers=200 ...]``.
"""

import concurrent.futures
import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import pathlib
import secrets
import shutil
import sys
import threading
import time
from typing import Any, Callable

import numpy as np
import soundfile

import cli

# scipy.signal is imported by the functions that generate audio: it takes 1.2 s to import, and a training run
# that finds its corpus already written never needs it.

__all__ = ["CorpusSpec", "Corpus", "generate_corpus", "spec_from_config"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MARKER_NAME = ".complete.json"
_TRIALS_PER_UTT = 6  # target and non-target partners chosen per test utterance
# Difficulty, tuned so that a small ResNet learns the task in minutes on CPU while a no-training baseline stays far
# from perfect: source-colour gains in +-_COLOUR_DB (speaker); EQ gains in +-eq_db, SNR in snr_db (utterance).
_COLOUR_DB = 12.0
_CHANNEL = {"eq_db": 6.0, "snr_db": (10.0, 35.0)}
_VIDEO_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))

# F1-F3 (Hz) of ten reference vowels for an adult male vocal tract (Peterson & Barney averages).
_VOWELS = np.array([
    [270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410], [730, 1090, 2440],
    [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240], [640, 1190, 2390], [490, 1350, 1690]], float)
_VOWEL_BW = np.array([60.0, 90.0, 120.0, 160.0, 200.0])
_HIGH_FORMANTS = np.array([3300.0, 4200.0])
# Fricatives: (centre Hz for the reference tract, bandwidth Hz, level dB relative to vowels).
_FRICATIVES = np.array([[5200, 1600, -12], [3000, 1100, -12], [6200, 3500, -22], [1800, 900, -18],
                        [4200, 2500, -20]], float)


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    num_train_speakers: int = 200
    num_test_speakers: int = 40
    utts_per_train_speaker: int = 12
    utts_per_test_speaker: int = 8
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    sample_rate: int = 16000
    seed: int = 0

    def __post_init__(self):
        if self.num_train_speakers < 0 or self.utts_per_train_speaker < 1:
            raise ValueError(f"need num_train_speakers >= 0 and utts_per_train_speaker >= 1: {self}")
        if self.num_test_speakers < 2 or self.utts_per_test_speaker < 2:
            raise ValueError(f"trials need num_test_speakers >= 2 and utts_per_test_speaker >= 2: {self}")
        if not 0.1 <= self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0.1 <= min_seconds <= max_seconds: {self}")
        if self.sample_rate < 8000 or self.seed < 0:
            raise ValueError(f"need sample_rate >= 8000 and seed >= 0: {self}")


def spec_from_config(data_config) -> CorpusSpec:
    """The corpus an sv_jax `config.data` describes (its `synthetic` section and sample rate)."""
    syn = data_config.synthetic
    return CorpusSpec(
        num_train_speakers=syn.num_train_speakers, num_test_speakers=syn.num_test_speakers,
        utts_per_train_speaker=syn.utts_per_train_speaker, utts_per_test_speaker=syn.utts_per_test_speaker,
        min_seconds=syn.min_seconds, max_seconds=syn.max_seconds, sample_rate=data_config.sample_rate,
        seed=syn.seed)


@dataclasses.dataclass(frozen=True)
class Corpus:
    root: pathlib.Path
    train_dir: pathlib.Path  # root/'train'   VoxCeleb layout: <speaker>/<video>/<utt>.wav
    test_dir: pathlib.Path  # root/'test'
    trials: pathlib.Path  # root/'trials.txt'


def _draw_traits(rng: np.random.Generator) -> dict:
    """Persistent voice traits of one speaker, all from continuous distributions."""
    z = rng.random()  # voice height: F0 log-uniform in 75-330 Hz; vocal-tract scaling loosely follows it
    vt = float(np.clip(0.88 + 0.2 * z + 0.1 * rng.standard_normal(), 0.8, 1.25))
    return dict(
        f0=75.0 * (330.0 / 75.0) ** z, vt=vt,
        f0_spread=rng.uniform(0.3, 1.2),        # semitones, slow wander
        declination=rng.uniform(-2.5, 0.5),     # semitones over the utterance
        accent_size=rng.uniform(0.5, 2.5),      # semitones
        accent_prob=rng.uniform(0.15, 0.8),
        accent_shift=rng.uniform(-0.4, 0.8),    # peak alignment, in vowel durations
        tilt_hz=np.exp(rng.uniform(np.log(100.0), np.log(3000.0))),
        breathiness=rng.uniform(0.0, 1.0),
        jitter=rng.uniform(0.002, 0.025), shimmer=rng.uniform(0.02, 0.2),
        rate=np.exp(rng.uniform(np.log(0.75), np.log(1.35))),  # duration factor
        vowel_offsets=np.exp(0.15 * rng.standard_normal(_VOWELS.shape)),
        high_offsets=np.exp(0.08 * rng.standard_normal(2)),
        bw_scale=np.exp(rng.uniform(np.log(0.6), np.log(1.8))),
        fric_offsets=np.exp(0.08 * rng.standard_normal(len(_FRICATIVES))),
        nasal_hz=rng.uniform(220.0, 320.0),
        colour=np.stack([np.exp(rng.uniform(np.log(400.0), np.log(6000.0), 3)),  # source colour: peak Hz,
                         rng.uniform(-_COLOUR_DB, _COLOUR_DB, 3), rng.uniform(0.7, 2.0, 3)], 1),  # dB, Q
    )


def _resonators(freqs, bws, sr, bandpass=False) -> np.ndarray:
    """Second-order sections of two-pole resonators (unit DC gain, or unit peak gain if bandpass)."""
    freqs = np.minimum(np.asarray(freqs, float), 0.45 * sr)
    r = np.exp(-np.pi * np.asarray(bws, float) / sr)
    a1, a2 = -2.0 * r * np.cos(2.0 * np.pi * freqs / sr), r * r
    sos = np.zeros((len(freqs), 6))
    sos[:, 3], sos[:, 4], sos[:, 5] = 1.0, a1, a2
    sos[:, 0] = (1.0 - r * r) / 2.0 if bandpass else 1.0 + a1 + a2
    sos[:, 2] = -(1.0 - r * r) / 2.0 if bandpass else 0.0
    return sos


def _rbj_sos(kind: str, f0: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """One biquad from the RBJ audio-EQ cookbook: 'peak', 'lowshelf', 'highshelf' or 'highpass'."""
    a, w = 10.0 ** (gain_db / 40.0), 2.0 * np.pi * f0 / sr
    alpha, cw = np.sin(w) / (2.0 * q), np.cos(w)
    if kind == "peak":
        b, den = [1 + alpha * a, -2 * cw, 1 - alpha * a], [1 + alpha / a, -2 * cw, 1 - alpha / a]
    elif kind == "highpass":
        b, den = [(1 + cw) / 2, -(1 + cw), (1 + cw) / 2], [1 + alpha, -2 * cw, 1 - alpha]
    else:
        s, sa = (1.0 if kind == "lowshelf" else -1.0), 2.0 * np.sqrt(a) * alpha
        b = [a * ((a + 1) - s * (a - 1) * cw + sa), s * 2 * a * ((a - 1) - s * (a + 1) * cw),
             a * ((a + 1) - s * (a - 1) * cw - sa)]
        den = [(a + 1) + s * (a - 1) * cw + sa, -s * 2 * ((a - 1) + s * (a + 1) * cw),
               (a + 1) + s * (a - 1) * cw - sa]
    return np.concatenate([b, den]) / den[0]


def _phone_plan(tr: dict, rng: np.random.Generator, n: int, sr: int) -> list:
    """Words of 1-3 (C)V(C) syllables, with pauses: a list of (kind, start, length, index, gain)."""
    pos = int(min(rng.uniform(0.05, 0.3), 0.2 * n / sr) * sr)  # lead-in silence (only channel noise there)
    segs, rate = [], tr["rate"] * rng.uniform(0.95, 1.05)
    while pos < n:
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.55:
                kind = "nasal" if rng.random() < 0.3 else "fric"
                idx = int(rng.integers(len(_FRICATIVES)))
                dur = rng.uniform(0.04, 0.1) if kind == "nasal" else rng.uniform(0.05, 0.13)
                segs.append((kind, pos, int(dur * rate * sr), idx, rng.normal(0.0, 2.0)))
                pos += segs[-1][2]
            stressed = rng.random() < tr["accent_prob"]
            dur = rng.uniform(0.07, 0.18) * rate * (1.3 if stressed else 1.0)
            segs.append(("vowel" if not stressed else "stress", pos, int(dur * sr),
                         int(rng.integers(len(_VOWELS))), rng.normal(3.0 if stressed else 0.0, 2.0)))
            pos += segs[-1][2]
            if rng.random() < 0.3:
                segs.append(("fric", pos, int(rng.uniform(0.04, 0.1) * rate * sr),
                             int(rng.integers(len(_FRICATIVES))), rng.normal(-3.0, 2.0)))
                pos += segs[-1][2]
        if rng.random() < 0.35:
            segs.append(("pause", pos, int(rng.uniform(0.05, 0.25) * rate * sr), 0, 0.0))
            pos += segs[-1][2]
    return segs


def _glottal_source(tr: dict, rng: np.random.Generator, segs: list, n: int, sr: int) -> np.ndarray:
    """Pulse train with declination, accents, wander, jitter and shimmer; tilted; with aspiration noise."""
    import scipy.signal  # pylint: disable=import-outside-toplevel
    hop = sr // 200  # contour on a 5 ms grid
    t = np.arange(n // hop + 2) * hop
    semis = tr["declination"] * (t / n - 0.5) + rng.normal(0.0, 0.2)
    walk = np.cumsum(rng.standard_normal(len(t) // 20 + 2))
    walk = np.interp(np.arange(len(t)) / 20.0, np.arange(len(walk)), walk - walk.mean())
    semis += tr["f0_spread"] * walk / max(walk.std(), 1e-6)
    for kind, start, length, _, _ in segs:
        if kind == "stress":
            centre, width = start + (0.5 + tr["accent_shift"]) * length, 0.6 * length + 0.03 * sr
            semis += tr["accent_size"] * rng.uniform(0.6, 1.4) * np.exp(-0.5 * ((t - centre) / width) ** 2)
    f0 = np.interp(np.arange(n), t, tr["f0"] * 2.0 ** (np.clip(semis, -12, 12) / 12.0))
    phase = np.cumsum(f0 / sr)
    idx = np.flatnonzero(np.diff(np.floor(phase))) + 1
    idx = np.clip(idx + np.round(rng.standard_normal(len(idx)) * tr["jitter"] * sr / f0[idx]), 0, n - 1)
    amps = np.maximum(1.0 + tr["shimmer"] * rng.standard_normal(len(idx)), 0.1)
    pulses = np.bincount(idx.astype(np.int64), weights=amps, minlength=n)
    a = np.exp(-2.0 * np.pi * tr["tilt_hz"] / sr)
    src = scipy.signal.lfilter([1.0, -1.0], np.convolve([1.0, -a], [1.0, -a]), pulses)  # flow'', lip radiation
    src = scipy.signal.sosfilt(np.stack([_rbj_sos("peak", f, g, q, sr) for f, g, q in tr["colour"]]), src)
    src /= np.sqrt(np.mean(src * src)) + 1e-9
    cycle = 0.5 + 0.5 * np.cos(2.0 * np.pi * (phase - np.floor(phase)))  # aspiration bursts at glottal opening
    return src + tr["breathiness"] * 1.5 * cycle * rng.standard_normal(n)


def _synthesize(tr: dict, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Clean speech-like signal of exactly n samples for one utterance (float, arbitrary scale)."""
    import scipy.signal  # pylint: disable=import-outside-toplevel
    fade = int(0.012 * sr)
    segs = _phone_plan(tr, rng, n, sr)
    total = max(n, segs[-1][1] + segs[-1][2]) + fade
    src = _glottal_source(tr, rng, segs, total, sr)
    out = np.zeros(total)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
    vt = tr["vt"] * np.exp(rng.normal(0.0, 0.01))  # small per-utterance articulation change
    bw = _VOWEL_BW * tr["bw_scale"]
    for kind, start, length, i, gain_db in segs:
        if kind == "pause" or start >= n:
            continue
        m = length + fade
        if kind in ("vowel", "stress"):
            f = np.concatenate([_VOWELS[i] * tr["vowel_offsets"][i], _HIGH_FORMANTS * tr["high_offsets"]])
            f = np.maximum(f * vt * np.exp(rng.normal(0.0, 0.01, 5)), 150.0)
            y = scipy.signal.sosfilt(_resonators(f, bw * np.sqrt(vt), sr), src[start:start + m])
        elif kind == "nasal":
            f = np.array([tr["nasal_hz"], 1000.0, 2200.0, 3300.0]) * vt
            y = scipy.signal.sosfilt(_resonators(f, [80.0, 300.0, 250.0, 300.0], sr), src[start:start + m])
            gain_db -= 8.0
        else:
            centre, width, level = _FRICATIVES[i]
            c = centre * vt * tr["fric_offsets"][i]
            sos = _resonators([c, 1.35 * c], [width, 1.5 * width], sr, bandpass=True)
            y = scipy.signal.sosfilt(sos, rng.standard_normal(m))
            gain_db += level
        y *= 10.0 ** (gain_db / 20.0) / (np.sqrt(np.mean(y * y)) + 1e-9)
        y[:fade] *= ramp
        y[-fade:] *= ramp[::-1]
        out[start:start + m] += y
    return out[:n]


def _channel(x: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Random EQ, high-pass, coloured noise at a random SNR and a random peak level; returns int16."""
    import scipy.signal  # pylint: disable=import-outside-toplevel
    eq_db = _CHANNEL["eq_db"]
    sos = [_rbj_sos("highpass", rng.uniform(20.0, 150.0), 0.0, 0.707, sr)]
    for _ in range(int(rng.integers(2, 5))):
        fc = np.exp(rng.uniform(np.log(100.0), np.log(0.4 * sr)))
        sos.append(_rbj_sos("peak", fc, rng.uniform(-eq_db, eq_db), rng.uniform(0.7, 2.5), sr))
    sos.append(_rbj_sos("lowshelf", rng.uniform(100.0, 400.0), rng.uniform(-eq_db, eq_db), 0.707, sr))
    sos.append(_rbj_sos("highshelf", rng.uniform(2000.0, 0.4 * sr), rng.uniform(-eq_db, eq_db), 0.707, sr))
    x = scipy.signal.sosfilt(np.stack(sos), x)
    spec = np.fft.rfft(rng.standard_normal(len(x)))
    freqs = np.maximum(np.fft.rfftfreq(len(x), 1.0 / sr), 20.0)
    noise = np.fft.irfft(spec * freqs ** (-0.5 * rng.choice([0.0, 1.0, 2.0])), len(x))  # white/pink/brown
    gain = 10.0 ** (-rng.uniform(*_CHANNEL["snr_db"]) / 20.0) * np.sqrt(np.mean(x * x) / np.mean(noise * noise))
    x = x + gain * noise
    x *= 10.0 ** (rng.uniform(-26.0, -1.0) / 20.0) / (np.max(np.abs(x)) + 1e-9)
    return np.clip(np.round(x * 32767.0), -32767, 32767).astype(np.int16)


def _seed(spec: CorpusSpec, *key: int) -> np.random.Generator:
    """Independent stream per key: (0, speaker) traits and videos, (0, speaker, utt + 1) content, (1,) trials,
    (2, speaker, utt) channel. Speaker indices count train then test speakers, as their names do."""
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=key))


def _generate_speaker(job: tuple) -> list:
    """Write all utterances of one speaker below split_dir; return their paths relative to split_dir."""
    spec, split_dir, index, num_utts = job
    rng = _seed(spec, 0, index)
    traits = _draw_traits(rng)
    num_videos = min(int(rng.integers(2, 5)), num_utts)
    videos: list[str] = []
    while len(videos) < num_videos:
        name = "".join(rng.choice(_VIDEO_ALPHABET, 11))
        if name not in videos:
            videos.append(name)
    assign = np.sort(np.concatenate([np.arange(num_videos), rng.integers(0, num_videos, num_utts - num_videos)]))
    counts, paths = [0] * num_videos, []
    for j, v in enumerate(assign):
        counts[v] += 1
        rel = f"id{index:05d}/{videos[v]}/{counts[v]:05d}.wav"
        urng = _seed(spec, 0, index, j + 1)
        n = int(round(urng.uniform(spec.min_seconds, spec.max_seconds) * spec.sample_rate))
        audio = _channel(_synthesize(traits, urng, n, spec.sample_rate), _seed(spec, 2, index, j), spec.sample_rate)
        (pathlib.Path(split_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(pathlib.Path(split_dir) / rel, audio, spec.sample_rate, subtype="PCM_16", format="WAV")
        paths.append(rel)
    return paths


def _make_trials(spec: CorpusSpec, utts: list) -> list:
    """VoxCeleb-style (label, enroll, test) trials; every utterance gets target and non-target partners."""
    rng, pairs = _seed(spec, 1), {}
    flat = [(s, u) for s, us in enumerate(utts) for u in us]
    speaker_of = np.array([s for s, _ in flat])
    for s, u in flat:
        same = [x for x in utts[s] if x != u]
        for x in rng.choice(same, min(_TRIALS_PER_UTT, len(same)), replace=False):
            pairs.setdefault(frozenset((u, str(x))), (1, u, str(x)))
        others = np.flatnonzero(speaker_of != s)
        for k in rng.choice(others, min(_TRIALS_PER_UTT, len(others)), replace=False):
            pairs.setdefault(frozenset((u, flat[k][1])), (0, u, flat[k][1]))
    trials = list(pairs.values())
    return [trials[i] for i in rng.permutation(len(trials))]


def worker_init() -> None:
    """glibc only: let pool workers keep freed memory rather than fault in ~8 MB of fresh pages per utterance."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20), libc.mallopt(-1, 256 << 20)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


# Below this much audio the corpus is generated in-process: one core makes ~170 s of audio per second (the 2-core
# dev VM), while starting pool workers under "spawn" (a parent that runs jax or TF) costs 2-4 s, most of it the
# workers re-importing the parent's main module (measured: configs/tiny.py's 50-s corpus, 0.3 s in-process and
# 3.6-4.3 s through the pool inside `python -m sv_jax.main`).
SERIAL_BELOW_AUDIO_S = 1000.0


def _auto_workers(spec: CorpusSpec) -> int:
    utterances = (spec.num_train_speakers * spec.utts_per_train_speaker
                  + spec.num_test_speakers * spec.utts_per_test_speaker)
    audio_s = utterances * (spec.min_seconds + spec.max_seconds) / 2
    return 1 if audio_s < SERIAL_BELOW_AUDIO_S else os.cpu_count() or 1


def mp_context():
    """fork (no main-module guard needed) unless the parent already runs threads (jax, TF), then spawn."""
    threaded = threading.active_count() > 1 or any(m in sys.modules for m in ("jax", "tensorflow", "torch"))
    return multiprocessing.get_context("spawn" if threaded or os.name != "posix" else "fork")


def check_existing(root: pathlib.Path, expected: dict) -> bool:
    """True if root already holds the corpus `expected` describes ({"spec": ..., "generator_version": ...}, as its
    marker file records it); raise ValueError if it holds anything else. The tagging corpus uses it too."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory; choose another output path.")
    marker = root / MARKER_NAME
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
        except ValueError as e:
            raise ValueError(f"{marker} is unreadable ({e}); delete {root} and generate again.") from e
        if found.get("spec") == expected["spec"] and found.get("generator_version") == expected["generator_version"]:
            return True
        old = found.get("spec") if isinstance(found.get("spec"), dict) else {}
        diff = {k: (old.get(k), v) for k, v in expected["spec"].items() if old.get(k) != v}
        raise ValueError(f"{root} holds a generated corpus with a different spec or generator version "
                         f"(found -> requested: {diff}, version {found.get('generator_version')} -> "
                         f"{expected['generator_version']}); delete {root} or choose another path.")
    if any(root.iterdir()):
        raise ValueError(f"{root} is not empty and has no {MARKER_NAME} (a partial or foreign directory); "
                         f"delete it or choose another path.")
    return False


def map_jobs(function: Callable, jobs: list, workers: int) -> list:
    """`function` over `jobs`, in order: in this process (workers == 1) or in a pool of `workers` processes."""
    if workers == 1:
        return [function(job) for job in jobs]
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context(), worker_init) as pool:
        return list(pool.map(function, jobs, chunksize=max(1, len(jobs) // (8 * workers))))


def write_atomically(root: pathlib.Path, expected: dict, write: Callable[[pathlib.Path], Any]) -> Any:
    """Crash-safe generation (the tagging corpus uses it too): `write(tmp)` fills a temporary sibling of root, the
    marker file records `expected` (check_existing), and tmp is renamed into place; an identical generation that won
    a race is fine. Returns what `write` returned."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # (not tempfile.mkdtemp: its 0700 mode would stick to the corpus)
    try:
        result = write(tmp)
        (tmp / MARKER_NAME).write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, root)  # atomic; also replaces an empty directory
        except OSError:
            if not check_existing(root, expected):  # lost a race with an identical generation: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def generate_corpus(root, spec: CorpusSpec = CorpusSpec(), num_workers: int | None = None) -> Corpus:
    """Generate the synthetic corpus under root (or return at once if it is already there with this spec).
    `num_workers` processes (default: all cores, or this process alone for a corpus under SERIAL_BELOW_AUDIO_S);
    the corpus does not depend on it."""
    root = pathlib.Path(root).expanduser().absolute()
    corpus = Corpus(root, root / "train", root / "test", root / "trials.txt")
    expected = {"spec": dataclasses.asdict(spec), "generator_version": GENERATOR_VERSION}
    if check_existing(root, expected):
        return corpus
    start = time.monotonic()

    def write(tmp):
        ntr = spec.num_train_speakers
        jobs = [(spec, str(tmp / "train"), i, spec.utts_per_train_speaker) for i in range(ntr)] + [
            (spec, str(tmp / "test"), i, spec.utts_per_test_speaker) for i in range(ntr, ntr + spec.num_test_speakers)]
        results = map_jobs(_generate_speaker, jobs, max(1, min(num_workers or _auto_workers(spec), len(jobs))))
        trials = _make_trials(spec, results[ntr:])
        (tmp / "train").mkdir(exist_ok=True)
        (tmp / "trials.txt").write_text("".join(f"{lab} {a} {b}\n" for lab, a, b in trials))
        return sum(map(len, results)), len(trials)

    utterances, trials = write_atomically(root, expected, write)
    logger.info("Synthetic corpus at %s: %d train + %d test speakers, %d utterances, %d trials, %.1f s",
                root, spec.num_train_speakers, spec.num_test_speakers, utterances, trials, time.monotonic() - start)
    return corpus


def main(argv) -> None:
    from absl import app, flags  # pylint: disable=import-outside-toplevel
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        spec = CorpusSpec(**{field.name: getattr(f, field.name) for field in dataclasses.fields(CorpusSpec)})
        corpus = generate_corpus(f.out, spec, num_workers=f.num_workers)
    except ValueError as error:  # a spec out of range, or --out holding something else
        raise cli.UserError(str(error)) from error
    for name in ("root", "train_dir", "test_dir", "trials"):
        print(f"{name}: {getattr(corpus, name)}")


def _define_flags() -> None:
    """The command line's flags: --out and one per CorpusSpec field (defined only when run as a script)."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("out", None, "corpus root directory")
    define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
    for field in dataclasses.fields(CorpusSpec):
        define[type(field.default)](field.name, field.default, f"CorpusSpec.{field.name}")
    flags.DEFINE_integer("num_workers", None, "generating processes (default: all cores; one below "
                         f"{SERIAL_BELOW_AUDIO_S:.0f} s of audio)")
    flags.mark_flags_as_required(["out"])


if __name__ == "__main__":
    _define_flags()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cli.run(main)
