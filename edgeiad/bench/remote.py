"""`edgeiad bench --server`: latency and throughput of served models under N concurrent camera clients.

Each client is a thread sending one frame per request through one shared RemoteDetector (its own connection
per thread), as cameras would; a case is (served model, clients). A model served with `edgeiad serve
--batching both` has a `-nobatch` twin, measured too, so one results.json compares dynamic batching on and off.
"""

from __future__ import annotations

import math
import threading
import time

from ..errors import EdgeiadError
from .worker import _percentiles

NO_BATCHING_SUFFIX = "-nobatch"  # kept equal to edgeiad.serving.serve's


def served_models(server: str, names: list[str]) -> list[str]:
    """The models to measure: each name, then its `-nobatch` twin where the server has one."""
    from edgeiad_runtime.remote import model_ready

    found = []
    for name in names:
        found.append(name)
        twin = name + NO_BATCHING_SUFFIX
        if not name.endswith(NO_BATCHING_SUFFIX) and model_ready(server, twin):
            found.append(twin)
    return found


def measure(detector, frames: list, clients: int, iters: int, warmup: int) -> dict:
    """`iters` timed requests (at least one per client) from `clients` threads started together."""
    per_client = max(1, math.ceil(iters / clients))
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        try:
            for i in range(warmup):
                detector.predict(frames[(index + i) % len(frames)], color_order="RGB")
        except EdgeiadError as exc:
            errors.append(str(exc))
        start.wait()
        for i in range(per_client):
            begin = time.perf_counter()
            try:
                detector.predict(frames[(index * per_client + i) % len(frames)], color_order="RGB")
            except EdgeiadError as exc:
                errors.append(str(exc))
                return
            latencies[index].append((time.perf_counter() - begin) * 1000.0)

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise EdgeiadError(f"{len(errors)} requests failed, first: {errors[0]}")
    calls = [value for values in latencies for value in values]
    return {
        "requests": len(calls),
        "latency": _percentiles(calls),
        "latencies_ms": [round(value, 3) for value in calls],
        "throughput_ips": len(calls) / wall,
        "per_image_ms": wall * 1000.0 / len(calls),  # the cost of one image at this concurrency
    }


def measure_model(server: str, served: str, frames: list, clients: list[int], iters: int, warmup: int, echo):
    """One record per client count for one served model (failed ones say why)."""
    from edgeiad_runtime import RemoteDetector

    try:
        detector = RemoteDetector(server, served)
    except EdgeiadError as exc:
        reason = str(exc)
        return [{"key": f"{served}/c{n}", "model": served, "status": "failed", "reason": reason} for n in clients]
    records = []
    with detector:
        manifest, info = detector.manifest, detector.backend_info
        for count in clients:
            record = {
                "key": f"{served}/c{count}", "model": manifest["model"]["name"], "served_as": served,
                "target": "triton", "precision": manifest["precision"], "stats": manifest["stats"]["mode"],
                "batch": 1, "threads": 1, "clients": count, "dynamic_batching": info["dynamic_batching"],
                "max_batch_size": info["max_batch_size"], "peak_rss_mb": None,
            }  # fmt: skip
            echo(f"measuring {served} with {count} client{'s' if count > 1 else ''}")
            try:
                record.update(measure(detector, frames, count, iters, warmup), status="ok")
            except EdgeiadError as exc:
                record.update(status="failed", reason=str(exc))
            records.append(record)
    return records


def bench_server(server: str, names: list[str], clients: list[int], frames: list, iters: int, warmup: int, echo):
    """The results document (same schema as a local bench) for every served model × client count."""
    from .env import environment
    from .runner import SCHEMA_VERSION

    records = []
    for served in served_models(server, names):
        records += measure_model(server, served, frames, clients, iters, warmup, echo)
    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(),
        "settings": {"server": server, "clients": clients, "iters": iters, "warmup": warmup, "frames": len(frames)},
        "fits": {},
        "cases": records,
    }
