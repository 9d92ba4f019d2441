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
    # VmHWM is this process's own high-water mark; ru_maxrss would also count the parent's pages at fork.
    wrapper = (
        "import json, resource, sys\n"
        "def peak_rss_mb():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1]) / 1024\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        f"{code}\n"
        "result['peak_rss_mb'] = peak_rss_mb()\n"
        "print(json.dumps(result))\n"
    )
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"benchmark subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


from tests.conftest import synthetic_mvtec  # noqa: E402,F401  (shared fixture: small MVTec-layout set)
