#!/usr/bin/env python3
"""Alternating A/B runs of `troupe bench decode` over tensor-parallel sizes and variants.

A variant is a name and environment assignments (measurement switches, TROUPE_*=...), and every
repetition runs each variant at each size in turn, so that drift of the machine (clocks, another
tenant) falls on all variants alike. Only figures of one call compare: the same build on another
machine of the same kind can differ by more than the effects measured (docs/benchmarks.md).

    python3 tools/decode_ab.py --troupe build/troupe --model MODEL_DIR --tp 1,2,4 --reps 2 \\
        --variant base --variant old:TROUPE_ATTN_PUSH_COMBINE=0,TROUPE_STREAM_GEMV_SPARE_OTHER=0 \\
        -- --load-format dummy --batch 1 --context 512 --steps 128

prints one markdown row per variant (ms a step per repetition at each size, and each size's step
divided by tp1's of the same variant and repetition), and with --json writes every run.
"""
import argparse
import json
import os
import re
import subprocess
import sys

# The bench's result rows begin with the batch and the ms a step (then tokens/s, GB a rank and, on a
# GPU, the roofline and the share of it).
ROW = re.compile(r"^\s*(\d+)\s+([0-9.]+)\s+[0-9.]+")


def parse_variant(text):
    name, _, assignments = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"variant '{text}': a name first (NAME or NAME:VAR=VALUE,...)")
    env = {}
    for item in filter(None, assignments.split(",")):
        var, eq, value = item.partition("=")
        if not eq or not var:
            raise argparse.ArgumentTypeError(f"variant '{text}': '{item}' is not VAR=VALUE")
        env[var] = value
    return name, env


def step_ms(output):
    """ms a step of the first batch row the bench printed, or None."""
    for line in output.splitlines():
        m = ROW.match(line)
        if m:
            return float(m.group(2))
    return None


def run(troupe, model, tp, env, bench_args, timeout):
    command = [troupe, "bench", "decode", "--model", model] + bench_args
    if tp > 1:
        command += ["--tensor-parallel-size", str(tp)]
    try:
        done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    output = done.stdout + done.stderr
    ms = step_ms(output) if done.returncode == 0 else None
    last = output.strip().splitlines()[-1] if output.strip() else "no output"
    return ms, None if ms is not None else f"rc={done.returncode}: {last}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--troupe", required=True, help="the troupe binary")
    parser.add_argument("--model", required=True, help="model directory (config.json)")
    parser.add_argument("--tp", default="1", help="tensor-parallel sizes, comma-separated (default 1)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of the whole alternation (default 2)")
    parser.add_argument("--variant", type=parse_variant, action="append", required=True,
                        help="NAME or NAME:VAR=VALUE,... (repeatable; the first is the baseline)")
    parser.add_argument("--timeout", type=int, default=180, help="seconds a run may take (default 180)")
    parser.add_argument("--json", help="write every run here")
    parser.add_argument("bench_args", nargs="*", help="after --: arguments for troupe bench decode")
    args = parser.parse_args()
    try:
        sizes = [int(t) for t in args.tp.split(",")]
    except ValueError:
        parser.error(f"--tp: comma-separated integers expected, got '{args.tp}'")
    if args.reps < 1 or any(t < 1 for t in sizes):
        parser.error("--reps and --tp: at least 1")

    runs = []
    for rep in range(args.reps):
        for name, env in args.variant:
            for tp in sizes:
                ms, error = run(args.troupe, args.model, tp, env, args.bench_args, args.timeout)
                runs.append({"rep": rep, "variant": name, "env": env, "tp": tp, "ms": ms, "error": error})
                shown = f"{ms:.3f} ms" if ms is not None else f"failed ({error})"
                print(f"rep {rep + 1} {name} tp{tp}: {shown}", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "bench_args": args.bench_args, "runs": runs}, f, indent=1)

    def cell(name, tp):
        values = [r["ms"] for r in runs if r["variant"] == name and r["tp"] == tp]
        return " / ".join(f"{v:.3f}" if v is not None else "—" for v in values)

    def ratio(name, tp):
        pairs = []
        for rep in range(args.reps):
            mine = [r["ms"] for r in runs if r["variant"] == name and r["tp"] == tp and r["rep"] == rep]
            one = [r["ms"] for r in runs if r["variant"] == name and r["tp"] == 1 and r["rep"] == rep]
            if mine and one and mine[0] is not None and one[0]:
                pairs.append(f"{mine[0] / one[0]:.3f}")
        return " / ".join(pairs) or "—"

    header = ["variant"] + [f"tp{t} ms" for t in sizes]
    if 1 in sizes:
        header += [f"tp{t} ÷ tp1" for t in sizes if t != 1]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, _ in args.variant:
        row = [name] + [cell(name, t) for t in sizes]
        if 1 in sizes:
            row += [ratio(name, t) for t in sizes if t != 1]
        print("| " + " | ".join(row) + " |")
    return 1 if any(r["ms"] is None for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
