"""A built-in synthetic audio-tagging corpus in DESED's layout, so the tagging demo and tests need no download.

Ten event classes named as DESED's (`tagging.CLASSES`), each a generated sound with a recognisable spectro-temporal
signature and random per-event variation: alarm (tonal beeps at 1-3.2 kHz, some alternating or trilled), blender (a
sawtooth motor with speed wobble and grinding noise, sometimes pulsed), cat (gliding harmonic meows with a moving
formant), dishes (short decaying inharmonic clicks), dog (short harmonic barks gliding down, with a noisy edge),
electric shaver/toothbrush (a square-wave buzz at 80-260 Hz), frying (dense crackles over a high hiss), running
water (a gurgling noise band with bubble chirps), speech (formant-filtered pulse trains in syllable rhythm) and
vacuum cleaner (a steady noise band with a motor hum and a whine that spins up). A clip (default 10 s, 16 kHz, mono
16-bit PCM) is coloured background noise (power slope f^-a, a in [0, 2], RMS -55 to -35 dBFS) with
`min_events`-`max_events` events of distinct classes at random onsets and durations, each at an event-to-background
SNR (RMS over the event's span) drawn from [snr_db_min, snr_db_max] (DESED's soundscapes use 6-30 dB). Onsets and
offsets are whole milliseconds, so the labels written are exact: weak labels for the training clips, strong ones
(onset, offset, class) for the held-out validation clips, where DESED has them too:

    audio/train/weak/train_00000.wav                   metadata/train/weak.tsv              (weak labels)
    audio/validation/validation/validation_00000.wav   metadata/validation/validation.tsv   (strong labels)

so `tagging.load_split` reads it as it reads the real DESED. Generation is deterministic by seed (each clip draws
from its own `np.random.SeedSequence` spawn key, so the bytes do not depend on the worker count), parallel over
clips, and crash-safe as data_pipeline.synthetic's: files go to a temporary sibling directory that is renamed into
place after the marker `.complete.json` is written; regenerating with the same spec returns at once, another spec
is an error. Command line: ``python -m data_pipeline.tagging_synthetic --out=DIR [--num_train_clips=300 ...]``.
"""

import dataclasses
import logging
import os
import pathlib
import time

import numpy as np
import scipy.signal
import soundfile

import cli
from data_pipeline import synthetic
from data_pipeline.tagging import CLASSES, SPLITS, STRONG_HEADER, WEAK_HEADER, Event

__all__ = ["TaggingCorpusSpec", "TaggingCorpus", "generate_corpus", "synthesize_clip"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
# Event durations (s) per class, in CLASSES order.
_EVENT_SECONDS = ((1.0, 5.0), (2.0, 7.0), (0.5, 2.5), (0.3, 2.5), (0.4, 3.0), (1.5, 7.0), (2.0, 10.0), (1.5, 10.0),
                  (0.8, 5.0), (2.0, 10.0))
# F1-F3 (Hz) of /a e i o u/, adult male.
_VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]])


@dataclasses.dataclass(frozen=True)
class TaggingCorpusSpec:
    num_train_clips: int = 300
    num_validation_clips: int = 100
    clip_seconds: float = 10.0
    sample_rate: int = 16000
    min_events: int = 1
    max_events: int = 3
    snr_db_min: float = 6.0
    snr_db_max: float = 30.0
    seed: int = 0

    def __post_init__(self):
        if self.num_train_clips < 0 or self.num_validation_clips < 0:
            raise ValueError(f"need num_train_clips >= 0 and num_validation_clips >= 0: {self}")
        if not 0 <= self.min_events <= self.max_events <= len(CLASSES):
            raise ValueError(f"need 0 <= min_events <= max_events <= {len(CLASSES)}: {self}")
        if self.clip_seconds < 1.0 or self.sample_rate < 16000 or self.seed < 0:
            raise ValueError(f"need clip_seconds >= 1, sample_rate >= 16000 (the classes reach 7.5 kHz) and seed "
                             f">= 0: {self}")
        if self.snr_db_min > self.snr_db_max:
            raise ValueError(f"need snr_db_min <= snr_db_max: {self}")


@dataclasses.dataclass(frozen=True)
class TaggingCorpus:
    root: pathlib.Path
    train_audio: pathlib.Path  # root/audio/train/weak
    train_tsv: pathlib.Path  # root/metadata/train/weak.tsv (weak labels)
    validation_audio: pathlib.Path  # root/audio/validation/validation
    validation_tsv: pathlib.Path  # root/metadata/validation/validation.tsv (strong labels)


