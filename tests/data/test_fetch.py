"""Fetching: the Debian route on real packages, the URL route against a local HTTP server."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from genomamba.data import read_fasta
from genomamba.data.fetch import DATASETS, FetchError, fetch, fetch_url


def test_fetch_lambda_verified_and_cached(real_data, tmp_path):
    d = real_data("lambda")
    recs = list(read_fasta(d / "lambda_virus.fa.gz"))
    assert [len(r.sequence) for r in recs] == [48502]
    # a second fetch is a no-op on a verified copy
    mtime = (d / "lambda_virus.fa.gz").stat().st_mtime
    assert fetch("lambda", d.parent, quiet=True) == d
    assert (d / "lambda_virus.fa.gz").stat().st_mtime == mtime


def test_checksum_mismatch_fails_loudly(real_data, tmp_path, monkeypatch):
    real_data("lambda")  # skips under GENOMAMBA_OFFLINE=1
    f = DATASETS["lambda"][0]
    monkeypatch.setitem(DATASETS, "lambda", [type(f)(f.package, f.member, f.dest, "0" * 64)])
    with pytest.raises(FetchError, match="sha256 .* != expected 0000"):
        fetch("lambda", tmp_path, quiet=True)
    assert not (tmp_path / "lambda" / "lambda_virus.fa.gz").exists()


def test_missing_apt_get_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg
    with pytest.raises(FetchError, match="apt-get` not found"):
        fetch("lambda", tmp_path, quiet=True)


def test_unknown_dataset():
    with pytest.raises(FetchError, match="unknown dataset"):
        fetch("mouse")


# ----------------------------------------------------------------------------- URL route
class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload; honours 'Range: bytes=N-' unless the server says not to."""

    payload = b""
    honour_range = True
    log: list = []

    def do_GET(self):  # noqa: N802
        if self.path != "/genome.fa":
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        type(self).log.append(rng)
        data, status = self.payload, 200
        if rng and self.honour_range:
            start = int(rng.split("=")[1].rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            data, status = data[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    from genomamba.data.fetch import asset_files

    payload = Path(asset_files()["lambda"]["path"]).read_bytes()  # a real genome as the file served
    handler = type("H", (_RangeHandler,), {"payload": payload, "log": [], "honour_range": True})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", handler, payload
    srv.shutdown()
    srv.server_close()


def test_url_download_and_checksum(server, tmp_path):
    base, handler, payload = server
    sha = hashlib.sha256(payload).hexdigest()
    p = fetch_url(f"{base}/genome.fa", tmp_path, sha256=sha)
    assert p.read_bytes() == payload and handler.log == [None]
    assert fetch_url(f"{base}/genome.fa", tmp_path, sha256=sha) == p  # verified copy: no request
    assert handler.log == [None]


def test_url_resume(server, tmp_path):
    base, handler, payload = server
    (tmp_path / "genome.fa.part").write_bytes(payload[:5000])  # an interrupted earlier download
    p = fetch_url(f"{base}/genome.fa", tmp_path, sha256=hashlib.sha256(payload).hexdigest())
    assert handler.log == ["bytes=5000-"]
    assert p.read_bytes() == payload and not (tmp_path / "genome.fa.part").exists()


def test_url_resume_when_server_ignores_range(server, tmp_path):
    base, handler, payload = server
    handler.honour_range = False
    (tmp_path / "genome.fa.part").write_bytes(b"garbage" * 100)
    p = fetch_url(f"{base}/genome.fa", tmp_path, sha256=hashlib.sha256(payload).hexdigest())
    assert p.read_bytes() == payload


def test_url_complete_part_file_gets_416(server, tmp_path):
    base, handler, payload = server
    (tmp_path / "genome.fa.part").write_bytes(payload)
    p = fetch_url(f"{base}/genome.fa", tmp_path, sha256=hashlib.sha256(payload).hexdigest())
    assert p.read_bytes() == payload


def test_url_bad_checksum_and_404(server, tmp_path):
    base, _, _ = server
    with pytest.raises(FetchError, match="sha256 .* != expected"):
        fetch_url(f"{base}/genome.fa", tmp_path, sha256="ab" * 32)
    assert not (tmp_path / "genome.fa").exists() and not (tmp_path / "genome.fa.part").exists()
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(f"{base}/other.fa", tmp_path)
    with pytest.raises(FetchError, match="only http"):
        fetch_url("ftp://example.org/x.fa", tmp_path)


def test_url_without_checksum_records_it(server, tmp_path):
    base, _, payload = server
    fetch_url(f"{base}/genome.fa", tmp_path)
    assert (tmp_path / "genome.fa.sha256").read_text().split()[0] == hashlib.sha256(payload).hexdigest()


def test_cli_fetch_url(server, tmp_path, capsys):
    from genomamba.commands.data import main

    base, _, payload = server
    assert main(["fetch", "url", f"{base}/genome.fa", "--dest", str(tmp_path)]) == 0
    assert (tmp_path / "genome.fa").read_bytes() == payload
    assert (
        main(["fetch", "url", f"{base}/genome.fa", "--dest", str(tmp_path / "x"), "--sha256", "00" * 32]) == 1
    )
    assert "sha256" in capsys.readouterr().err
