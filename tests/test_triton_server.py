"""A real Triton server: `edgeiad serve` (PyTriton's tritonserver on 127.0.0.1, stopped by the test) serves two
artifacts with dynamic batching on and off, and RemoteDetector over HTTP and gRPC must equal a local Detector.

Needs edgeiad[serve] with numpy<2 (PyTriton 0.7's Triton 2.51 Python backend returns empty tensors with
numpy 2), so CI runs this module in its serving environment (.ci/run) and skips it elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="needs edgeiad[serve] (nvidia-pytriton); .ci/run's serving stage has it")
pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[http,grpc]")
if int(np.__version__.split(".")[0]) >= 2:
    pytest.skip("PyTriton 0.7's Python backend needs numpy<2: run in the serving env", allow_module_level=True)

from edgeiad_runtime import Detector, RemoteDetector  # noqa: E402
from edgeiad_runtime.errors import ArtifactError, ConfigError  # noqa: E402

from edgeiad.cli import main  # noqa: E402

from .conftest import make_mvtec  # noqa: E402
from .runtime.conftest import build_artifact  # noqa: E402

START_TIMEOUT_S = 120
FRAMES = [
    np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    for seed, shape in enumerate([(48, 64, 3), (32, 32, 3), (20, 70, 3), (64, 48, 3), (33, 17, 3)])
]


def _free_ports() -> int:
    """A port P with P+1 and P+2 free too (HTTP, gRPC, metrics)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65000 and all(_is_free(port + offset) for offset in (1, 2)):
            return port
    raise RuntimeError("no three consecutive free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`edgeiad serve` of a baked and a sidecar artifact, batching on and off, a 20 ms batching window."""
    root = tmp_path_factory.mktemp("served")
    artifacts = {
        "tiny": build_artifact(root / "tiny", batch_max=8),
        "tiny-sidecar": build_artifact(root / "tiny-sidecar", stats="sidecar", stats_dtype="fp16"),
    }
    profile = root / "test-batching.toml"
    profile.write_text("preferred_batch = [4, 8]\nmax_queue_delay_us = 20000\n")
    port = _free_ports()
    command = [sys.executable, "-m", "edgeiad", "serve", *map(str, artifacts.values()), "--port", str(port)]
    command += ["--batching", "both", "--profile", str(profile), "--threads", "1"]
    log = open(root / "serve.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    http = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        if _get(f"{http}/v2/models/tiny-sidecar-nobatch.manifest/ready")[0] == 200:  # the last model bound
            break
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"edgeiad serve did not come up: {(root / 'serve.log').read_text()[-2000:]}")
    yield {"http": http, "grpc": f"grpc://127.0.0.1:{port + 1}", "metrics": port + 2, "artifacts": artifacts}
    process.send_signal(signal.SIGTERM)  # as systemd would: the server must stop cleanly and in bounded time
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("edgeiad serve ignored SIGTERM for 60 s")
    log.close()
    assert code == 0, (root / "serve.log").read_text()[-2000:]


def assert_same(remote: list, local: list) -> None:
    assert len(remote) == len(local)
    for a, b in zip(remote, local):
        assert (a.raw_score, a.score, a.is_anomalous) == (b.raw_score, b.score, b.is_anomalous)
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
        np.testing.assert_array_equal(a.raw_map, b.raw_map)
        np.testing.assert_array_equal(a.mask, b.mask)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["tiny", "tiny-nobatch", "tiny-sidecar"])
def test_remote_results_equal_local_results(server, protocol, model):
    artifact = server["artifacts"][model.removesuffix("-nobatch")]
    with Detector.load(artifact, threads=1) as local, RemoteDetector(server[protocol], model) as remote:
        assert remote.manifest == local.manifest and remote.backend_name == "triton"
        assert_same(remote.predict_batch(FRAMES), local.predict_batch(FRAMES))
        assert_same([remote.predict(FRAMES[0], color_order="RGB")], [local.predict(FRAMES[0], color_order="RGB")])


def _metric(text: str, name: str, model: str) -> float:
    prefix = f'{name}{{model="{model}",version="1"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix) :])


