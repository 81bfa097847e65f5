"""cli.run: the stderr filter drops start-up noise, keeps everything else, and does not wait for lingering children."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMAND = textwrap.dedent("""
    import os, subprocess, sys
    import cli

    def main(argv):
        # A child that outlives this process and holds its stderr, as multiprocessing's resource tracker does.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open(sys.argv[-1], "w").write(str(child.pid))
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        print("a line the user should see", file=sys.stderr)
        sys.stderr.write("an unfinished progress line")
        raise cli.ConfigError("config key x is bad: set --config.x")

    if __name__ == "__main__":
        cli.run(main)
""")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "command.py"
    path.write_text(COMMAND)
    return path


def test_filter_keeps_output_drops_noise_and_does_not_wait_for_children(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("_SV_STDERR_FILTERED", "SV_STARTUP_LOGS")}
    env["PYTHONPATH"] = ROOT
    pid_file, err_file = tmp_path / "child.pid", tmp_path / "stderr.txt"
    with open(err_file, "wb") as err:
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(script), str(pid_file)], stderr=err, env=env, timeout=60)
        elapsed = time.monotonic() - started
    child = int(pid_file.read_text())
    try:
        os.kill(child, 0)  # still running: the command returned without waiting for it
        alive = True
    except ProcessLookupError:
        alive = False
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    stderr = err_file.read_text()
    assert result.returncode == 2 and alive
    # Waiting for the filter to end would last until its 5-s timeout (the child holds the pipe); the command itself
    # takes a fraction of a second.
    assert elapsed < 4.0
    # Written before the command exited, so in the file when it returns (the filter still runs for the child).
    assert "a line the user should see\n" in stderr and "an unfinished progress line" in stderr
    assert "error: config key x is bad: set --config.x" in stderr
    assert "InitializeLog" not in stderr and "sv_jax stderr filter" not in stderr and "Traceback" not in stderr


def test_startup_logs_can_be_kept(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "_SV_STDERR_FILTERED"} | {"PYTHONPATH": ROOT,
                                                                                "SV_STARTUP_LOGS": "1"}
    with open(tmp_path / "stderr.txt", "wb") as err:
        subprocess.run([sys.executable, str(script), str(tmp_path / "child.pid")], stderr=err, env=env, timeout=60)
    os.kill(int((tmp_path / "child.pid").read_text()), signal.SIGKILL)
    assert "InitializeLog" in (tmp_path / "stderr.txt").read_text()
