"""TFDS builder for VoxCeleb2 dev (training) and VoxCeleb1 (evaluation audio and trial lists), built offline.

VoxCeleb needs registration, so nothing is downloaded: the builder reads a manual directory laid out as

    <manual_dir>/voxceleb2/dev/wav/<speaker>/<video>/<utt>.wav   (or .flac; 16 kHz)
    <manual_dir>/voxceleb1/wav/<speaker>/<video>/<utt>.wav        (vox1 dev + test merged; 16 kHz .wav)
    <manual_dir>/voxceleb1/veri_test2.txt, list_test_all2.txt, list_test_hard2.txt   (cleaned trial lists)
    <manual_dir>/voxceleb1/veri_test.txt, list_test_all.txt, list_test_hard.txt      (original trial lists)

VoxCeleb2 dev is distributed as m4a; convert it first with
``python -m data_pipeline.prepare --src=<vox2>/dev/aac --dst=<manual_dir>/voxceleb2/dev/wav``.

Configs (``voxceleb2/<config>``):

* ``dev``: VoxCeleb2 dev utterances, split ``train``; ``vox1``: VoxCeleb1 utterances, split ``test``. Features:
  ``audio`` (int16 [n] at 16 kHz, the file's samples exactly), ``speaker`` (ClassLabel over the sorted speaker
  directories, the same index as ``manifest.scan_dir`` gives), ``speaker_id`` and ``path`` (relative, ``/``-joined).
* ``vox1_O_cleaned``, ``vox1_E_cleaned``, ``vox1_H_cleaned``: the cleaned trial lists (``veri_test2.txt``,
  ``list_test_all2.txt``, ``list_test_hard2.txt``, or WeSpeaker's ``vox1_O_cleaned.kaldi`` etc.); ``vox1_O``,
  ``vox1_E``, ``vox1_H``: the original lists (``veri_test.txt``, ``list_test_all.txt``, ``list_test_hard.txt``, or
  ``vox1_O.kaldi`` etc.). The names are WeSpeaker's, as in the eval metric names; the published
  EERs are on the cleaned lists. Split ``test``, in file order, features ``enroll``, ``test`` (relative
  paths) and ``label`` (``nontarget``/``target``); ``info.metadata['trial_list']`` is the file read. Every
  utterance must exist under ``voxceleb1/wav``, else the build fails listing the missing files. Original and
  cleaned lists are separate configs rather than a fallback, so a result is never silently computed on the other.

Build (by default dev, vox1 and the cleaned lists; any comma-separated subset of the configs)::

    python -m data_pipeline.tfds_voxceleb2 --manual_dir=/data/vox --data_dir=/data/tfds --configs=dev,vox1

or from Python: ``Voxceleb2(config='dev', data_dir=d).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=m))``. TFDS 4.9.10's ``tfds build`` CLI imports
apache_beam at start-up, so ``tfds build data_pipeline/tfds_voxceleb2.py --manual_dir=... --config=dev`` only works
where apache-beam is installed. Load with ``tfds.load('voxceleb2/dev', data_dir=d)`` after importing this module, or
``tfds.builder_from_directory(d + '/voxceleb2/dev/1.0.0')`` without it; neither needs the manual directory.

Bad audio (wrong sample rate, corrupt, empty) stops the build with a BadAudioError naming the file. Pass
``on_bad_audio='skip'`` to the builder (``--on_bad_audio=skip``) to leave such files out: each is logged, the count
is logged at the end, and the list is stored in the dataset's ``info.metadata['skipped_files']``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

import cli
from data_pipeline import audio as audio_lib
from data_pipeline import manifest as manifest_lib

__all__ = ["SAMPLE_RATE", "Voxceleb2", "Voxceleb2Config", "to_int16"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
ON_BAD_AUDIO = ("error", "skip")
_VOX2_DEV_DIR = ("voxceleb2", "dev", "wav")
_VOX1_DIR = ("voxceleb1", "wav")
_TRIALS_DIR = ("voxceleb1",)
_HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/"
_CITATION = """
@inproceedings{Chung18b,
  author = "Chung, J.~S. and Nagrani, A. and Zisserman, A.",
  title = "VoxCeleb2: Deep Speaker Recognition",
  booktitle = "INTERSPEECH",
  year = "2018",
}
@inproceedings{Nagrani17,
  author = "Nagrani, A. and Chung, J.~S. and Zisserman, A.",
  title = "VoxCeleb: a large-scale speaker identification dataset",
  booktitle = "INTERSPEECH",
  year = "2017",
}
"""


@dataclasses.dataclass(eq=False)
class Voxceleb2Config(tfds.core.BuilderConfig):
    """A config reads either an audio tree (`audio_dir`) or one trial list (first of `trial_lists` found).

    Attributes:
      audio_dir: path components of the audio tree under the manual dir.
      trial_lists: accepted file names of the trial list under ``<manual_dir>/voxceleb1``, in order of preference;
        empty for an utterance config.
      split: the single split the config produces.
    """

    audio_dir: tuple[str, ...] = _VOX1_DIR
    trial_lists: tuple[str, ...] = ()
    split: str = "test"

    @property
    def is_trials(self) -> bool:
        return bool(self.trial_lists)


def _trial_config(name: str, files: tuple[str, ...], what: str) -> Voxceleb2Config:
    return Voxceleb2Config(name=name, trial_lists=files, description=f"VoxCeleb1 {what} trial list ({files[0]}).")


_CONFIGS = [
    Voxceleb2Config(name="dev", audio_dir=_VOX2_DEV_DIR, split="train",
                    description="VoxCeleb2 dev utterances (5,994 speakers), 16 kHz int16."),
    Voxceleb2Config(name="vox1", audio_dir=_VOX1_DIR, split="test",
                    description="VoxCeleb1 dev+test utterances (1,251 speakers), the audio of the trial lists."),
    _trial_config("vox1_O_cleaned", ("veri_test2.txt", "vox1_O_cleaned.kaldi"), "-O cleaned"),
    _trial_config("vox1_E_cleaned", ("list_test_all2.txt", "vox1_E_cleaned.kaldi"), "-E cleaned"),
    _trial_config("vox1_H_cleaned", ("list_test_hard2.txt", "vox1_H_cleaned.kaldi"), "-H cleaned"),
    _trial_config("vox1_O", ("veri_test.txt", "vox1_O.kaldi"), "-O original"),
    _trial_config("vox1_E", ("list_test_all.txt", "vox1_E.kaldi"), "-E original"),
    _trial_config("vox1_H", ("list_test_hard.txt", "vox1_H.kaldi"), "-H original"),
]


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1) -> int16; exact for int16 PCM (load_audio divides by 32768), clipped for float files."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def _int16_audio_feature() -> tfds.features.Audio:
    """16 kHz int16 Audio stored as raw bytes (2 per sample)."""
    # BYTES: the default NONE encoding stores int64 varints, 10 bytes for every negative sample (~3x the size).
    feature = tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=SAMPLE_RATE, file_format=None,
                                  encoding=tfds.features.Encoding.BYTES)
    # TFDS 4.9.10's Audio.encode_example returns numpy arrays as they are, skipping the BYTES encoding that its
    # decode_example expects; encode them as the base Tensor does. Only this instance (used for writing) is
    # patched: the stored features.json names the plain Audio class, so readers need nothing from this module.
    feature.encode_example = functools.partial(tfds.features.Tensor.encode_example, feature)
    return feature


class Voxceleb2(tfds.core.GeneratorBasedBuilder):
    """VoxCeleb2 dev and VoxCeleb1 evaluation data from local 16 kHz audio (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: dev, vox1, and the VoxCeleb1 O/E/H trial lists."}
    BUILDER_CONFIGS = _CONFIGS
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    VoxCeleb requires registration at {_HOMEPAGE}; nothing is downloaded. Lay out manual_dir as
      <manual_dir>/voxceleb2/dev/wav/<speaker>/<video>/<utt>.wav  (or .flac)   for config 'dev'
      <manual_dir>/voxceleb1/wav/<speaker>/<video>/<utt>.wav      (dev+test merged) for 'vox1' and the trial lists
      <manual_dir>/voxceleb1/veri_test2.txt, list_test_all2.txt, list_test_hard2.txt  for 'vox1_{{O,E,H}}_cleaned'
      <manual_dir>/voxceleb1/veri_test.txt, list_test_all.txt, list_test_hard.txt     for 'vox1_{{O,E,H}}'
      (WeSpeaker's vox1_O_cleaned.kaldi, vox1_O.kaldi, ... are accepted instead).
    All audio must be 16 kHz mono wav or flac. VoxCeleb2 dev comes as m4a; convert it with
      python -m data_pipeline.prepare --src=<vox2>/dev/aac --dst=<manual_dir>/voxceleb2/dev/wav
    """

    # TFDS 4.9.10 locates a builder's file with importlib_resources, which current etils no longer installs
    # (download_and_prepare then fails with ModuleNotFoundError); this file's path is known, so skip the lookup.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def __init__(self, *, on_bad_audio: str = "error", **kwargs):
        """`on_bad_audio`: 'error' stops at the first unusable file; 'skip' leaves it out (logged, in metadata)."""
        if on_bad_audio not in ON_BAD_AUDIO:
            raise ValueError(f"on_bad_audio must be one of {ON_BAD_AUDIO}, got {on_bad_audio!r}")
        self._on_bad_audio = on_bad_audio
        super().__init__(**kwargs)
        # DatasetBuilder pickles itself by re-running __init__ with _original_state.
        self._original_state["on_bad_audio"] = on_bad_audio

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if config.is_trials:
            features = tfds.features.FeaturesDict({
                "enroll": tfds.features.Text(),
                "test": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=["nontarget", "target"]),
            })
            supervised_keys = None
        else:
            features = tfds.features.FeaturesDict({
                "audio": _int16_audio_feature(),
                # Names are set in _split_generators from the manual dir, which _info cannot see; a builder
                # loaded from data_dir gets them back from speaker.labels.txt.
                "speaker": tfds.features.ClassLabel(),
                "speaker_id": tfds.features.Text(),
                "path": tfds.features.Text(),
            })
            supervised_keys = ("audio", "speaker")
        return tfds.core.DatasetInfo(
            builder=self, description=config.description, features=features, supervised_keys=supervised_keys,
            homepage=_HOMEPAGE, citation=_CITATION, metadata=tfds.core.MetadataDict(),
            # Trials keep the official file order, so row i is line i of the list.
            disable_shuffling=config.is_trials)

    def _split_generators(self, dl_manager):
        config = self.builder_config
        manual_dir = os.fspath(dl_manager.manual_dir)  # raises with the instructions if missing or empty
        audio_root = os.path.join(manual_dir, *config.audio_dir)
        if not os.path.isdir(audio_root):
            raise FileNotFoundError(
                f"Config {config.name!r} needs the audio tree {audio_root!r}, which does not exist."
                f"\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        if config.is_trials:
            trials = manifest_lib.read_trials(self._find_trial_list(manual_dir))
            manifest_lib.check_trial_files(trials, audio_root)
            self.info.metadata["trial_list"] = trials.path.name
            log.info("%s: %d trials (%d target) from %s", config.name, len(trials), int(trials.labels.sum()),
                     trials.path)
            return {config.split: self._generate_examples(trials)}
        source = manifest_lib.scan_dir(audio_root)
        self.info.features["speaker"].names = list(source.speaker_ids)
        self.info.metadata["skipped_files"] = []
        log.info("%s: %d utterances of %d speakers under %s", config.name, len(source), source.num_speakers,
                 audio_root)
        return {config.split: self._generate_examples(source)}

    def _find_trial_list(self, manual_dir: str) -> str:
        trials_dir = os.path.join(manual_dir, *_TRIALS_DIR)
        for name in self.builder_config.trial_lists:
            path = os.path.join(trials_dir, name)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(
            f"Config {self.builder_config.name!r} needs a trial list in {trials_dir!r} named one of "
            f"{list(self.builder_config.trial_lists)}; none exists.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")

    def _generate_examples(self, data):
        if isinstance(data, manifest_lib.Trials):
            return self._generate_trials(data)
        return self._generate_utterances(data)

    def _generate_trials(self, trials: manifest_lib.Trials):
        for i, (enroll, test, label) in enumerate(zip(trials.enroll, trials.test, trials.labels)):
            yield i, {"enroll": enroll, "test": test, "label": int(label)}

    def _generate_utterances(self, source: manifest_lib.Manifest):
        """One decoded file at a time, so memory per example is one utterance whatever the corpus size."""
        prefix = len(str(source.root).rstrip(os.sep)) + 1
        skipped = self.info.metadata["skipped_files"]
        for path, speaker in zip(source.paths, source.speakers):
            rel = path[prefix:].replace(os.sep, "/")
            try:
                samples = audio_lib.load_audio(path, SAMPLE_RATE)
            except audio_lib.BadAudioError as e:
                if self._on_bad_audio == "error":
                    raise audio_lib.BadAudioError(
                        e.path, f"{e.problem} (build with on_bad_audio='skip' to leave bad files out)") from e
                log.warning("Skipping bad audio file %s", e)
                skipped.append(rel)
                continue
            yield rel, {"audio": to_int16(samples), "speaker": speaker, "speaker_id": speaker, "path": rel}
        if skipped:
            log.warning("%s: skipped %d of %d files with bad audio (listed in info.metadata['skipped_files'])",
                        self.builder_config.name, len(skipped), len(source))


def main(argv):
    del argv
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    download_config = tfds.download.DownloadConfig(manual_dir=f.manual_dir)
    for name in [c.strip() for c in f.configs.split(",") if c.strip()]:
        builder = Voxceleb2(config=name, data_dir=f.data_dir, on_bad_audio=f.on_bad_audio)
        builder.download_and_prepare(download_config=download_config)
        counts = {split: info.num_examples for split, info in builder.info.splits.items()}
        print(f"{builder.data_dir}: {counts}")


if __name__ == "__main__":
    from absl import flags  # pylint: disable=ungrouped-imports

    flags.DEFINE_string("manual_dir", None, "directory laid out as in the module docstring")
    flags.DEFINE_string("data_dir", None, "TFDS data directory to write (default: $TFDS_DATA_DIR or "
                                          "~/tensorflow_datasets)")
    flags.DEFINE_string("configs", "dev,vox1,vox1_O_cleaned,vox1_E_cleaned,vox1_H_cleaned",
                        "comma-separated configs to build, of " + ", ".join(c.name for c in _CONFIGS))
    flags.DEFINE_enum("on_bad_audio", "error", list(ON_BAD_AUDIO), "stop at a bad file, or skip and list it")
    flags.mark_flags_as_required(["manual_dir"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cli.run(main)
