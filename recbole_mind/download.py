"""Fetching RecBole's atomic dataset files before RecBole's ``Dataset`` looks for them.

RecBole 1.2.1's own download ends in ``torch.distributed.barrier()``, which crashes without a
process group, and waits forever on a dead network. This module does the same job with a
timeout and a progress bar: it reads RecBole's url table (or ``dataset_url`` from the config),
unpacks the zip into a temporary folder beside the target and renames it into place, so an
interrupted download never leaves a half-written dataset folder.
"""

import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import recbole
import yaml
from tqdm import tqdm

from recbole_mind.errors import UserError

ATOMIC_SUFFIXES = (".inter", ".user", ".item", ".kg", ".link", ".net")
_CHUNK = 1 << 20


def recbole_url_table():
    """RecBole's own {dataset name: zip url} table (properties/dataset/url.yaml)."""
    table = Path(recbole.__file__).resolve().parent / "properties" / "dataset" / "url.yaml"
    with open(table, encoding="utf-8") as f:
        return yaml.safe_load(f)


def has_atomic_files(folder, name):
    return os.path.isfile(os.path.join(folder, f"{name}.inter"))


def ensure_dataset(name, folder, url=None, timeout=30, show_progress=True):
    """Make sure ``folder`` holds ``name``'s atomic files, downloading them if it does not.

    Args:
        name: RecBole dataset name, e.g. ``ml-1m``.
        folder: the dataset folder RecBole will read (``data_path`` joined with ``name``).
        url: zip of atomic files; default: RecBole's url table entry for ``name``.
        timeout: seconds without any data before giving up.

    Raises:
        UserError: the dataset is absent and cannot be fetched; the message says where to put it.
    """
    if has_atomic_files(folder, name):
        return folder
    if os.path.isdir(folder) and os.listdir(folder):
        raise UserError(
            f"dataset folder {folder} has no {name}.inter: put RecBole atomic files "
            f"({name}.inter and optionally {name}.user, {name}.item) there"
        )
    url = url or recbole_url_table().get(name)
    if not url:
        raise UserError(
            f"unknown dataset '{name}': no {name}.inter in {folder} and RecBole has no download "
            f"for it; put the atomic files there, or give --data_path=<folder holding {name}/>"
        )
    parent = os.path.dirname(os.path.abspath(folder)) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}-download-", dir=parent)
    try:
        archive = os.path.join(staging, "download.zip")
        _fetch(url, archive, timeout, show_progress)
        unpacked = os.path.join(staging, name)
        _unpack_atomic_files(archive, unpacked, name)
        os.replace(unpacked, folder)  # atomic on one filesystem: all files or none
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"could not download {name} from {url} ({reason}); without network access, put "
            f"RecBole's atomic files {name}.inter (and .user/.item) in {os.path.abspath(folder)}"
        ) from None
    except zipfile.BadZipFile:
        raise UserError(f"the download of {name} from {url} is not a zip file; set dataset_url "
                        f"to a zip of RecBole atomic files") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _fetch(url, path, timeout, show_progress):
    request = urllib.request.Request(url, headers={"User-Agent": "recbole-mind"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(path, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"Downloading {os.path.basename(url)}",
                  disable=not show_progress) as bar:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))


def _unpack_atomic_files(archive, target, name):
    """Extract the zip's atomic files into ``target`` as ``name``.<suffix>.

    RecBole's zips hold ``<Basename>.inter`` etc. at the top or inside one folder; RecBole
    renames them to the dataset's name, and so does this.
    """
    os.makedirs(target)
    found = False
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            base, suffix = os.path.splitext(os.path.basename(member.filename))
            if member.is_dir() or suffix not in ATOMIC_SUFFIXES or not base:
                continue
            with zf.open(member) as src, open(os.path.join(target, name + suffix), "wb") as dst:
                shutil.copyfileobj(src, dst)
            found = found or suffix == ".inter"
    if not found:
        raise UserError(f"the downloaded archive for {name} has no .inter file")
