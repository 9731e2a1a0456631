"""Wire-layer speed: the ternary codecs against the memory limit, and whole packets per second.

    .venv/bin/python benches/bench_wire.py [--quick] [--out PATH] [--cpu N] [--repeats R]

What it measures, in one process pinned to one core:
- pack and unpack of every codec (meshnode.wire.trits) at D = 4096 and 10000, N = 1 and 1024, in
  trits per second, each next to `numpy.copyto` of an int8 array of the same shape (the memory
  limit) timed in the same rounds. Targets: dense2 >= 20% of copy, base3 and sparse >= 5%.
- encode / decode / decode+verify of a Vectors packet holding one 4096-d vector (auto encoding),
  signed and unsigned. Target: decode + verify of the signed packet >= 10,000 packets/s.

Rounds are interleaved: each repeat times the copy and every codec case of a shape back to back, so a
load change on the machine hits the baseline and the codecs alike. Figures are the median (and min)
over the repeats; the JSON (default benches/results/wire.json) has everything, with machine info.
`--quick` is a smoke run (fewer repeats, N = 64 instead of 1024, short timing blocks): its figures
are not the benchmark and its JSON says so.
"""

from __future__ import annotations

import os

# Before numpy is imported: one thread everywhere, so "one core" means one core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from meshnode.wire import trits  # noqa: E402
from meshnode.wire.packet import (  # noqa: E402
    Signer, VectorBlock, Vectors, decode_packet, encode_packet, verify_packet,
)
from meshnode.wire.trits import Encoding  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "wire.json"
DIMS = (4096, 10000)
SEED = 20240611

# (label, encoding, share of zeros, target as a fraction of copy bandwidth). dense2/base3 use HDC-like
# data (30% zeros); sparse is measured where it is the natural choice (95%) and at a denser 70%.
CODEC_CASES = (
    ("dense2", Encoding.DENSE2, 0.30, 0.20),
    ("base3", Encoding.BASE3, 0.30, 0.05),
    ("sparse", Encoding.SPARSE, 0.70, 0.05),
    ("sparse", Encoding.SPARSE, 0.95, 0.05),
)
PACKET_TARGET_PER_S = 10_000.0  # decode + verify of a signed packet with one 4096-d vector


@dataclass
class Timing:
    """Seconds per call over the repeats."""

    per_call_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.per_call_s)

    @property
    def best(self) -> float:
        return min(self.per_call_s)


class Timer:
    """Times `fn` in blocks of `loops` calls; `loops` is calibrated so one block lasts `block_s`."""

    def __init__(self, fn: Callable[[], object], block_s: float) -> None:
        self.fn = fn
        for _ in range(3):  # warm-up: caches, allocator, lazy numpy paths
            fn()
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        self.loops = max(1, int(block_s / one))
        self.timing = Timing()

    def round(self) -> None:
        fn, loops = self.fn, self.loops
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        self.timing.per_call_s.append((time.perf_counter() - t0) / loops)


def pin_to_one_core(cpu: int | None) -> int:
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


def machine_info(cpu: int) -> dict[str, object]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model, "logical_cpus": os.cpu_count(), "pinned_cpu": cpu,
        "platform": platform.platform(), "python": sys.version.split()[0], "numpy": np.__version__,
        "byteorder": sys.byteorder, "loadavg_start": list(os.getloadavg()),
    }


def trit_batch(rng: np.random.Generator, count: int, dim: int, zeros: float) -> np.ndarray:
    t = rng.choice(np.array([-1, 1], np.int8), size=(count, dim))
    t[rng.random((count, dim)) < zeros] = 0
    return t


def bench_codecs(counts: tuple[int, ...], repeats: int, block_s: float) -> list[dict[str, object]]:
    rng = np.random.default_rng(SEED)
    rows: list[dict[str, object]] = []
    for dim in DIMS:
        for count in counts:
            src = trit_batch(rng, count, dim, 0.3)
            dst = np.empty_like(src)
            copy = Timer(lambda: np.copyto(dst, src), block_s)
            cases = []
            for label, enc, zeros, target in CODEC_CASES:
                x = trit_batch(rng, count, dim, zeros)
                used, data = trits.pack(x, enc)
                assert used is enc and np.array_equal(trits.unpack(data, dim, count, enc), x)
                for op, fn in (("pack", lambda x=x, enc=enc: trits.pack(x, enc)),
                               ("unpack", lambda data=data, enc=enc: trits.unpack(data, dim, count, enc))):
                    cases.append((label, enc, zeros, target, op, len(data), Timer(fn, block_s)))
            for _ in range(repeats):
                copy.round()
                for case in cases:
                    case[-1].round()
            n_trits = count * dim
            copy_rate = n_trits / copy.timing.median
            rows.append({"case": "copy", "op": "numpy.copyto int8", "dim": dim, "count": count,
                         "median_s": copy.timing.median, "min_s": copy.timing.best,
                         "trits_per_s": copy_rate, "repeats": repeats, "loops": copy.loops})
            for label, enc, zeros, target, op, nbytes, timer in cases:
                rate = n_trits / timer.timing.median
                ratio = rate / copy_rate
                rows.append({
                    "case": label, "op": op, "encoding": enc.name.lower(), "dim": dim, "count": count,
                    "zeros": zeros, "packed_bytes": nbytes, "bits_per_trit": 8 * nbytes / n_trits,
                    "median_s": timer.timing.median, "min_s": timer.timing.best,
                    "trits_per_s": rate, "trits_per_s_best": n_trits / timer.timing.best,
                    "ratio_to_copy": ratio, "target_ratio": target, "met": ratio >= target,
                    "repeats": repeats, "loops": timer.loops,
                })
    return rows