# ----------------------------------------------------------------------------------------------------------------
# The event classes: each renders one event of at most n samples (it may end earlier, after its last sub-sound)
# ----------------------------------------------------------------------------------------------------------------


def _band(x, lo, hi, sr, order=2):
    return scipy.signal.sosfilt(scipy.signal.butter(order, [lo, min(hi, 0.45 * sr)], "bandpass", fs=sr,
                                                    output="sos"), x)


def _slow_noise(rng, n, sr, hz):
    """Smooth random modulation [n] with unit spread and content below `hz`."""
    x = scipy.signal.sosfilt(scipy.signal.butter(2, hz, fs=sr, output="sos"), rng.standard_normal(n))
    return x / (x.std() + 1e-9)


def _harmonics(f0, sr, amps):
    """sum_k amps[k] sin(2 pi (k + 1) int f0) for f0 [n] and amps [K] or [K, n]; partials above 0.45 sr muted."""
    k = np.arange(1, len(amps) + 1)[:, None]
    phase = 2.0 * np.pi * np.cumsum(f0) / sr
    amps = np.asarray(amps, float).reshape(len(amps), -1) * (k * f0[None] < 0.45 * sr)
    return np.sum(amps * np.sin(k * phase[None]), axis=0)


def _bursts(rng, n, sr, length_s, gap_s, render):
    """Sub-sounds (barks, meows, syllables) one after another, each rendered by render(length) and separated by
    gaps, while they fit in n samples; trimmed after the last."""
    out, pos, end = np.zeros(n), 0, 0
    while pos < n:
        length = int(rng.uniform(*length_s) * sr)
        if pos + length > n and end > 0:
            break
        y = render(min(length, n - pos))
        out[pos:pos + len(y)] = y
        end = pos + len(y)
        pos = end + int(rng.uniform(*gap_s) * sr)
    return out[:end]


def _alarm(rng, n, sr):
    t = np.arange(n) / sr
    beep, f = rng.uniform(0.08, 0.4), rng.uniform(1000.0, 3200.0)
    period = beep * rng.uniform(1.3, 2.5)
    alternate = rng.uniform(0.75, 0.9) if rng.random() < 0.5 else 1.0
    f0 = f * np.where((t // period) % 2 == 1, alternate, 1.0)
    ph = t % period
    gate = np.clip(np.minimum(ph, beep - ph) / 0.005, 0.0, 1.0)
    trill = 1.0 - 0.8 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(12.0, 25.0) * t)) if rng.random() < 0.5 else 1.0
    return gate * trill * _harmonics(f0, sr, [1.0, rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.3)])


def _blender(rng, n, sr):
    t = np.arange(n) / sr
    f0 = rng.uniform(100.0, 250.0) * (1 + 0.06 * _slow_noise(rng, n, sr, 2.0)) * (1 - 0.4 * np.exp(-t / 0.2))
    motor = scipy.signal.sawtooth(2 * np.pi * np.cumsum(f0) / sr)
    grind = _band(rng.standard_normal(n), 1000.0, 5000.0, sr) * np.abs(_slow_noise(rng, n, sr, 25.0))
    x = scipy.signal.sosfilt(scipy.signal.butter(2, 4000.0, fs=sr, output="sos"), motor) + 1.5 * grind
    if rng.random() < 0.5:  # pulse mode
        period = rng.uniform(0.6, 2.0)
        x *= (t % period) < period * rng.uniform(0.6, 0.85)
    return x


def _cat(rng, n, sr):
    fa, peak, bright = rng.uniform(350.0, 550.0), rng.uniform(1.3, 1.8), rng.uniform(1000.0, 1800.0)

    def meow(m):
        u = np.arange(m) / m
        f0 = fa * (1 + (peak - 1) * np.sin(np.pi * u ** 0.8)) * (1 - 0.25 * u)
        formant = 700.0 + bright * np.sin(np.pi * u)  # "mi-a-u"
        k = np.arange(1, 11)[:, None]
        amps = np.exp(-0.5 * ((k * f0 - formant) / 500.0) ** 2) + 0.05
        return np.sqrt(np.sin(np.pi * u)) * _harmonics(f0, sr, amps)

    return _bursts(rng, n, sr, (0.35, 0.9), (0.1, 0.5), meow)


