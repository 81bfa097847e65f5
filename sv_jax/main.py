"""Command line: `python -m sv_jax.main --config=configs/r34.py [--workdir=runs/r34] [--mode=train]`.

Modes: train (default; trains, resuming from the workdir's latest checkpoint, then evaluates), eval (evaluates the
latest checkpoint), extract (embeddings of the audio files listed in --audio_list to --output .npy), describe (prints
the model's parameter count and layer output shapes as JSON; no data, no training).
"""

import os
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from sv_jax import commands

MODES = ("train", "eval", "extract", "describe")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory; default runs/<config file stem>.")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_string("audio_list", None, "extract: text file with one audio path per line.")
flags.DEFINE_string("output", None, "extract: .npy file for the [N, embed_dim] embeddings (list order).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = FLAGS.workdir or str(pathlib.Path("runs") / pathlib.Path(config_flags.get_config_filename(
        FLAGS["config"])).stem)
    logging.info("mode %s, workdir %s", FLAGS.mode, workdir)
    commands.run(FLAGS.mode, FLAGS.config, workdir, audio_list=FLAGS.audio_list, output=FLAGS.output)


if __name__ == "__main__":
    app.run(main)