@pytest.mark.parametrize(("model", "batched"), [("tiny", True), ("tiny-nobatch", False)])
def test_concurrent_cameras_are_batched_only_with_dynamic_batching_and_stay_exact(server, model, batched):
    metrics_url = f"http://127.0.0.1:{server['metrics']}/metrics"
    before = _get(metrics_url)[1]
    results, start = {}, threading.Barrier(8)
    with RemoteDetector(server["http"], model) as remote, Detector.load(server["artifacts"]["tiny"]) as local:

        def camera(index: int) -> None:
            start.wait()  # all eight at once, inside the 20 ms batching window
            results[index] = remote.predict(FRAMES[index % len(FRAMES)])

        threads = [threading.Thread(target=camera, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert_same([results[i] for i in range(8)], [local.predict(FRAMES[i % len(FRAMES)]) for i in range(8)])
    after = _get(metrics_url)[1]
    requests = _metric(after, "nv_inference_count", model) - _metric(before, "nv_inference_count", model)
    executions = _metric(after, "nv_inference_exec_count", model) - _metric(before, "nv_inference_exec_count", model)
    assert requests == 8
    assert (executions < requests) if batched else (executions == requests)


def test_health_and_metrics_endpoints_answer(server):
    assert _get(f"{server['http']}/v2/health/ready")[0] == 200
    status, text = _get(f"http://127.0.0.1:{server['metrics']}/metrics")
    assert status == 200 and 'nv_inference_request_success{model="tiny",version="1"}' in text


def test_a_tampered_local_manifest_is_refused(server, tmp_path):
    manifest = json.loads((server["artifacts"]["tiny"] / "manifest.json").read_text())
    manifest["thresholds"]["image"] = 99.0  # an edited threshold without re-signing the digest
    (tmp_path / "edgeiad.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not match its integrity digest"):
        RemoteDetector(server["grpc"], "tiny", manifest=tmp_path / "edgeiad.json")


def _scores(output: str) -> list[float]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line["raw_score"] for line in lines if "raw_score" in line]


def test_watch_with_a_server_scores_like_watch_with_the_artifact(server, tmp_path, capsys):
    import cv2

    for index, frame in enumerate(FRAMES):
        cv2.imwrite(str(tmp_path / f"{index}.png"), frame)
    artifact = server["artifacts"]["tiny"]
    for args in ([str(artifact)], ["tiny", "--server", server["grpc"]], [str(artifact), "--server", server["http"]]):
        with pytest.raises(SystemExit) as done:
            main(["watch", *args, "--source", str(tmp_path)])
        assert done.value.code == 0
        scores = _scores(capsys.readouterr().out)
        assert len(scores) == len(FRAMES)
        if args[1:2] == []:
            expected = scores
        assert scores == expected


_REPOSITORY_SERVER = """
import sys, time
from pathlib import Path
from edgeiad.serving.serve import check_environment
check_environment()
from pytriton.triton import Triton, TritonConfig
port = int(sys.argv[2])
config = TritonConfig(model_repository=Path(sys.argv[1]), http_address="127.0.0.1", http_port=port,
    grpc_address="127.0.0.1", grpc_port=port + 1, metrics_address="127.0.0.1", metrics_port=port + 2,
    exit_timeout_secs=5)
with Triton(config=config) as triton:
    triton.run()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def test_a_frames_repository_loads_in_a_real_triton_and_equals_local(tmp_path):
    from edgeiad.serving import Settings, write_repository

    artifact = build_artifact(tmp_path / "tiny", stats="sidecar")
    repository = tmp_path / "repo"
    write_repository(artifact, repository, name="tiny-frames", frames=True, settings=Settings(threads=1))
    port = _free_ports()
    command = [sys.executable, "-c", _REPOSITORY_SERVER, str(repository), str(port)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and _get(f"http://127.0.0.1:{port}/v2/models/tiny-frames/ready")[0] != 200:
            assert process.poll() is None, process.stdout.read().decode()[-2000:]
            time.sleep(0.5)
        frames = [FRAMES[0], FRAMES[0], FRAMES[1]]  # two sizes: the model batches equal ones
        with RemoteDetector(f"grpc://127.0.0.1:{port + 1}", "tiny-frames") as remote, Detector.load(artifact) as local:
            assert_same(remote.predict_batch(frames, color_order="RGB"), local.predict_batch(frames, color_order="RGB"))
            with pytest.raises(ConfigError, match="takes raw frames"):
                remote.infer(np.zeros((1, 3, 32, 32), np.float32))
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_bench_server_measures_clients_with_batching_on_and_off(server, tmp_path, capsys):
    data = make_mvtec(tmp_path / "data", n_train=4, n_good=2, n_bad=2)
    out = tmp_path / "bench"
    args = ["bench", "--server", server["http"], "--models", "tiny", "--clients", "1,3", "--iters", "6"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--warmup", "1", "--data", str(data), "--out", str(out)])
    assert done.value.code == 0, capsys.readouterr().err
    cases = json.loads((out / "results.json").read_text())["cases"]
    found = {(c["served_as"], c["clients"], c["dynamic_batching"], c["status"]) for c in cases}
    assert found == {(m, n, m == "tiny", "ok") for m in ("tiny", "tiny-nobatch") for n in (1, 3)}
    assert all(c["requests"] >= 6 and c["throughput_ips"] > 0 and c["latency"]["p95_ms"] > 0 for c in cases)
    printed = capsys.readouterr().out
    assert (out / "report.html").is_file() and "3 clients, batching" in (out / "report.html").read_text()
    rows = [line.split() for line in printed.splitlines() if line.strip().startswith("tiny")]
    assert [row[:3] for row in rows] == [
        ["tiny", "on", "1"],
        ["tiny", "on", "3"],
        ["tiny-nobatch", "off", "1"],
        ["tiny-nobatch", "off", "3"],
    ]
