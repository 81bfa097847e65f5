"""What every `python -m` command of this repository shares: errors a user can fix, and how a command runs.

    from cli import ConfigError
    raise ConfigError("config data.train_dir is empty: set --config.data.train_dir=... or try configs/demo.py")

    if __name__ == "__main__":
        cli.run(main)        # absl's app.run, with the behaviour below

A `UserError` is a mistake in the configuration or the input, not a bug: an empty or missing path, an unknown
config key or model, bad audio under `data.on_bad_audio='error'`, an unreadable checkpoint, a diverged run. Its
message names the file or key and the next step. `run` prints it as one line (`error: ...`) and exits with
status 2; `--traceback` shows the traceback as well. Flag errors (an unknown `--config.<key>`) are reported the same
way. Any other exception is a bug and keeps its traceback (exit status 1).

`run` also keeps library start-up noise off the terminal: TensorFlow's C++ notices (the oneDNN line, "All log
messages before absl::InitializeLog()") are dropped from stderr, everything else passes through unchanged. Set
SV_STARTUP_LOGS=1 to see them. This package sits below every other one (it imports only the standard library and,
inside `run`, absl), so data_pipeline, sv_jax and profiling can all use it.
"""

from __future__ import annotations

import atexit
import os
import select
import subprocess
import sys
from typing import Any, Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; its message says what and how. Command lines exit with status 2."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work (empty, unknown, out of range)."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or directory the configuration names does not exist."""


# Lines of library start-up chatter dropped from stderr (regular expressions on whole lines).
STARTUP_NOISE = (
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    rb"I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\..*",
    rb"I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized .*",
    rb"To enable the following instructions: .* in other operations, rebuild TensorFlow .*",
)

_FILTER = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)   # only the end of the pipe ends this filter
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise = re.compile(b"|".join(b"(?:" + p + b")" for p in eval(sys.argv[1])))
marker, ready = sys.argv[2].encode(), int(sys.argv[3])
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if line.rstrip(b"\r\n").endswith(marker):   # the parent is exiting: all it wrote before this is out
        line = line[:line.rindex(marker)]  # an unfinished line (a progress bar) the marker was appended to
        ready = os.close(ready)
    if line and not noise.fullmatch(line.rstrip(b"\r\n")):
        out.write(line)
        out.flush()
"""


def filter_startup_noise() -> None:
    """Routes this process's stderr (file descriptor 2, so C++ libraries too) through a small filter process that
    drops STARTUP_NOISE lines. The filter outlives a crash of this process, so a fatal message still gets out.

    At exit this process writes a marker line and waits (at most 5 s) until the filter has read it, so that what it
    wrote is out before the shell's prompt. It cannot wait for the filter to end instead: children that outlive it
    briefly (multiprocessing's resource tracker) hold the pipe too, and waiting for them cost every command 5 s.
    """
    if os.environ.get("SV_STARTUP_LOGS") == "1" or os.environ.get("_SV_STDERR_FILTERED") == "1":
        return
    sys.stderr.flush()
    stderr = os.dup(2)
    marker = f"sv_jax stderr filter: {os.getpid()} exits {os.urandom(8).hex()}"
    ready_r, ready_w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", _FILTER, repr(STARTUP_NOISE), marker, str(ready_w)],
                            stdin=subprocess.PIPE, stdout=stderr, close_fds=True, pass_fds=(ready_w,))
    os.close(ready_w)
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()
    os.environ["_SV_STDERR_FILTERED"] = "1"  # children inherit the filtered stderr

    def drain() -> None:  # at exit: hand stderr back once the filter has written everything sent before the marker
        sys.stderr.flush()
        try:
            os.write(2, marker.encode() + b"\n")
        except OSError:  # the filter is gone: nothing to wait for
            return
        finally:
            os.dup2(stderr, 2)
        select.select([ready_r], [], [], 5.0)  # readable (EOF) once the filter has read the marker

    atexit.register(drain)


def run(main: Callable[[list[str]], Any]) -> None:
    """absl's `app.run(main)`, quiet at start-up, with one line and exit status 2 for a user's mistake."""
    from absl import app, flags  # pylint: disable=import-outside-toplevel

    filter_startup_noise()
    flags.DEFINE_bool("traceback", False, "Show the traceback of a configuration or input error as well.")

    def fail(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)

    def parse(argv: list[str]) -> list[str]:
        try:
            rest = flags.FLAGS(argv)
            _check_config_files(flags.FLAGS)
            return rest
        except UserError as error:
            fail(str(error))
        except flags.Error as error:
            fail(_flag_error(error))
        except (KeyError, AttributeError, ValueError, TypeError) as error:  # config_flags: an unknown key or value
            if "--traceback" in argv:
                raise
            fail(_override_error(error, argv))

    def guarded(argv: list[str]) -> Any:
        try:
            return main(argv)
        except UserError as error:
            if flags.FLAGS.traceback:
                raise
            fail(str(error))

    app.run(guarded, flags_parser=parse)


def _flag_error(error: Exception) -> str:
    """A flag's error in one line. A config file whose get_config() raised comes wrapped by ml_collections with
    its traceback: the flag and the exception's own last line are kept (`--traceback` is not needed to read it)."""
    text = str(error)
    if "Traceback (most recent call last)" not in text:
        return f"{text} (--helpfull lists every flag)"
    head = text.split("\n", 1)[0].removesuffix(":").replace(": Error whilst parsing config file", "")
    last = [line for line in text.splitlines() if line.strip()][-1]
    return f"{head}: {last.split(': ', 1)[-1]}"


def _check_config_files(values) -> None:
    """A config file flag (--config, --sweep) naming no file is a UserError (config_flags only fails on first use)."""
    from ml_collections.config_flags import config_flags  # pylint: disable=import-outside-toplevel
    for name in values.flag_values_dict():
        if config_flags.is_config_flag(values[name]) and values[name].present:
            path = config_flags.get_config_filename(values[name]).split(":", 1)[0]
            if not os.path.isfile(path):
                raise MissingInputError(f"--{name}={path}: no such config file (configs/ holds the shipped ones)")


def _override_error(error: BaseException, argv: list[str]) -> str:
    """One line for a config override that config_flags could not apply, naming the flag that caused it."""
    text = str(error).strip().strip("\"'")
    text = text.splitlines()[-1] if text else type(error).__name__
    key = text.split("'")[1] if text.count("'") >= 2 else text
    culprits = [a for a in argv if a.startswith("--") and "." in a.split("=")[0] and key in a.split("=")[0]]
    if isinstance(error, (KeyError, AttributeError)):
        return (f"unknown config field {key!r}" + (f" in {culprits[0]}" if culprits else "") +
                ": configs/default.py lists every field")
    return f"{text}" + (f" (in {culprits[0]})" if culprits else " (in the --config overrides)")