def _dishes(rng, n, sr):
    out = np.zeros(n + sr // 2)
    ratios = np.array([1.0, 2.32, 4.25, 6.63]) * rng.uniform(0.95, 1.05, 4)
    base, tau = rng.uniform(1200.0, 3000.0), rng.uniform(0.015, 0.06)
    starts = np.sort(rng.integers(0, max(1, n - int(5 * tau * sr)), max(1, rng.poisson(rng.uniform(2, 6) * n / sr))))
    tc = np.arange(int(5 * tau * sr)) / sr
    for s in starts:
        freqs = np.minimum(base * ratios * rng.uniform(0.97, 1.03), 0.45 * sr)
        modes = rng.uniform(0.3, 1.0, (4, 1)) * np.sin(2 * np.pi * freqs[:, None] * tc + rng.uniform(0, 6.3, (4, 1)))
        out[s:s + len(tc)] += rng.uniform(0.3, 1.0) * np.exp(-tc / tau) * modes.sum(0)
    return out[:starts[-1] + len(tc)]


def _dog(rng, n, sr):
    f_hi, glide = rng.uniform(300.0, 700.0), rng.uniform(0.55, 0.8)

    def bark(m):
        tb = np.arange(m) / sr
        f0 = f_hi * rng.uniform(0.9, 1.1) * (glide + (1 - glide) * np.exp(-tb / (0.4 * tb[-1] + 1e-3)))
        env = (1 - np.exp(-tb / 0.005)) * np.exp(-tb / (m / sr / 3))
        edge = 0.4 * _band(rng.standard_normal(m), 800.0, 2500.0, sr)
        return env * (_harmonics(f0, sr, 1.0 / np.arange(1, 13) ** 0.8) + edge)

    return _bursts(rng, n, sr, (0.08, 0.25), (0.15, 0.6), bark)


def _shaver(rng, n, sr):
    t = np.arange(n) / sr
    f0 = rng.uniform(80.0, 260.0) * (1 + 0.005 * np.sin(2 * np.pi * rng.uniform(3, 7) * t))
    buzz = np.sign(np.sin(2 * np.pi * np.cumsum(f0) / sr))
    return _band(buzz, 300.0, 6000.0, sr) * (1 + 0.3 * _slow_noise(rng, n, sr, 4.0).clip(-2, 2) / 2)


def _frying(rng, n, sr):
    idx = rng.integers(0, n, rng.poisson(rng.uniform(100.0, 500.0) * n / sr))
    pops = np.bincount(idx, weights=rng.pareto(2.5, len(idx)) * rng.choice([-1.0, 1.0], len(idx)), minlength=n)
    crackle = _band(pops, rng.uniform(1500.0, 3000.0), rng.uniform(6000.0, 7500.0), sr)
    hiss = _band(rng.standard_normal(n), 3000.0, 7500.0, sr)
    return (crackle / (crackle.std() + 1e-9) + rng.uniform(0.2, 0.5) * hiss) * (1 + 0.2 * _slow_noise(rng, n, sr, 2))


def _running_water(rng, n, sr):
    x = _band(rng.standard_normal(n), rng.uniform(300.0, 600.0), rng.uniform(1800.0, 3500.0), sr)
    x *= 0.4 + np.abs(_slow_noise(rng, n, sr, rng.uniform(15.0, 40.0)))
    count, length = max(1, rng.poisson(rng.uniform(30.0, 80.0) * n / sr)), int(0.025 * sr)
    tb = np.arange(length) / sr
    dur = rng.uniform(0.008, 0.025, (count, 1))
    f = rng.uniform(500.0, 2500.0, (count, 1)) * (1 + rng.uniform(0.2, 0.6, (count, 1)) * np.minimum(tb / dur, 1))
    bubbles = np.sin(2 * np.pi * np.cumsum(f, axis=1) / sr) * np.exp(-tb / (0.3 * dur))
    bubbles *= rng.uniform(0.5, 2.0, (count, 1))
    at = rng.integers(0, max(1, n - length), count)[:, None] + np.arange(length)
    return x + np.bincount(at.ravel(), weights=bubbles.ravel(), minlength=n)[:n]


def _speech(rng, n, sr):
    f0_base, vt = rng.uniform(100.0, 240.0), rng.uniform(0.85, 1.2)

    def syllable(m):
        tb = np.arange(m) / m
        f0 = f0_base * (1 + rng.uniform(-0.1, 0.25) * np.sin(np.pi * tb)) * (1 - 0.1 * tb)
        ph = np.cumsum(f0) / sr
        pulses = np.diff(np.floor(ph), prepend=0.0)
        src = scipy.signal.lfilter([1.0], [1.0, -1.8, 0.81], pulses)  # glottal roll-off
        formants = _VOWELS[rng.integers(len(_VOWELS))] * vt
        y = sum(scipy.signal.lfilter(*scipy.signal.iirpeak(f, f / bw, fs=sr), src) * g
                for f, bw, g in zip(formants, (60.0, 90.0, 150.0), (1.0, 0.6, 0.3)))
        onset = _band(rng.standard_normal(m), 2500.0, 7000.0, sr) * np.exp(-tb * 12) * rng.uniform(0, 0.3)
        return np.sin(np.pi * tb) ** 0.5 * y / (np.abs(y).max() + 1e-9) + onset

    return _bursts(rng, n, sr, (0.12, 0.3), (0.02, 0.25), syllable)


def _vacuum(rng, n, sr):
    t = np.arange(n) / sr
    spin = 1 - np.exp(-t / rng.uniform(0.1, 0.4))
    body = _band(rng.standard_normal(n), rng.uniform(200.0, 500.0), rng.uniform(3000.0, 6000.0), sr)
    whine = np.sin(2 * np.pi * np.cumsum(rng.uniform(2500.0, 5000.0) * (0.5 + 0.5 * spin)) / sr)
    hum = scipy.signal.sawtooth(2 * np.pi * rng.uniform(100.0, 250.0) * t)
    return spin * (body / (body.std() + 1e-9) + rng.uniform(0.1, 0.3) * whine + rng.uniform(0.1, 0.3) * hum)


_RENDER = (_alarm, _blender, _cat, _dishes, _dog, _shaver, _frying, _running_water, _speech, _vacuum)


# ----------------------------------------------------------------------------------------------------------------
# Clips and the corpus
# ----------------------------------------------------------------------------------------------------------------


def _background(rng, n, sr):
    """Coloured noise (power slope f^-a, a in [0, 2]) at an RMS of -55 to -35 dBFS."""
    freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / sr), 20.0)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * freqs ** (-0.5 * rng.uniform(0.0, 2.0)), n)
    return x * 10.0 ** (rng.uniform(-55.0, -35.0) / 20.0) / (x.std() + 1e-12)


