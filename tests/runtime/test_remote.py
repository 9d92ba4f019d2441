"""RemoteDetector without a server: URL parsing, the served-model check, a clear error when the server is down,
and tritonclient staying optional (the real-server tests are in tests/test_triton_server.py)."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from edgeiad_runtime.errors import ConfigError, MissingExtraError, ServerError, ServerUnavailableError
from edgeiad_runtime.remote import check_served_model, parse_server_url

from .conftest import make_manifest

FILES = {"model": "model.onnx", "onnx": "model.onnx", "stats": None}
MANIFEST = make_manifest("onnx", "batch", 8, "baked", "fp32", FILES, True, None, False, "RGB")
SERVED = {  # what Triton reports for a repository written by `edgeiad triton` (HTTP JSON)
    "max_batch_size": 8,
    "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}],
    "output": [
        {"name": "anomaly_map", "data_type": "TYPE_FP32", "dims": [1, 32, 32]},
        {"name": "pred_score", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}},
    ],
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", ("http", "127.0.0.1:8000")),
        ("grpc://box", ("grpc", "box:8001")),
        ("box:9000", ("http", "box:9000")),
        ("http://[::1]:8000/", ("http", "[::1]:8000")),
    ],
)
def test_server_urls_name_protocol_and_address(url, expected):
    assert parse_server_url(url) == expected


@pytest.mark.parametrize("url", ["", "ftp://box:21", "http://box:99999", "http://box:8000/v2", None])
def test_bad_server_urls_are_refused_with_the_form_to_use(url):
    with pytest.raises(ConfigError, match="HOST:PORT|port"):
        parse_server_url(url)


def test_served_model_must_match_the_manifest():
    check_served_model(SERVED, MANIFEST, "server")
    pytriton = copy.deepcopy(SERVED)
    del pytriton["output"][1]["reshape"]  # PyTriton declares the score as [1] per image
    check_served_model(pytriton, MANIFEST, "server")
    other = copy.deepcopy(SERVED)
    other["input"][0]["dims"] = [3, 64, 64]
    with pytest.raises(ServerError, match=r"serves image as TYPE_FP32 \[3, 64, 64\], the manifest says"):
        check_served_model(other, MANIFEST, "server")
    missing = copy.deepcopy(SERVED)
    missing["output"].pop()
    with pytest.raises(ServerError, match="no tensor 'pred_score'"):
        check_served_model(missing, MANIFEST, "server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_server_that_is_down_is_one_clear_error_after_the_retries(scheme):
    pytest.importorskip(f"tritonclient.{scheme}", reason="needs edgeiad-runtime[triton]")
    from edgeiad_runtime import RemoteDetector

    started = time.perf_counter()
    with pytest.raises(ServerUnavailableError, match=r"\(2 tries, 1 s timeout\): start the server") as caught:
        RemoteDetector(f"{scheme}://127.0.0.1:{_free_port()}", "padim", timeout=1.0, retries=1)
    assert isinstance(caught.value, ConnectionError)
    assert time.perf_counter() - started < 10


_NO_CLIENT = textwrap.dedent(
    """
    import sys
    import edgeiad_runtime
    from edgeiad_runtime.remote import RemoteDetector
    assert "tritonclient" not in sys.modules and "torch" not in sys.modules
    sys.modules["tritonclient.http"] = None  # as if the extra were not installed
    try:
        RemoteDetector("http://127.0.0.1:1", "padim")
    except edgeiad_runtime.MissingExtraError as exc:
        print(exc)
    """
)


def test_tritonclient_is_optional_and_its_absence_names_the_extra():
    done = subprocess.run([sys.executable, "-c", _NO_CLIENT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'edgeiad-runtime[triton]'" in done.stdout
    assert issubclass(MissingExtraError, ImportError)


def test_a_manifest_that_is_not_json_is_an_artifact_error(tmp_path):
    from edgeiad_runtime.errors import ArtifactError
    from edgeiad_runtime.remote import read_local_manifest

    (tmp_path / "edgeiad.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_local_manifest(tmp_path)
    (tmp_path / "edgeiad.json").write_text(json.dumps(MANIFEST))
    assert read_local_manifest(tmp_path / "edgeiad.json")["model"]["name"] == "tiny"
