#!/usr/bin/env python3
"""Does a layout leave tp1's greedy tokens on an MoE model through a router near-tie?

  layout_router_ties.py --model DIR --troupe BIN --prompts FILE.jsonl [--request 0]
      [--a "--tensor-parallel-size 1"] [--b "--tensor-parallel-size 2"] [--out FILE]

Two layouts of the same model on the same GPU backend sum in other orders (tensor parallelism adds
bf16 partial sums of attention and experts across ranks), so the hidden state entering a router can
differ by a rounding step, and a token whose k-th and (k+1)-th expert have almost equal router logits
may go to another expert in one layout than in the other: its next layers then differ by far more
than rounding. This runs `troupe generate` on one request's prompt alone (--max-num-seqs 1, one
token) in layout A and in layout B with TROUPE_DUMP_ROUTING and TROUPE_DUMP_ROUTER_LOGITS
(actors/worker.cpp: tensor-parallel rank 0's routed ids and router logits of each MoE layer), and
reports per (layer, token) where the two chose other experts; at the first such pair (later ones see
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


def run(binary, model, prompt, flags):
    with tempfile.TemporaryDirectory() as tmp:
        prompts = os.path.join(tmp, "p.jsonl")
        dump = os.path.join(tmp, "routing.jsonl")
        with open(prompts, "w") as f:
            f.write(json.dumps({"prompt_ids": prompt}) + "\n")
        env = dict(os.environ, TROUPE_DUMP_ROUTING=dump, TROUPE_DUMP_ROUTER_LOGITS="1")
        cmd = [binary, "generate", "--model", model, "--prompts-file", prompts, "--max-tokens", "1", "--ignore-eos",
               "--temperature", "0", "--max-num-seqs", "1", "--enforce-eager", "--quiet"] + flags
        print("troupe:", " ".join(cmd), file=sys.stderr, flush=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"troupe generate exited {r.returncode}: {r.stderr[-2000:]}")
        rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        if not os.path.exists(dump):
            sys.exit("no routing dump: is this troupe older than TROUPE_DUMP_ROUTER_LOGITS?")
        lines = [json.loads(line) for line in open(dump) if line.strip()]
    step = min(line["step"] for line in lines)
    ids, logits, k = {}, {}, None
    for line in lines:
        if line["step"] != step or line.get("rank", 0) != 0:
            continue
        if "router_logits" in line:
            logits[line["layer"]] = line["router_logits"]
        else:
            k = line["top_k"]
            ids[line["layer"]] = line["ids"]
    if not ids or set(ids) != set(logits):
        sys.exit("the dump lacks routed ids or router logits for some layer")
    tokens = len(prompt)
    experts = len(next(iter(logits.values()))) // tokens
    table = {}
    for layer in sorted(ids):
        table[layer] = [{"ids": ids[layer][t * k:(t + 1) * k], "logits": logits[layer][t * experts:(t + 1) * experts]}
                        for t in range(tokens)]
    return rows[0]["token_ids"][0], k, experts, table


def gap_at(logits, k):
    top = sorted(logits, reverse=True)
    return top[k - 1] - top[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--troupe", required=True)
    ap.add_argument("--prompts", required=True, help="jsonl with prompt_ids per line (the layouts test's jobs)")
    ap.add_argument("--request", type=int, default=0)
    ap.add_argument("--a", default="--tensor-parallel-size 1")
    ap.add_argument("--b", default="--tensor-parallel-size 2")
    ap.add_argument("--out")
    args = ap.parse_args()
    with open(args.prompts) as f:
        prompt = [json.loads(line) for line in f if line.strip()][args.request]["prompt_ids"]

    token_a, k, experts, a = run(args.troupe, args.model, prompt, shlex.split(args.a))
    token_b, _, _, b = run(args.troupe, args.model, prompt, shlex.split(args.b))
    differing = []
    for layer in sorted(a):
        for t in range(len(prompt)):
            sa, sb = set(a[layer][t]["ids"]), set(b[layer][t]["ids"])
            if sa != sb:
                differing.append((layer, t, sorted(sa - sb), sorted(sb - sa)))
    report = {"request": args.request, "prompt_len": len(prompt), "a": args.a, "b": args.b, "token_a": token_a,
              "token_b": token_b, "top_k": k, "experts": experts, "differing_pairs": len(differing)}
    print(f"request {args.request} ({len(prompt)} tokens): first token {token_a} in A ({args.a}), {token_b} in B "
          f"({args.b}); {len(differing)} of {len(a) * len(prompt)} (layer, token) pairs routed differently")
    if differing:
        layer, t, only_a, only_b = differing[0]
        la, lb = a[layer][t]["logits"], b[layer][t]["logits"]
        # How far the router inputs had drifted: the largest logit difference at this layer and before.
        drift = max(abs(x - y) for l in sorted(a) if l <= layer for u in range(len(prompt))
                    for x, y in zip(a[l][u]["logits"], b[l][u]["logits"]))
        first = {"layer": layer, "token": t, "only_a": only_a, "only_b": only_b,
                 "a_logits": {e: la[e] for e in only_a + only_b}, "b_logits": {e: lb[e] for e in only_a + only_b},
                 "a_gap": gap_at(la, k), "b_gap": gap_at(lb, k), "max_logit_difference_so_far": drift}
        report["first"] = first
        print(f"  first differing pair: layer {layer} token {t}: only A chose {only_a}, only B {only_b}")
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
