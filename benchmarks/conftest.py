"""Benchmark suites: a tiny case of each runs in CI (harness correctness); EDGEIAD_BENCH_FULL=1 runs the real sizes.

Run by hand:  EDGEIAD_BENCH_FULL=1 pytest benchmarks --benchmark-enable -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

FULL = os.environ.get("EDGEIAD_BENCH_FULL") == "1"

full_only = pytest.mark.skipif(not FULL, reason="full-size benchmark: set EDGEIAD_BENCH_FULL=1 (minutes, GBs)")


def run_isolated(code: str, timeout: int = 1800) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object. Adds that process's peak RSS (MB)."""
    wrapper = (
        "import json, resource, sys\n"
        f"{code}\n"
        "result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(result))\n"
    )
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"benchmark subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


from tests.conftest import synthetic_mvtec  # noqa: E402,F401  (shared fixture: small MVTec-layout set)
