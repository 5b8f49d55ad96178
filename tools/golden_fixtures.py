#!/usr/bin/env python3
"""Golden fixtures from Hugging Face transformers, the oracle troupe's logits are checked against.

Runs where transformers is installed (the GPU machine), on model directories written by
`troupe make-model`. For each model it loads the files strictly (no missing, unexpected or
mismatched tensor), runs a few fixed prompts in float32 on the CPU with eager attention, and
writes the logits of every prompt position and the greedy continuation of 32 tokens.

  golden_fixtures.py fixtures --models DIR --out DIR     one fixture per model directory in DIR
  golden_fixtures.py count DIR                           load a model and print its parameter count

Fixture layout (read by tests/golden_test.cpp): NAME.json with the prompts, the continuations and
the versions used; NAME.logits.f32 with the logits of all prompts' positions, little-endian f32,
prompt after prompt, row-major [positions, vocab].
"""
import argparse
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

PROMPT_LENGTHS = [1, 6, 13, 29]
CONTINUATION = 32


def load(model_dir):
    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if problems or info.get("error_msgs"):
        sys.exit(f"{model_dir}: transformers did not load every tensor as written: {info}")
    return model.eval()


def prompts_for(vocab_size):
    # Fixed ids, spread over the vocabulary; a generator with a fixed seed is stable across runs.
    g = torch.Generator().manual_seed(1234)
    return [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


@torch.no_grad()
def fixture(model_dir, out_dir):
    name = os.path.basename(os.path.normpath(model_dir))
    model = load(model_dir)
    vocab = model.config.vocab_size
    prompts = prompts_for(vocab)
    greedy, rows = [], []
    for prompt in prompts:
        logits = model(torch.tensor([prompt])).logits[0]
        rows.append(logits.float().contiguous())
        ids = list(prompt)
        for _ in range(CONTINUATION):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        greedy.append(ids[len(prompt):])
    all_logits = torch.cat(rows)
    all_logits.numpy().astype("<f4").tofile(os.path.join(out_dir, name + ".logits.f32"))
    meta = {
        "model": name,
        "vocab_size": vocab,
        "prompts": prompts,
        "greedy": greedy,
        "logits_file": name + ".logits.f32",
        "logits_abs_max": float(all_logits.abs().max()),
        "logits_std": float(all_logits.std()),
        "dtype": "float32",
        "device": "cpu",
        "attn_implementation": "eager",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{name}: {sum(len(p) for p in prompts)} positions, logits std {meta['logits_std']:.3f}, "
          f"max |logit| {meta['logits_abs_max']:.3f}, greedy[0][:8] {greedy[0][:8]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--models", required=True)
    f.add_argument("--out", required=True)
    c = sub.add_parser("count")
    c.add_argument("model_dir")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.command == "count":
        model = load(args.model_dir)
        print(f"{args.model_dir}: {model.config.architectures[0]} loads; "
              f"{sum(p.numel() for p in model.parameters()):,} parameters")
        return
    os.makedirs(args.out, exist_ok=True)
    failed = []
    for entry in sorted(os.listdir(args.models)):
        d = os.path.join(args.models, entry)
        if not os.path.isfile(os.path.join(d, "config.json")):
            continue
        try:
            fixture(d, args.out)
        except BaseException as e:  # report every model's problem in one run, then fail
            print(f"{entry}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(entry)
    if failed:
        sys.exit(f"no fixture for: {', '.join(failed)}")


if __name__ == "__main__":
    main()
