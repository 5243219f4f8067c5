"""Writing output files so that an interrupt never leaves a half-written one."""

import json
import os
import tempfile

from recbole_mind.errors import UserError


def atomic_write(path, write, mode="wb"):
    """Write through ``write(file)`` into a temporary file beside ``path``, then os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"output folder {folder} does not exist: create it or choose another path")
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path, value):
    """Write JSON so that a reader (or a later resume) sees the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)

    def dump(f):
        json.dump(value, f, indent=2, default=str)
        f.write("\n")

    atomic_write(path, dump, mode="w")
