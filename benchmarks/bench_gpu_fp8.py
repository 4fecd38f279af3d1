"""fp8_quant static tables beside float32 ones: find rate, memory, error (one device call).

    PYTHONPATH=src python3 benchmarks/bench_gpu_fp8.py [--quick]

Static tables of dim 128 (1M and 4M rows, all on the device; 1M rows pagelocked in pinned host
memory), all hits, 1,048,576 uniform random keys of the table per call, 8 rotating key sets;
triton.testing.do_bench (CUDA events, L2 flushed before each call, median). Each fp8 row is
checked against the float32 table's answer (|error| <= 2^-4 of the row's largest magnitude).
Results: benchmarks/results/fp8-gpu.{json,md}. `--quick` runs tiny sizes (also in the CPU
interpreter: TRITON_INTERPRET=1) to check the script.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_results  # noqa: E402

from hps.cache.gpu_static import GpuStaticTable, interpreting  # noqa: E402


def bench(fns, quick: bool) -> float:
    """Median ms of one call, rotating through `fns`."""
    if quick:
        t0 = time.perf_counter()
        for f in fns:
            f()
        return (time.perf_counter() - t0) * 1e3 / len(fns)
    import triton

    i = [0]

    def f():
        fns[i[0] % len(fns)]()
        i[0] += 1
    return triton.testing.do_bench(f, warmup=50, rep=300, return_mode="median")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    dev = "cpu" if interpreting() else "cuda:0"
    dim = 128
    batch = 1024 if args.quick else 1 << 20
    sizes = [(4096, False), (4096, True)] if args.quick else [(1 << 20, False), (1 << 22, False), (1 << 20, True)]
    gen = torch.Generator(device=dev)
    gen.manual_seed(7)
    rows = []
    for n, pagelock in sizes:
        keys = torch.unique(torch.randint(-(2**62), 2**62, (n + 4096,), device=dev, generator=gen))[:n]
        keys = keys[torch.randperm(keys.shape[0], device=dev, generator=gen)]
        vecs = torch.randn((n, dim), device=dev, generator=gen)
        hk, hv = keys.cpu().numpy(), vecs.cpu().numpy()
        sets = [keys[torch.randint(n, (batch,), device=dev, generator=gen)] for _ in range(8)]
        ref = None
        line = {}
        for fp8 in (False, True):
            t0 = time.perf_counter()
            table = GpuStaticTable(hk, hv, dev, pagelock=pagelock, fp8_quant=fp8)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            build = time.perf_counter() - t0
            out, found = table.find(sets[0])
            assert bool(found.all())
            if ref is None:
                ref = out.clone()
            else:
                amax = ref.abs().amax(dim=1, keepdim=True)
                err = ((out - ref).abs() / amax).max().item()
                assert err <= 2.0**-4, err
                line["max err / row amax"] = err
            ms = bench([lambda q=q, t=table: t.find(q) for q in sets], args.quick)
            tag = "fp8" if fp8 else "fp32"
            line.update({f"{tag} ms/call": ms, f"{tag} G keys/s": batch / ms / 1e6,
                         f"{tag} device MiB": table.memory_bytes() / 2**20,
                         f"{tag} pinned host MiB": table.host_bytes() / 2**20, f"{tag} load s": build})
            table.close()
            del table, out, found
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
        rows.append({"rows": n, "rows in": "pinned host (pagelock)" if pagelock else "device", "dim": dim,
                     "fp32 G keys/s": line["fp32 G keys/s"], "fp8 G keys/s": line["fp8 G keys/s"],
                     "fp8 / fp32": line["fp8 G keys/s"] / line["fp32 G keys/s"],
                     "fp32 ms/call": line["fp32 ms/call"], "fp8 ms/call": line["fp8 ms/call"],
                     "fp32 MiB": line["fp32 device MiB"] + line["fp32 pinned host MiB"],
                     "fp8 MiB": line["fp8 device MiB"] + line["fp8 pinned host MiB"],
                     "fp32 load s": line["fp32 load s"], "fp8 load s": line["fp8 load s"],
                     "max err / row amax": line["max err / row amax"]})
        print(rows[-1], flush=True)
        del keys, vecs, sets, ref
    name = "cpu interpreter (script check only)" if dev == "cpu" else torch.cuda.get_device_name(0)
    write_results("fp8-gpu" if not args.quick else "fp8-quick", "gpu_fp8_static", rows,
                  f"{name}: static tables, float32 vs fp8_quant (e4m3 row + float32 scale), dim {dim}, all hits, "
                  f"{batch:,} uniform keys per call, 8 rotating sets, do_bench median (L2 flushed). MiB: the "
                  "table's rows + scales + keys + index (pagelock: rows in pinned host memory). Load s: "
                  "building the table from host numpy arrays (fp8: quantised on the device in chunks).")


if __name__ == "__main__":
    main()