def bench_packets(repeats: int, block_s: float) -> list[dict[str, object]]:
    rng = np.random.default_rng(SEED + 1)
    signer = Signer.from_seed(bytes(range(32)))
    block = VectorBlock.from_trits(trit_batch(rng, 1, 4096, 0.3)[0], b"bench-space")
    body = Vectors(topic="bench", vectors=block)
    signed = encode_packet(body, signer)
    unsigned = encode_packet(body, None, origin=signer.node_id)
    key = signer.public_key

    def decode_verify() -> None:
        verify_packet(decode_packet(signed), key)

    cases = {
        "encode unsigned": Timer(lambda: encode_packet(body, None, origin=signer.node_id), block_s),
        "encode signed": Timer(lambda: encode_packet(body, signer), block_s),
        "decode unsigned": Timer(lambda: decode_packet(unsigned), block_s),
        "decode signed (no verify)": Timer(lambda: decode_packet(signed), block_s),
        "decode + verify signed": Timer(decode_verify, block_s),
    }
    for _ in range(repeats):
        for timer in cases.values():
            timer.round()
    rows: list[dict[str, object]] = []
    for name, timer in cases.items():
        rate = 1.0 / timer.timing.median
        row: dict[str, object] = {
            "case": "packet", "op": name, "dim": 4096, "count": 1, "encoding": block.encoding.name.lower(),
            "packet_bytes": len(signed if "signed" in name and "unsigned" not in name else unsigned),
            "median_s": timer.timing.median, "min_s": timer.timing.best,
            "packets_per_s": rate, "packets_per_s_best": 1.0 / timer.timing.best,
            "repeats": repeats, "loops": timer.loops,
        }
        if name == "decode + verify signed":
            row |= {"target_per_s": PACKET_TARGET_PER_S, "met": rate >= PACKET_TARGET_PER_S}
        rows.append(row)
    return rows


def print_table(codecs: list[dict[str, object]], packets: list[dict[str, object]]) -> None:
    print(f"{'case':<8} {'op':<7} {'D':>6} {'N':>5} {'zeros':>5} {'bits/t':>6} {'Gtrit/s':>8} "
          f"{'vs copy':>8} {'target':>7}  result")
    for r in codecs:
        rate = f"{r['trits_per_s'] / 1e9:8.3f}"
        if r["case"] == "copy":
            print(f"{'copy':<8} {'':<7} {r['dim']:>6} {r['count']:>5} {'':>5} {'':>6} {rate} {'100.0%':>8}")
            continue
        print(f"{r['case']:<8} {r['op']:<7} {r['dim']:>6} {r['count']:>5} {r['zeros']:>5.2f} "
              f"{r['bits_per_trit']:>6.2f} {rate} {100 * r['ratio_to_copy']:>7.1f}% {100 * r['target_ratio']:>6.0f}%  "
              f"{'met' if r['met'] else 'MISSED'}")
    print()
    print(f"{'packet (one 4096-d vector)':<28} {'bytes':>6} {'packets/s':>10} {'best':>10}  target")
    for r in packets:
        target = f"{r['target_per_s']:,.0f} {'met' if r['met'] else 'MISSED'}" if "target_per_s" in r else ""
        print(f"{r['op']:<28} {r['packet_bytes']:>6} {r['packets_per_s']:>10,.0f} {r['packets_per_s_best']:>10,.0f}  "
              f"{target}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: not the benchmark")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last allowed one)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 9; quick 3)")
    args = ap.parse_args(argv)

    repeats = args.repeats or (3 if args.quick else 9)
    if not args.quick and repeats < 7:
        ap.error("a full run needs --repeats >= 7")
    block_s = 0.0005 if args.quick else 0.02
    counts = (1, 64) if args.quick else (1, 1024)

    cpu = pin_to_one_core(args.cpu)
    info = machine_info(cpu)
    started = time.time()
    codecs = bench_codecs(counts, repeats, block_s)
    packets = bench_packets(repeats, block_s)
    info["loadavg_end"] = list(os.getloadavg())

    targets = [r for r in codecs + packets if "met" in r]
    result = {
        "bench": "wire", "mode": "quick" if args.quick else "full", "repeats": repeats,
        "timing_block_s": block_s, "seed": SEED, "started_unix": started,
        "duration_s": time.time() - started, "machine": info,
        "targets": {"dense2_vs_copy": 0.20, "base3_vs_copy": 0.05, "sparse_vs_copy": 0.05,
                    "signed_packet_decode_verify_per_s": PACKET_TARGET_PER_S},
        "summary": {"met": sum(bool(r["met"]) for r in targets), "missed": sum(not r["met"] for r in targets)},
        "codecs": codecs, "packets": packets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"wire bench ({result['mode']}), pinned to cpu {cpu}, {repeats} repeats, medians; "
          f"load average {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}")
    print_table(codecs, packets)
    print(f"\ntargets met {result['summary']['met']}, missed {result['summary']['missed']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
