"""The cifar10 source: genuine-format archives, MD5 first, a restricted unpickler, download once."""

import functools
import http.server
import pickle
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from cifar_archive import LABEL_NAMES, make_archive, py2_pickle
from cifarflow import cifar10
from cifarflow.errors import PipelineError


def test_reads_genuine_format_archive(tmp_path):
    md5, train_x, train_y, test_x, test_y = make_archive(tmp_path / "a.tar.gz", per_batch=30)
    raw = cifar10.read_archive(tmp_path / "a.tar.gz", md5)
    assert raw.class_names == LABEL_NAMES
    assert raw.train.images.shape == (150, 32, 32, 3) and raw.train.images.dtype == np.uint8
    np.testing.assert_array_equal(raw.train.images, train_x)  # CHW planes -> HWC, in batch order
    np.testing.assert_array_equal(raw.train.labels, train_y)
    np.testing.assert_array_equal(raw.test.images, test_x)
    np.testing.assert_array_equal(raw.test.labels, test_y)
    assert raw.source_checksum == f"md5:{md5}"


def test_checksum_mismatch_is_refused_before_reading(tmp_path):
    make_archive(tmp_path / "a.tar.gz")
    with pytest.raises(PipelineError, match=r"checksum mismatch .*Delete the file and rerun"):
        cifar10.read_archive(tmp_path / "a.tar.gz", "0" * 32)


def test_short_official_archive_is_called_an_interrupted_download(tmp_path):
    (tmp_path / "a.tar.gz").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    with pytest.raises(PipelineError, match=r"official archive is 170,498,071: an interrupted download"):
        cifar10.verify_md5(tmp_path / "a.tar.gz", cifar10.OFFICIAL_MD5)


def test_truncated_archive_is_named(tmp_path):
    make_archive(tmp_path / "a.tar.gz", per_batch=200)
    data = (tmp_path / "a.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    md5 = cifar10.md5_file(tmp_path / "cut.tar.gz")  # the checksum made to match: reading must still fail
    with pytest.raises(PipelineError, match=r"cut\.tar\.gz is truncated or corrupt"):
        cifar10.read_archive(tmp_path / "cut.tar.gz", md5)


def test_missing_member_is_named(tmp_path):
    md5, *_ = make_archive(tmp_path / "a.tar.gz", members={"data_batch_3": b""})
    with pytest.raises(PipelineError, match=r"data_batch_3: not a CIFAR-10 batch"):
        cifar10.read_archive(tmp_path / "a.tar.gz", md5)


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    target = tmp_path / "pwned"
    md5, *_ = make_archive(
        tmp_path / "a.tar.gz", members={"test_batch": pickle.dumps(_Exploit(target), protocol=2)}
    )
    with pytest.raises(PipelineError, match=r"test_batch: .*forbidden global (builtins|io)\.open"):
        cifar10.read_archive(tmp_path / "a.tar.gz", md5)
    assert not target.exists()


def test_batch_with_wrong_shapes_is_refused(tmp_path):
    bad = py2_pickle({b"data": np.zeros((4, 100), dtype=np.uint8), b"labels": [0, 1, 2, 3]})
    md5, *_ = make_archive(tmp_path / "a.tar.gz", members={"data_batch_1": bad})
    with pytest.raises(PipelineError, match=r"data_batch_1: b'data' is not a uint8 \[N, 3072\] array"):
        cifar10.read_archive(tmp_path / "a.tar.gz", md5)


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www; yields (base_url, request log)."""
    www = tmp_path / "www"
    www.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www, requests
    finally:
        server.shutdown()
        server.server_close()


def test_download_once_and_verify(tmp_path, http_server):
    base, www, requests = http_server
    md5, *_ = make_archive(www / "cifar-10-python.tar.gz")
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    size = cifar10.download(f"{base}/cifar-10-python.tar.gz", dest, md5)
    assert size == dest.stat().st_size and cifar10.md5_file(dest) == md5
    cifar10.download(f"{base}/cifar-10-python.tar.gz", dest, md5)
    assert requests == ["/cifar-10-python.tar.gz"]  # the second call did not download again


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, http_server):
    base, www, _ = http_server
    make_archive(www / "cifar-10-python.tar.gz")
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    with pytest.raises(PipelineError, match="checksum mismatch"):
        cifar10.download(f"{base}/cifar-10-python.tar.gz", dest, "f" * 32)
    assert list(dest.parent.iterdir()) == []


def test_no_network_says_where_to_put_the_archive(tmp_path):
    with socket.socket() as sock:  # a port on loopback that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    with pytest.raises(PipelineError) as err:
        cifar10.download(
            f"http://127.0.0.1:{port}/cifar-10-python.tar.gz", dest, cifar10.OFFICIAL_MD5, timeout=5
        )
    message = str(err.value)
    assert f"place it at {dest}" in message
    assert cifar10.OFFICIAL_MD5 in message
    assert "snakemake --cores 4 --configfile config/demo.yaml" in message
    assert not dest.exists()
