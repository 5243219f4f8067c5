"""The ml-1m download path, against a local HTTP server on 127.0.0.1 serving a RecBole-style zip."""

import http.server
import io
import os
import socket
import threading
import time
import zipfile

import pytest

from recbole_mind import download
from recbole_mind.cli import main
from recbole_mind.download import ensure_dataset
from recbole_mind.errors import UserError

from conftest import write_tiny_dataset


def _recbole_style_zip(tmp_path):
    """A zip shaped like RecBole's: ml-1m/ml-1m.inter etc. (RecBole renames by dataset name)."""
    root = write_tiny_dataset(str(tmp_path / "src"), name="ml-1m")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for suffix in ("inter", "user", "item"):
            zf.write(os.path.join(root, "ml-1m", f"ml-1m.{suffix}"), f"ml-1m/ml-1m.{suffix}")
        zf.writestr("ml-1m/README.txt", "not an atomic file")
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path):
    """Serves /ml-1m.zip; /hang accepts and never answers (a dead network); others 404."""
    payload = _recbole_style_zip(tmp_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/hang":
                time.sleep(5)
                return
            if self.path != "/ml-1m.zip":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_from_recbole_url_table(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "recbole_url_table", lambda: {"ml-1m": f"{server}/ml-1m.zip"})
    folder = tmp_path / "dataset" / "ml-1m"
    ensure_dataset("ml-1m", str(folder), show_progress=False)
    assert sorted(os.listdir(folder)) == ["ml-1m.inter", "ml-1m.item", "ml-1m.user"]
    assert [p for p in os.listdir(tmp_path / "dataset") if p != "ml-1m"] == []  # no staging left


def test_recbole_url_table_knows_ml_1m():
    assert download.recbole_url_table()["ml-1m"].endswith(".zip")


def test_cli_trains_on_a_freshly_downloaded_ml_1m(server, tmp_path, capsys):
    code = main([
        "--dataset", "ml-1m", f"--data_path={tmp_path / 'dataset'}", f"--dataset_url={server}/ml-1m.zip",
        "--epochs=1", "--topk=[5,10]", "--MAX_ITEM_LIST_LENGTH=10", "--embedding_size=8", "--state=ERROR",
        f"--checkpoint_dir={tmp_path / 'saved'}",
    ])
    assert code == 0
    assert "test:" in capsys.readouterr().out
    assert (tmp_path / "dataset" / "ml-1m" / "ml-1m.inter").is_file()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_fast_with_one_line_naming_the_folder(tmp_path, capsys):
    started = time.monotonic()
    code = main(["--dataset", "ml-1m", f"--data_path={tmp_path}",
                 f"--dataset_url=http://127.0.0.1:{_closed_port()}/ml-1m.zip", "--state=ERROR"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: could not download ml-1m") and str(tmp_path / "ml-1m") in err[0]
    assert time.monotonic() - started < 60
    assert not (tmp_path / "ml-1m").exists()


def test_stalled_server_times_out(server, tmp_path):
    started = time.monotonic()
    with pytest.raises(UserError, match="could not download"):
        ensure_dataset("ml-1m", str(tmp_path / "ml-1m"), url=f"{server}/hang", timeout=1, show_progress=False)
    assert time.monotonic() - started < 5


def test_unknown_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'no-such-data'"):
        ensure_dataset("no-such-data", str(tmp_path / "no-such-data"))
