#!/usr/bin/env python3
"""Greedy continuations of troupe's CUDA backend against transformers, both in bf16, on a model of
which only config.json exists (`troupe make-model --preset NAME --config-only`).

Models of tens of GB are not written to disk: troupe runs them with `--load-format dummy`, and this
script gives transformers the very same weights by computing troupe's dummy-weight recipe
(engine/model.cpp, Loader::fill_dummy; kernels/random_fill.cu) in PyTorch on the GPU: for each
checkpoint tensor, seed = FNV-1a of its name, element i = mean + std * unit_normal(seed, i), with
unit_normal a splitmix64 hash of i summed over four 16-bit parts. transformers then runs its own
forward pass on them: the oracle is its modelling code, not ours.

  greedy_vs_transformers.py --model DIR --troupe BIN [--prompts 8] [--tokens 32] [--out FILE]
      [-- extra troupe generate flags, e.g. --tensor-parallel-size 2]

troupe runs first (all prompts at once, batched like a server would), then transformers (each prompt
alone, with its KV cache). Per prompt: the tokens both agree on; at the first difference, the two
top logits of transformers there, so a difference at a near-tie shows as a small margin. The same for
transformers against itself with all prompts in one left-padded batch: how far bf16 summation order
alone moves this model's greedy tokens.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
import transformers

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def signed64(x):
    x &= MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def fnv1a(name):
    seed = 1469598103934665603
    for c in name.encode():
        seed = ((seed ^ c) * 1099511628211) & MASK64
    return seed


def shr(z, s):
    # A logical shift of int64 bits (torch's >> is arithmetic).
    return (z >> s) & ((1 << (64 - s)) - 1)


def unit_normal(seed, first, n, device):
    """kernels/random_fill.cu's unit_normal for indices first .. first+n-1, as float32."""
    i = torch.arange(first + 1, first + n + 1, dtype=torch.int64, device=device)
    # int64 arithmetic wraps modulo 2^64 on the GPU, as uint64 does in the kernel.
    z = i * signed64(GOLDEN) + signed64(seed)
    z = (z ^ shr(z, 30)) * signed64(MIX1)
    z = (z ^ shr(z, 27)) * signed64(MIX2)
    z = z ^ shr(z, 31)
    total = torch.zeros(n, dtype=torch.float32, device=device)
    for k in range(4):
        total += (shr(z, 16 * k) & 0xFFFF).to(torch.float32) / 65536.0
    return (total - 2.0) * 1.7320508


def unit_normal_exact(seed, i):
    """The same function in Python integers, to check the int64 tensor arithmetic above."""
    z = (seed + (i + 1) * GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    z ^= z >> 31
    return sum(((z >> (16 * k)) & 0xFFFF) / 65536.0 for k in range(4))


def check_unit_normal(device):
    seed, first = fnv1a("model.layers.0.mlp.down_proj.weight"), (1 << 33) + 5
    got = unit_normal(seed, first, 64, device).cpu()
    for j in range(64):
        # The four parts sum exactly in float32 and in float64 alike; only the last step rounds.
        want = torch.tensor((unit_normal_exact(seed, first + j)), dtype=torch.float32)
        want = (want - 2.0) * 1.7320508
        if got[j].item() != want.item():
            sys.exit(f"unit_normal on {device} differs from the integer reference at {first + j}: "
                     f"{got[j].item()} vs {want.item()}")


def dummy_tensor(name, shape, num_layers, dtype, device):
    """engine/model.cpp Loader::fill_dummy for a whole checkpoint tensor."""
    # In float32 step by step, as the C++ computes them.
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)
    mean, std = f32(0.0), f32(0.1)
    if name.endswith("norm.weight"):
        mean = f32(1.0)
    elif not name.endswith(".bias"):
        std = f32(1.0) / torch.sqrt(f32(float(shape[-1])))
        if name.endswith(("o_proj.weight", "down_proj.weight", "w2.weight")):
            std = std / torch.sqrt(f32(2.0) * f32(float(num_layers)))
    # The kernel's mean + std * x contracts to one fused multiply-add, which a float64 product and
    # sum rounded once to float32 reproduces.
    mean32, std32 = mean.item(), std.item()
    seed = fnv1a(name)
    n = math.prod(shape)
    out = torch.empty(n, dtype=dtype, device=device)
    chunk = 1 << 26
    for first in range(0, n, chunk):
        m = min(chunk, n - first)
        x = unit_normal(seed, first, m, device).to(torch.float64)
        out[first:first + m] = (mean32 + std32 * x).to(torch.float32).to(dtype)
    return out.view(shape)


