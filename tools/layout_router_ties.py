#!/usr/bin/env python3
"""Does a layout leave tp1's greedy tokens on an MoE model through a router near-tie?

  layout_router_ties.py --model DIR --troupe BIN --prompts FILE.jsonl [--request 0] [--tokens 1]
      [--batched] [--a "--tensor-parallel-size 1"] [--b "--tensor-parallel-size 2"] [--out FILE]

Two layouts of the same model on the same GPU backend sum in other orders (tensor parallelism adds
bf16 partial sums of attention and experts across ranks), so the hidden state entering a router can
differ by a rounding step, and a token whose k-th and (k+1)-th expert have almost equal router logits
may go to another expert in one layout than in the other: its next layers then differ by far more
than rounding. This runs `troupe generate` on one request's prompt alone (--max-num-seqs 1, --tokens
greedy tokens, every step eager so that decode steps report their routing too), or with --batched
all of the file's prompts together as the layouts test submits them (each line's own max_tokens), in
layout A and in layout B with TROUPE_DUMP_ROUTING and TROUPE_DUMP_ROUTER_LOGITS
(actors/worker.cpp: tensor-parallel rank 0's routed ids and router logits of each MoE layer), and
reports per (layer, position) where the two chose other experts (positions: the prompt's tokens,
then each generated token's decode step); at the first such pair (later ones see
other inputs), both layouts' logits of the experts only one of them chose and the gap between the
k-th and (k+1)-th logit. Also how far apart the two layouts' router logits were at the layers before:
the rounding that tipped the tie.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile


def run(binary, model, prompts, request, flags, tokens, batched):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "p.jsonl")
        dump = os.path.join(tmp, "routing.jsonl")
        with open(path, "w") as f:
            for job in (prompts if batched else [{"prompt_ids": prompts[request]["prompt_ids"]}]):
                f.write(json.dumps(job) + "\n")
        env = dict(os.environ, TROUPE_DUMP_ROUTING=dump, TROUPE_DUMP_ROUTER_LOGITS="1")
        cmd = [binary, "generate", "--model", model, "--prompts-file", path, "--temperature", "0", "--enforce-eager",
               "--quiet"]
        if not batched:
            cmd += ["--max-tokens", str(tokens), "--ignore-eos", "--max-num-seqs", "1"]
        cmd += flags
        print("troupe:", " ".join(cmd), file=sys.stderr, flush=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"troupe generate exited {r.returncode}: {r.stderr[-2000:]}")
        rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        if not os.path.exists(dump):
            sys.exit("no routing dump: is this troupe older than TROUPE_DUMP_ROUTER_LOGITS?")
        lines = [json.loads(line) for line in open(dump) if line.strip()]
    # Sequence ids count the submitted prompts from 1.
    seq = (request if batched else 0) + 1
    # Per step and layer: the request's rows of the routed ids and router logits (a logits line comes
    # just before the ids line of its step and layer, rows in the same order); steps in order give
    # the request's positions: its prompt's rows, then one row a decode step.
    ids, logits, k, pending = {}, {}, None, None
    for line in lines:
        if line.get("rank", 0) != 0:
            continue
        if "router_logits" in line:
            pending = line["router_logits"]
            continue
        k = line["top_k"]
        if seq not in line["seqs"]:
            continue
        i = line["seqs"].index(seq)
        first, n = sum(line["chunk"][:i]), line["chunk"][i]
        experts = len(pending) // sum(line["chunk"])
        key = (line["step"], line["layer"])
        ids[key] = line["ids"][first * k:(first + n) * k]
        logits[key] = pending[first * experts:(first + n) * experts]
    if not ids:
        sys.exit("the dump holds no routed ids of this request")
    layers = sorted({layer for _, layer in ids})
    table = {layer: [] for layer in layers}
    for step in sorted({step for step, _ in ids}):
        for layer in layers:
            step_ids, step_logits = ids[(step, layer)], logits[(step, layer)]
            n = len(step_ids) // k
            experts = len(step_logits) // n
            table[layer] += [{"ids": step_ids[t * k:(t + 1) * k], "logits": step_logits[t * experts:(t + 1) * experts]}
                             for t in range(n)]
    return rows[request if batched else 0]["token_ids"], k, experts, table


def gap_at(logits, k):
    top = sorted(logits, reverse=True)
    return top[k - 1] - top[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--troupe", required=True)
    ap.add_argument("--prompts", required=True, help="jsonl with prompt_ids per line (the layouts test's jobs)")
    ap.add_argument("--request", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=1, help="greedy tokens to generate alone (default 1)")
    ap.add_argument("--batched", action="store_true", help="run every prompt of the file together, as the test does")
    ap.add_argument("--a", default="--tensor-parallel-size 1")
    ap.add_argument("--b", default="--tensor-parallel-size 2")
    ap.add_argument("--out")
    args = ap.parse_args()
    with open(args.prompts) as f:
        jobs = [json.loads(line) for line in f if line.strip()]
    prompt = jobs[args.request]["prompt_ids"]

    tokens_a, k, experts, a = run(args.troupe, args.model, jobs, args.request, shlex.split(args.a), args.tokens,
                                  args.batched)
    tokens_b, _, _, b = run(args.troupe, args.model, jobs, args.request, shlex.split(args.b), args.tokens, args.batched)
    positions = min(len(a[layer]) for layer in a)
    leaves = next((i for i, (x, y) in enumerate(zip(tokens_a, tokens_b)) if x != y), None)
    differing = []
    for t in range(positions):
        for layer in sorted(a):
            sa, sb = set(a[layer][t]["ids"]), set(b[layer][t]["ids"])
            if sa != sb:
                differing.append((layer, t, sorted(sa - sb), sorted(sb - sa)))
    report = {"request": args.request, "prompt_len": len(prompt), "a": args.a, "b": args.b, "tokens_a": tokens_a,
              "tokens_b": tokens_b, "first_different_token": leaves, "top_k": k, "experts": experts,
              "differing_pairs": len(differing)}
    where = "no generated token differs" if leaves is None else (
        f"generated token {leaves} differs: {tokens_a[leaves]} in A, {tokens_b[leaves]} in B")
    print(f"request {args.request} ({len(prompt)} prompt tokens, {len(tokens_a)} generated): {where}; "
          f"{len(differing)} of {len(a) * positions} (layer, position) pairs routed differently "
          f"(positions from {len(prompt)}: the decode steps, position {len(prompt)} + i reading generated token i)")
    if differing:
        layer, t, only_a, only_b = differing[0]
        la, lb = a[layer][t]["logits"], b[layer][t]["logits"]
        # How far the router inputs had drifted: the largest logit difference at this layer and before.
        drift = max(abs(x - y) for l in sorted(a) if l <= layer for u in range(t + 1)
                    for x, y in zip(a[l][u]["logits"], b[l][u]["logits"]))
        first = {"layer": layer, "token": t, "only_a": only_a, "only_b": only_b,
                 "a_logits": {e: la[e] for e in only_a + only_b}, "b_logits": {e: lb[e] for e in only_a + only_b},
                 "a_gap": gap_at(la, k), "b_gap": gap_at(lb, k), "max_logit_difference_so_far": drift}
        report["first"] = first
        print(f"  first differing pair: layer {layer} position {t}: only A chose {only_a}, only B {only_b}")
        print(f"  A's logits there: {', '.join(f'{e}: {la[e]:.6f}' for e in only_a + only_b)}; "
              f"A's k-th minus (k+1)-th logit {first['a_gap']:.6f}")
        print(f"  B's logits there: {', '.join(f'{e}: {lb[e]:.6f}' for e in only_a + only_b)}; "
              f"B's k-th minus (k+1)-th logit {first['b_gap']:.6f}")
        print(f"  largest |A - B| router logit up to that layer: {drift:.6f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
