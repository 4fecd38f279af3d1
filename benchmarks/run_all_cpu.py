"""Run every CPU benchmark in turn (`make bench`); each writes its section of benchmarks/results/*.md.

GPU benchmarks (bench_dlrm.py, bench_gpu.py, bench_gpu_lookup.py, bench_gpu_fp8.py) run on a GPU machine: see
benchmarks/gpu_notes.md. `make soak` runs bench_soak.py (10 minutes) on its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CPU_BENCHMARKS = ["bench_storage_cpu.py", "bench_lookup_cpu.py", "bench_cpu_miss_path.py", "bench_loading.py",
                  "bench_shared_hash_map.py", "bench_remote_load.py", "bench_cache_sizing.py", "bench_redis.py",
                  "bench_updates.py", "bench_triton.py", "bench_frameworks.py"]


def main() -> int:
    failed = []
    for script in CPU_BENCHMARKS:
        print(f"== {script}", flush=True)
        if subprocess.call([sys.executable, str(HERE / script), *sys.argv[1:]]) != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
