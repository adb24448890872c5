#!/usr/bin/env python3
"""Sums Nsight Compute's per-launch CSV (`ncu --csv --metrics gpu__time_duration.sum ...`) per
kernel name: launches, total and mean duration, share of the GPU time; a markdown table of the
top kernels. gpu-check.sh's profile part uses it where nsys cannot make a report.

    scripts/ncu_summary.py PROFILE.csv [--top N]
"""
from __future__ import annotations

import argparse
import collections
import csv
import sys

UNITS = {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0, "ns": 1e-9, "us": 1e-6, "ms": 1e-3}


def durations(lines: list[str]) -> list[tuple[str, float]]:
    """(kernel name, seconds) per launch; the application's own output lines are skipped."""
    rows = list(csv.reader(line for line in lines if line.startswith('"')))
    header = next((i for i, r in enumerate(rows) if "Kernel Name" in r and "Metric Value" in r), None)
    if header is None:
        raise SystemExit("ncu_summary: no 'Kernel Name' / 'Metric Value' header in the CSV")
    cols = {name: i for i, name in enumerate(rows[header])}
    out = []
    for r in rows[header + 1:]:
        if len(r) < len(cols) or r[cols["Metric Name"]] != "gpu__time_duration.sum":
            continue
        scale = UNITS.get(r[cols["Metric Unit"]].strip(), None)
        if scale is None:
            raise SystemExit(f"ncu_summary: unknown unit {r[cols['Metric Unit']]!r}")
        out.append((r[cols["Kernel Name"]], float(r[cols["Metric Value"]].replace(",", "")) * scale))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    with open(args.csv, errors="replace") as f:
        launches = durations(f.read().splitlines())
    if not launches:
        raise SystemExit("ncu_summary: no kernel launches in the CSV")
    per = collections.defaultdict(list)
    for name, s in launches:
        per[name].append(s)
    total = sum(s for _, s in launches)
    print(f"{len(launches)} launches, {len(per)} kernels, {total * 1e3:.2f} ms of GPU time\n")
    print("| kernel | launches | total ms | mean us | share |")
    print("|---|---:|---:|---:|---:|")
    for name, ss in sorted(per.items(), key=lambda kv: -sum(kv[1]))[: args.top]:
        short = name if len(name) <= 90 else name[:87] + "..."
        print(f"| `{short}` | {len(ss)} | {sum(ss) * 1e3:.3f} | {sum(ss) / len(ss) * 1e6:.1f} | "
              f"{sum(ss) / total * 100:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
