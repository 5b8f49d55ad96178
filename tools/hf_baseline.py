#!/usr/bin/env python3
"""Hugging Face transformers on the same model files and GPU: the baseline troupe's throughput is
divided by. Runs a --prompts-file workload (tools/offline_workload.py) with `generate` in bf16,
greedy-free sampling as asked, every sequence generating exactly its max_tokens (ignore_eos), in
batches of --batch sequences left-padded to the batch's longest prompt; reports generated tokens
(each sequence's own max_tokens, not the padding HF generates beyond it) over wall time.

  hf_baseline.py --model DIR --prompts FILE [--batch 64] [--temperature 0.6] [--static-cache]
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--limit", type=int, default=0, help="use only the first N sequences")
    a = p.parse_args()
    rows = [json.loads(line) for line in open(a.prompts) if line.strip()]
    if a.limit:
        rows = rows[: a.limit]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, device_map="cuda").eval()
    pad = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    # Longest outputs first, so a batch's sequences want similar lengths (HF cannot stop them apart).
    rows.sort(key=lambda r: -r["max_tokens"])
    torch.cuda.synchronize()
    start = time.time()
    generated = 0
    prompt_tokens = 0
    for i in range(0, len(rows), a.batch):
        batch = rows[i:i + a.batch]
        width = max(len(r["prompt_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, r in enumerate(batch):
            n = len(r["prompt_ids"])
            ids[j, width - n:] = torch.tensor(r["prompt_ids"])
            mask[j, width - n:] = 1
        with torch.no_grad():
            model.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), do_sample=a.temperature > 0,
                           temperature=a.temperature if a.temperature > 0 else None, top_p=None, top_k=None,
                           max_new_tokens=max(r["max_tokens"] for r in batch),
                           min_new_tokens=max(r["max_tokens"] for r in batch), pad_token_id=pad)
        generated += sum(r["max_tokens"] for r in batch)
        prompt_tokens += sum(len(r["prompt_ids"]) for r in batch)
        print(f"batch {i // a.batch + 1}: {len(batch)} sequences, {time.time() - start:.1f} s", flush=True)
    torch.cuda.synchronize()
    seconds = time.time() - start
    print(f"transformers {len(rows)} requests, {prompt_tokens} prompt and {generated} generated tokens in "
          f"{seconds:.2f} s: {generated / seconds:.1f} generated tokens/s")


if __name__ == "__main__":
    main()
