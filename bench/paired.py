#!/usr/bin/env python3
"""Runs shell commands in interleaved rounds (A B C, A B C, ...) and reports each one's median
wall time and the median of its per-round ratio to the first command.

hyperfine runs every repetition of one command before the next; on a shared VM whose speed
drifts over minutes (steal time, fsync latency), that drift lands on one side of a ratio.
Interleaving puts each round's commands side by side in time, so the ratio of a round compares
like with like.

usage: paired.py ROUNDS OUT.json [--prepare CMD] NAME=CMD NAME=CMD ...
"""
import json
import statistics
import subprocess
import sys
import time


def main():
    args = sys.argv[1:]
    rounds, out = int(args[0]), args[1]
    args = args[2:]
    prepare = None
    if args and args[0] == "--prepare":
        prepare, args = args[1], args[2:]
    commands = [a.split("=", 1) for a in args]
    times = {name: [] for name, _ in commands}
    for r in range(rounds + 1):  # round 0 warms caches and is not counted
        for name, cmd in commands:
            if prepare:
                subprocess.run(prepare, shell=True, check=True)
            start = time.perf_counter()
            subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
            took = time.perf_counter() - start
            if r > 0:
                times[name].append(took)
    base = commands[0][0]
    report = []
    for name, _ in commands:
        ratios = [t / b for t, b in zip(times[name], times[base])]
        row = {
            "name": name,
            "median_s": statistics.median(times[name]),
            "min_s": min(times[name]),
            "max_s": max(times[name]),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "times": times[name],
        }
        report.append(row)
        print(
            f"{name}: median {row['median_s'] * 1000:.1f} ms"
            f" ({row['min_s'] * 1000:.1f} .. {row['max_s'] * 1000:.1f})"
            + (
                ""
                if name == base
                else f"; ratio to {base}: median {row['ratio_median']:.2f}x"
                f" ({row['ratio_min']:.2f} .. {row['ratio_max']:.2f})"
            )
        )
    with open(out, "w") as f:
        json.dump({"rounds": rounds, "results": report}, f, indent=1)


main()