def synthesize_clip(spec: TaggingCorpusSpec, split: str, index: int) -> tuple[np.ndarray, list[Event]]:
    """Clip `index` of `split` ('train' or 'validation'): int16 samples [clip_seconds * sample_rate] and its
    events sorted by onset, exactly as generate_corpus writes them."""
    sr, n = spec.sample_rate, int(round(spec.clip_seconds * spec.sample_rate))
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(list(SPLITS).index(split), index)))
    background = _background(rng, n, sr)
    x, events, clip_ms = background.copy(), [], int(1000 * spec.clip_seconds)
    num_events = int(rng.integers(spec.min_events, spec.max_events + 1))
    for c in rng.choice(len(CLASSES), num_events, replace=False):
        shortest, longest = (min(int(1000 * s), clip_ms) for s in _EVENT_SECONDS[c])
        onset_ms = int(rng.integers(0, clip_ms - shortest + 1))
        planned_ms = min(int(rng.integers(shortest, longest + 1)), clip_ms - onset_ms)
        y = _RENDER[c](rng, planned_ms * sr // 1000, sr)
        duration_ms = min(len(y) * 1000 // sr, planned_ms)  # whole milliseconds: the labels are exact
        start, y = onset_ms * sr // 1000, y[:duration_ms * sr // 1000]
        fade = np.minimum(1.0, np.minimum(np.arange(len(y)), np.arange(len(y))[::-1]) / (0.01 * sr))
        snr = 10.0 ** (rng.uniform(spec.snr_db_min, spec.snr_db_max) / 20.0)
        x[start:start + len(y)] += snr * np.std(background[start:start + len(y)]) / (np.std(y) + 1e-12) * fade * y
        events.append(Event(onset_ms / 1000, (onset_ms + duration_ms) / 1000, CLASSES[c]))
    x *= min(1.0, 0.95 / (np.abs(x).max() + 1e-12))
    return np.round(x * 32767.0).astype(np.int16), sorted(events)


def _write_clip(job: tuple) -> tuple[str, list[Event]]:
    spec, audio_dir, split, index = job
    samples, events = synthesize_clip(spec, split, index)
    name = f"{split}_{index:05d}.wav"
    soundfile.write(os.path.join(audio_dir, name), samples, spec.sample_rate, subtype="PCM_16", format="WAV")
    return name, events


# Below this much audio the corpus is generated in-process: one core makes ~500 s of audio per second (the 2-core
# dev VM), while starting pool workers under "spawn" (a parent that runs jax or TF) costs 2-4 s.
SERIAL_BELOW_AUDIO_S = 1500.0


def generate_corpus(root, spec: TaggingCorpusSpec = TaggingCorpusSpec(),
                    num_workers: int | None = None) -> TaggingCorpus:
    """Generate the corpus under root, or return at once if root holds it with this spec (another spec: a
    ValueError). `num_workers` processes (default: all cores; this one alone below SERIAL_BELOW_AUDIO_S of audio);
    the bytes do not depend on it."""
    root = pathlib.Path(root).expanduser().absolute()
    corpus = TaggingCorpus(root, *(root / p for split in SPLITS.values() for p in split))
    expected = {"corpus": "tagging", "spec": dataclasses.asdict(spec), "generator_version": GENERATOR_VERSION}
    if synthetic.check_existing(root, expected):
        return corpus
    start = time.monotonic()

    def write(tmp):
        jobs = []
        for split, count in (("train", spec.num_train_clips), ("validation", spec.num_validation_clips)):
            (tmp / SPLITS[split][0]).mkdir(parents=True)
            (tmp / SPLITS[split][1]).parent.mkdir(parents=True, exist_ok=True)
            jobs += [(spec, str(tmp / SPLITS[split][0]), split, i) for i in range(count)]
        serial = len(jobs) * spec.clip_seconds < SERIAL_BELOW_AUDIO_S
        workers = max(1, min(num_workers or (1 if serial else os.cpu_count() or 1), len(jobs)))
        results = synthetic.map_jobs(_write_clip, jobs, workers)  # the speaker corpus's process setup
        train, validation = results[:spec.num_train_clips], results[spec.num_train_clips:]
        (tmp / SPLITS["train"][1]).write_text("\t".join(WEAK_HEADER) + "\n" + "".join(
            f"{name}\t{','.join(c for c in CLASSES if c in {e.label for e in events})}\n" for name, events in train))
        (tmp / SPLITS["validation"][1]).write_text("\t".join(STRONG_HEADER) + "\n" + "".join(
            "".join(f"{name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}\n" for e in events) or f"{name}\t\t\t\n"
            for name, events in validation))

    synthetic.write_atomically(root, expected, write)
    logger.info("Tagging corpus at %s: %d train + %d validation clips, %.1f s", root, spec.num_train_clips,
                spec.num_validation_clips, time.monotonic() - start)
    return corpus


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def main(argv) -> None:
    from absl import app, flags  # pylint: disable=import-outside-toplevel
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        spec = TaggingCorpusSpec(**{x.name: getattr(f, x.name) for x in dataclasses.fields(TaggingCorpusSpec)})
        corpus = generate_corpus(f.out, spec, num_workers=f.num_workers)
    except ValueError as error:  # a spec out of range, or --out holding something else
        raise cli.UserError(str(error)) from error
    for field in dataclasses.fields(TaggingCorpus):
        print(f"{field.name}: {getattr(corpus, field.name)}")


def _define_flags() -> None:
    """--out, --num_workers and one flag per TaggingCorpusSpec field (defined only when run as a script)."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("out", None, "corpus root directory")
    define = {int: flags.DEFINE_integer, float: flags.DEFINE_float}
    for field in dataclasses.fields(TaggingCorpusSpec):
        define[type(field.default)](field.name, field.default, f"TaggingCorpusSpec.{field.name}")
    flags.DEFINE_integer("num_workers", None, "generating processes (default: all cores; one below "
                         f"{SERIAL_BELOW_AUDIO_S:.0f} s of audio)")
    flags.mark_flags_as_required(["out"])


if __name__ == "__main__":
    _define_flags()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cli.run(main)
