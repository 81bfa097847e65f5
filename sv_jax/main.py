"""Command line: `python -m sv_jax.main --config=configs/r34.py [--workdir=runs/r34] [--mode=train]`.

Multi-process (several hosts, or several processes on one): see sv_jax/distributed.py for the flags.

Modes: train (default; trains, resuming from the workdir's latest checkpoint, then evaluates), eval (evaluates the
latest checkpoint, or its average), extract (embeddings of the audio files listed in --audio_list to --output .npy),
describe (prints the model's parameter count and layer output shapes as JSON; no data, no training), import (a
WeSpeaker checkpoint, --torch_checkpoint=avg_model.pt, into the workdir: sv_jax/wespeaker.py), average (the last
--average_last checkpoints, as WeSpeaker's recipe: sv_jax/averaging.py).

A configuration or input mistake prints one line (`error: ...`, naming the key or file and the next step) and exits
with status 2; `--traceback` shows its traceback too (see cli/__init__.py).
"""

import logging as std_logging
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

from absl import app, flags, logging  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

import cli  # pylint: disable=wrong-import-position
from sv_jax import commands, distributed  # pylint: disable=wrong-import-position


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory; default runs/<config file stem>.")
flags.DEFINE_enum("mode", "train", commands.MODES, "What to do.")
flags.DEFINE_string("audio_list", None, "extract: text file with one audio path per line.")
flags.DEFINE_string("output", None, "extract: .npy file for the [N, embed_dim] embeddings (list order).")
flags.DEFINE_string("torch_checkpoint", None, "import: a WeSpeaker PyTorch state dict (avg_model.pt); needs torch.")
flags.DEFINE_integer("average_last", None, "average: how many of the last checkpoints (default train.average_last).")
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0 (with the next two).")
flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes take part.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0 .. num_processes - 1.")
flags.DEFINE_bool("distributed", False, "Multi-process from the cluster environment JAX detects (SLURM, Open MPI).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _configure_logging()
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed)
    workdir = FLAGS.workdir or str(pathlib.Path("runs") / pathlib.Path(config_flags.get_config_filename(
        FLAGS["config"])).stem)
    std_logging.getLogger("sv_jax").info("mode %s, workdir %s", FLAGS.mode, workdir)
    commands.run(FLAGS.mode, FLAGS.config, workdir, audio_list=FLAGS.audio_list, output=FLAGS.output,
                 torch_checkpoint=FLAGS.torch_checkpoint, average_last=FLAGS.average_last)


def _configure_logging():
    """sv_jax's own progress at INFO; libraries (orbax logs every save through absl) at WARNING."""
    logging.set_verbosity(logging.WARNING)
    handler = std_logging.StreamHandler()
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    for name in ("sv_jax", "data_pipeline"):
        logger = std_logging.getLogger(name)
        logger.setLevel(std_logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False


if __name__ == "__main__":
    cli.run(main)
