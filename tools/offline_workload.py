#!/usr/bin/env python3
"""The offline workload small engines quote (nano-vllm's README), as a troupe --prompts-file:
N sequences, prompt ids random in [0, 10000), prompt and output lengths uniform in [lo, hi],
fixed seed. One JSON object per line: {"prompt_ids": [...], "max_tokens": n}.

  offline_workload.py --out FILE [--seqs 256] [--min-len 100] [--max-len 1024] [--seed 0]
"""
import argparse
import json
import random


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seqs", type=int, default=256)
    p.add_argument("--min-len", type=int, default=100)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    with open(a.out, "w") as f:
        for _ in range(a.seqs):
            n = rng.randint(a.min_len, a.max_len)
            ids = [rng.randint(0, 9999) for _ in range(n)]
            f.write(json.dumps({"prompt_ids": ids, "max_tokens": rng.randint(a.min_len, a.max_len)}) + "\n")


if __name__ == "__main__":
    main()