@torch.no_grad()
def fill_transformers_model(model, num_layers):
    """Every parameter of the transformers model from the checkpoint tensors troupe reads."""
    params = dict(model.named_parameters())
    filled = 0
    for name, p in params.items():
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            # transformers 5 keeps a layer's experts in 3D tensors: gate_up [E, 2I, H] (gate rows
            # first), down [E, H, I]; the checkpoint has one 2D tensor per expert and projection.
            prefix = name[: -len("gate_up_proj")] if name.endswith("gate_up_proj") else name[: -len("down_proj")]
            experts = p.shape[0]
            for e in range(experts):
                if name.endswith("gate_up_proj"):
                    two_i, h = p.shape[1], p.shape[2]
                    gate = dummy_tensor(f"{prefix}{e}.gate_proj.weight", [two_i // 2, h], num_layers, p.dtype, p.device)
                    up = dummy_tensor(f"{prefix}{e}.up_proj.weight", [two_i // 2, h], num_layers, p.dtype, p.device)
                    p[e].copy_(torch.cat([gate, up], dim=0))
                else:
                    p[e].copy_(dummy_tensor(f"{prefix}{e}.down_proj.weight", list(p.shape[1:]), num_layers, p.dtype,
                                            p.device))
        else:
            p.copy_(dummy_tensor(name, list(p.shape), num_layers, p.dtype, p.device))
        filled += p.numel()
    return filled


def prompts_for(vocab, count):
    g = torch.Generator().manual_seed(2026)
    lengths = [1, 7, 19, 40, 77, 128, 190, 255, 33, 64, 5, 300][:count]
    return [torch.randint(0, min(vocab, 100000), (n,), generator=g).tolist() for n in lengths]


def run_troupe(binary, model_dir, prompts, tokens, extra):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for p in prompts:
            f.write(json.dumps({"prompt_ids": p}) + "\n")
        path = f.name
    cmd = [binary, "generate", "--model", model_dir, "--load-format", "dummy", "--prompts-file", path,
           "--max-tokens", str(tokens), "--ignore-eos", "--temperature", "0", "--max-model-len", "1024"] + extra
    print("troupe:", " ".join(cmd), file=sys.stderr, flush=True)
    try:
        run = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.unlink(path)
    sys.stderr.write(run.stderr[-3000:])
    if run.returncode != 0:
        sys.exit(f"troupe generate exited {run.returncode}")
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    rows.sort(key=lambda r: r["index"])
    return [r["token_ids"] for r in rows]


@torch.no_grad()
def run_transformers(model, prompts, tokens):
    """Greedy, one prompt at a time with a KV cache; the two top logits (float32) at every step."""
    outputs = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device="cuda")
        out = model(input_ids=ids, use_cache=True)
        cache, steps = out.past_key_values, []
        logits = out.logits[0, -1].float()
        for _ in range(tokens):
            top = torch.topk(logits, 2)
            token = int(top.indices[0])
            steps.append({"token": token, "top2": [float(top.values[0]), float(top.values[1])],
                          "second": int(top.indices[1]), "logits": logits})
            out = model(input_ids=torch.tensor([[token]], device="cuda"), past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[0, -1].float()
        outputs.append(steps)
    return outputs


@torch.no_grad()
def run_transformers_batched(model, prompts, tokens):
    """The same greedy continuations from transformers itself, all prompts in one left-padded batch:
    the same function with sums in another order, to show how far bf16 alone moves the tokens."""
    width = max(len(p) for p in prompts)
    pad = 0
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    out = model.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), do_sample=False, max_new_tokens=tokens,
                         min_new_tokens=tokens, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    return [row[width:].tolist() for row in out]


def compare(label, prompts, candidates, steps_of):
    """Rows per prompt: how many of the candidate's tokens equal transformers' single-prompt greedy
    tokens, and at the first difference both tokens' logits in transformers' run."""
    rows = []
    for i, (prompt, mine, steps) in enumerate(zip(prompts, candidates, steps_of)):
        ref = [s["token"] for s in steps]
        agree = next((k for k in range(len(ref)) if k >= len(mine) or mine[k] != ref[k]), len(ref))
        row = {"prompt_len": len(prompt), "agree": agree, "of": len(ref)}
        if agree < len(ref):
            s = steps[agree]
            other = mine[agree] if agree < len(mine) else None
            row.update({"transformers_token": s["token"], "other_token": other, "transformers_top2": s["top2"],
                        "margin": s["top2"][0] - (float(s["logits"][other]) if other is not None else math.nan)})
        rows.append(row)
        print(f"{label} prompt {i} ({len(prompt)} tokens): {agree}/{len(ref)} equal" +
              (f"; first difference: transformers {row['transformers_token']} (logit {row['transformers_top2'][0]:.4f})"
               f" vs {row['other_token']} (transformers' logit for it {row['transformers_top2'][0] - row['margin']:.4f},"
               f" margin {row['margin']:.4f})" if agree < len(ref) else ""))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--troupe", required=True)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]

    config = transformers.AutoConfig.from_pretrained(args.model)
    prompts = prompts_for(config.vocab_size, args.prompts)
    ours = run_troupe(args.troupe, args.model, prompts, args.tokens, extra)

    check_unit_normal("cuda")
    start = time.time()
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    filled = fill_transformers_model(model, config.num_hidden_layers)
    print(f"transformers {transformers.__version__}: {filled / 1e9:.2f} B parameters filled with troupe's dummy "
          f"weights in {time.time() - start:.1f} s", file=sys.stderr, flush=True)
    theirs = run_transformers(model, prompts, args.tokens)

    batched = run_transformers_batched(model, prompts, args.tokens)

    report = {"model": os.path.basename(os.path.normpath(args.model)), "transformers": transformers.__version__,
              "torch": torch.__version__, "dtype": "bfloat16", "troupe_flags": extra,
              "prompts": compare("troupe", prompts, ours, theirs),
              "transformers_batched": compare("transformers batched", prompts, batched, theirs)}
    all_equal = all(r["agree"] == r["of"] for r in report["prompts"])
    report["all_equal"] = all_equal
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print("all equal" if all_equal else "differences above (see margins)")


if __name__ == "__main__":
    main()
