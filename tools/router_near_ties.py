#!/usr/bin/env python3
"""Are troupe's first-token differences from transformers on an MoE model router near-ties?

  router_near_ties.py --model DIR --troupe BIN [--prompt-indices 1,2] [--batched] [--out FILE]
      [-- extra troupe generate flags]

A near-tie: a token whose k-th and (k+1)-th router logits are almost equal, so that bf16 rounding
sends it to another expert in troupe than in transformers. For each selected prompt of
greedy_vs_transformers.py's prompts_for(vocab, 8), both in bf16 on troupe's dummy weights:

  1. troupe generates one token for the prompt alone (--max-num-seqs 1 --enforce-eager, as
     greedy_vs_transformers.py runs it otherwise) with TROUPE_DUMP_ROUTING set (actors/worker.cpp):
     the experts it routed every prompt token to at every MoE layer of the prefill. With --batched,
     all prompts at once instead (below).
  2. transformers (loaded once, after all troupe runs: a 30B model does not fit twice) runs the
     prompt with hooks on every layer's router that record its logits and chosen experts.
  3. Per (layer, token): troupe's expert set against transformers' top-k. For the pairs that differ,
     transformers' logits of the experts only one side chose and its gap between its k-th and
     (k+1)-th logit. Once a layer routes differently, later layers see other inputs, so the FIRST
     differing layer is the one that says whether a near-tie started it.
  4. The counter-test: transformers again, made to choose troupe's experts where they differed (in
     the routed expert list, each expert only transformers chose is replaced by one only troupe
     chose, which keeps the replaced one's routing weight: the same as swapping the two experts'
     router logits, and still well defined where the two logits are exactly equal). Done at every
     differing pair of step 3, at the first one only, and at every (layer, token) (which also covers
     pairs that only differ once the forced ones changed later layers' inputs). If transformers then
     gives troupe's first token, the routing difference explains the token difference.

--batched: troupe runs all PROMPT_COUNT prompts in one `troupe generate` call, as
greedy_vs_transformers.py runs them (its run_troupe flags; no --max-num-seqs 1). A prompt prefilled in a batch may have its sums done in another
order than alone (the kernels see another number of rows and may pick other tilings), so bf16 rounding
near a router tie may pick other experts there: greedy_vs_transformers.py's differences are those of
the batched run, which the prompt alone need not reproduce. Requests reach the scheduler one by one,
so which prompts share a step is up to timing; each dump line names its step's sequences and their new
tokens in row order ("seqs", "chunk"), a sequence's first appearance is its prefill, and the prompts'
distinct lengths tell which prompt a sequence is. Each selected prompt's rows are sliced from
there; steps 2 to 4 and transformers (each prompt alone, as greedy_vs_transformers.py runs it) are the
same as without.

Prints a summary per prompt (always with the differing-pair count, 0 included) and writes everything
to --out as JSON.
"""
import argparse
import json
import math
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import torch
    import torch.nn.functional as F
    import transformers
    import greedy_vs_transformers as gvt
except ImportError as e:
    sys.exit(f"router_near_ties.py needs torch and transformers (on the GPU machine: source .gpu/env.sh): {e}")

PROMPT_COUNT = 8  # the prompts of greedy_vs_transformers.py's default run
DEVICE = "cuda"
SHOWN_PAIRS = 20


def fail(message):
    sys.exit(f"router_near_ties.py: {message}")


# --- troupe ---------------------------------------------------------------------------------------

def has_flag(flags, name):
    return name in flags or any(f.startswith(name + "=") for f in flags)


def troupe_with_dump(binary, model_dir, prompts, flags):
    """troupe generate's first token per prompt (in index order) and its TROUPE_DUMP_ROUTING lines."""
    fd, path = tempfile.mkstemp(prefix="troupe-routing-", suffix=".jsonl")
    os.close(fd)
    os.unlink(path)  # the worker appends: start from nothing
    os.environ["TROUPE_DUMP_ROUTING"] = path
    print(f"TROUPE_DUMP_ROUTING={path}", file=sys.stderr, flush=True)
    try:
        tokens = gvt.run_troupe(binary, model_dir, prompts, 1, flags)
    finally:
        del os.environ["TROUPE_DUMP_ROUTING"]
    if not os.path.exists(path):
        fail(f"troupe wrote no {path}: is this binary older than TROUPE_DUMP_ROUTING (actors/worker.cpp)?")
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    os.unlink(path)
    if len(tokens) != len(prompts) or not all(tokens):
        fail("troupe generated no token" if len(prompts) == 1 else
             f"troupe's output has a first token for {sum(1 for t in tokens if t)} of {len(prompts)} prompts")
    if not lines:
        fail("TROUPE_DUMP_ROUTING file is empty (no eager MoE step?)")
    return [t[0] for t in tokens], lines


def check_top_k(line, k):
    if line["top_k"] != k:
        fail(f"troupe routed top_k={line['top_k']}, config.json says num_experts_per_tok={k}")
    if len(line["ids"]) % k:
        fail(f"layer {line['layer']} step {line['step']}: {len(line['ids'])} ids, not a multiple of k={k}")


def troupe_routing(binary, model_dir, prompt, k, extra):
    """troupe's first token for the prompt alone and its prefill routing: {layer: [[k ids] per token]}."""
    flags = list(extra)
    if not has_flag(flags, "--max-num-seqs"):
        flags += ["--max-num-seqs", "1"]
    if "--enforce-eager" not in flags:
        # A one-token prompt's prefill is a decode-shaped step, which a CUDA graph would replay
        # without reporting routing; longer prompts never replay a graph, so this changes nothing else.
        flags.append("--enforce-eager")
    tokens, lines = troupe_with_dump(binary, model_dir, [prompt], flags)
    # Per layer, the ids of its steps in step order (several steps if the prefill was chunked; ranks
    # of other data-parallel replicas or pipeline stages add their own lines).
    rows = {}
    for line in sorted(lines, key=lambda r: (r["step"], r.get("rank", 0))):
        check_top_k(line, k)
        ids = line["ids"]
        rows.setdefault(line["layer"], []).extend(ids[i:i + k] for i in range(0, len(ids), k))
    n = len(prompt)
    for layer, r in rows.items():
        if len(r) < n:
            fail(f"troupe's dump has {len(r)} routed tokens at layer {layer}, the prompt {n}")
    # The prompt's tokens come first; any later rows are decode steps.
    return tokens[0], {layer: r[:n] for layer, r in sorted(rows.items())}


def troupe_routing_batched(binary, model_dir, prompts, indices, k, extra):
    """--batched: one troupe run of all the prompts, scheduled as troupe schedules them (requests reach
    the scheduler one by one, so a prompt's prefill may share a step with other prompts' prefills or
    decode tokens). Each dump line lists its step's sequences and their new tokens in row order
    ("seqs", "chunk"); a sequence's first appearance is its prefill, and its length tells which prompt
    it is (the prompts' lengths differ). {i: (first token, prefill routing {layer: [[k ids] per
    token]})} for the prompts in indices."""
    # No --enforce-eager, as in greedy_vs_transformers.py: only pure decode steps replay a CUDA graph
    # (and report no routing), and a prompt of two tokens or more is never prefilled in one.
    tokens, lines = troupe_with_dump(binary, model_dir, prompts, list(extra))
    lines = [line for line in lines if line.get("rank", 0) == 0]
    if not lines or "seqs" not in lines[0]:
        fail("TROUPE_DUMP_ROUTING lines of rank 0 without \"seqs\"/\"chunk\" (an older troupe binary?)")
    lengths = [len(p) for p in prompts]
    if len(set(lengths)) != len(lengths):
        fail("--batched tells prompts apart by length, and two prompts have the same length")
    by_length = {n: i for i, n in enumerate(lengths)}
    seen, found = set(), {}
    for line in sorted(lines, key=lambda r: (r["step"], r["layer"])):
        check_top_k(line, k)
        offset = 0
        for seq, n in zip(line["seqs"], line["chunk"]):
            first = seq not in seen
            if first and n in by_length and by_length[n] in indices:
                found.setdefault(by_length[n], {})[line["layer"]] = (line["step"], line["ids"][offset * k:(offset + n) * k])
            offset += n
        if offset * k != len(line["ids"]):
            fail(f"step {line['step']} layer {line['layer']}: chunks sum to {offset} tokens, ids to {len(line['ids']) // k}")
        # A sequence counts as seen once its step's every layer has been read (lines are per layer).
        if line["layer"] == max(l["layer"] for l in lines if l["step"] == line["step"]):
            seen.update(line["seqs"])
    result = {}
    for i in indices:
        if i not in found:
            fail(f"prompt {i} ({lengths[i]} tokens) was not prefilled in one step of the dump (chunked prefill?)")
        steps = {step for step, _ in found[i].values()}
        print(f"troupe prompt {i}: prefilled in step {min(steps)} with "
              f"{next(len(l['seqs']) for l in lines if l['step'] == min(steps))} sequence(s) in the step",
              file=sys.stderr)
        rows = {layer: [ids[j:j + k] for j in range(0, len(ids), k)] for layer, (_, ids) in sorted(found[i].items())}
        result[i] = (tokens[i], rows)
    return result


# --- transformers ---------------------------------------------------------------------------------

def find_routers(model, config):
    """{layer index: router module}. transformers 5's Qwen3MoeSparseMoeBlock holds `gate`, a
    Qwen3MoeTopKRouter (a Qwen2MoeTopKRouter) with weight [num_experts, hidden] and forward(hidden)
    -> (router_logits, routing_weights, selected_experts [tokens, top_k]), and `experts`, one module
    with 3D gate_up_proj / down_proj that computes from selected_experts and routing_weights only."""
    routers = {}
    for name, module in model.named_modules():
        m = re.search(r"(?:^|\.)layers\.(\d+)\.mlp\.gate$", name)
        if not m:
            continue
        if isinstance(module, torch.nn.Linear):
            fail(f"{name} is an nn.Linear: this transformers ({transformers.__version__}) selects experts inside "
                 "the sparse MoE block (transformers 4); this script expects transformers 5's TopKRouter module")
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (config.num_experts, config.hidden_size):
            fail(f"{name} ({type(module).__name__}) has no weight [{config.num_experts}, {config.hidden_size}]: "
                 "not the router this script expects")
        routers[int(m.group(1))] = module
    if not routers:
        fail(f"no module model.layers.N.mlp.gate in {type(model).__name__} (transformers {transformers.__version__}): "
             "read Qwen3MoeSparseMoeBlock in its modeling_qwen3_moe.py and adapt find_routers")
    return routers


def unpack(name, out, tokens, k, experts):
    if not (isinstance(out, tuple) and len(out) == 3):
        fail(f"{name} returned {type(out).__name__}"
             f"{' of ' + str(len(out)) if isinstance(out, tuple) else ''}; expected (router_logits, "
             "routing_weights, selected_experts) as transformers 5's TopKRouter returns")
    first, weights, idx = out
    if idx.dtype not in (torch.int32, torch.int64) or tuple(idx.shape) != (tokens, k):
        fail(f"{name}: third output {idx.dtype} {tuple(idx.shape)}, expected integer expert ids [{tokens}, {k}]")
    if tuple(weights.shape) not in ((tokens, k), (tokens, experts)):
        fail(f"{name}: second output {tuple(weights.shape)}, expected routing weights [{tokens}, {k}] "
             f"or [{tokens}, {experts}]")
    return first, weights, idx


class RouterHooks:
    """Forward hooks on every router: record its logits (recomputed with transformers' own call,
    F.linear(hidden, weight) in the model's dtype, kept as float32) and the experts it chose, and
    optionally replace chosen experts with troupe's at some (layer, token) pairs."""

    def __init__(self, routers, k, experts):
        self.k, self.experts = k, experts
        self.force = {}       # layer -> {token: set of troupe's experts}
        self.force_all = None  # layer -> [tokens, k] troupe's ids (a tensor on the device), or None
        self.records = {}
        self.mismatch = 0     # tokens whose recomputed top-k differs from the router's own choice
        self.handles = [mod.register_forward_hook(self._hook(layer), with_kwargs=True)
                        for layer, mod in routers.items()]

    def remove(self):
        for h in self.handles:
            h.remove()

    def reset(self, force=None, force_all=None):
        self.force, self.force_all, self.records, self.mismatch = force or {}, force_all, {}, 0

    def _hook(self, layer):
        name = f"model.layers.{layer}.mlp.gate"

        def hook(module, args, kwargs, out):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if hidden is None:
                fail(f"{name}: no hidden_states among the router's inputs")
            hidden = hidden.reshape(-1, module.weight.shape[1])
            first, weights, idx = unpack(name, out, hidden.shape[0], self.k, self.experts)
            with torch.no_grad():
                raw = F.linear(hidden, module.weight)
                logits = raw.float()
                # Is this what the router chose from? Its own softmax and top-k on these logits.
                mine = torch.topk(F.softmax(raw, dim=-1, dtype=torch.float), self.k, dim=-1).indices
                self.mismatch += int((mine.sort(-1).values != idx.sort(-1).values).any(-1).sum())
                want = self._wanted(layer, idx)
                if want:
                    first, weights, idx = first.clone(), weights.clone(), idx.clone()
                    for t, troupe_set in want.items():
                        self._replace(t, troupe_set, logits, first, weights, idx)
                    out = (first, weights, idx)
            self.records[layer] = {"logits": logits.cpu(), "ids": idx.cpu()}
            return out

        return hook

    def _wanted(self, layer, idx):
        want = dict(self.force.get(layer, {}))
        if self.force_all is not None and layer in self.force_all:
            theirs = self.force_all[layer]
            differ = (theirs.sort(-1).values != idx.sort(-1).values.to(theirs.dtype)).any(-1)
            for t in differ.nonzero().flatten().tolist():
                want[t] = set(theirs[t].tolist())
        return want

    def _replace(self, t, troupe_set, logits, first, weights, idx):
        row = idx[t].tolist()
        add = sorted(troupe_set - set(row), key=lambda e: -float(logits[t, e]))
        drop = sorted(set(row) - troupe_set, key=lambda e: -float(logits[t, e]))
        for a, b in zip(add, drop):
            pos = row.index(b)
            idx[t, pos] = a  # a takes b's slot, and so b's routing weight
            row[pos] = a
            if weights.shape[-1] == self.experts:  # dense [tokens, experts] weights
                weights[t, a], weights[t, b] = weights[t, b].clone(), weights[t, a].clone()
            if first.dim() == 2 and first.shape[-1] == self.experts:  # logits or probabilities
                first[t, a], first[t, b] = first[t, b].clone(), first[t, a].clone()


def bf16_steps(gap, value):
    """The gap in units of bf16's spacing at `value` (8 significant bits)."""
    if value == 0 or not math.isfinite(value):
        return None
    return gap / 2.0 ** (math.floor(math.log2(abs(value))) - 7)


@torch.no_grad()
def run_transformers(model, hooks, prompt, troupe_token, force=None, force_all=None):
    hooks.reset(force, force_all)
    out = model(input_ids=torch.tensor([prompt], device=DEVICE), use_cache=True)  # as greedy_vs_transformers
    logits = out.logits[0, -1].float()
    top = torch.topk(logits, 2)
    token = int(top.indices[0])
    return {"token": token, "equals_troupe": token == troupe_token,
            "top2": [float(top.values[0]), float(top.values[1])], "second": int(top.indices[1]),
            "troupe_token_logit": float(logits[troupe_token]),
            "margin": float(top.values[0]) - float(logits[troupe_token]),
            "top_gap": float(top.values[0] - top.values[1]),
            "router_choice_mismatches": hooks.mismatch}, logits, hooks.records


def compare_routing(troupe_rows, records, k):
    """Differing (layer, token) pairs, first layer first, and boundary-gap statistics of all pairs."""
    pairs, gaps, per_layer = [], [], {}
    for layer in sorted(records):
        if layer not in troupe_rows:
            fail(f"transformers routed layer {layer}, troupe's dump has no such MoE layer "
                 f"(troupe: {sorted(troupe_rows)})")
        logits, ids = records[layer]["logits"], records[layer]["ids"]
        top = torch.topk(logits, k + 1, dim=-1)
        for t in range(logits.shape[0]):
            kth, next_ = float(top.values[t, k - 1]), float(top.values[t, k])
            gaps.append(kth - next_)
            theirs, ours = set(ids[t].tolist()), set(troupe_rows[layer][t])
            if theirs == ours:
                continue
            order = torch.argsort(logits[t], descending=True).tolist()
            only_troupe = sorted(ours - theirs, key=lambda e: -float(logits[t, e]))
            only_hf = sorted(theirs - ours, key=lambda e: -float(logits[t, e]))
            per_layer[layer] = per_layer.get(layer, 0) + 1
            pairs.append({"layer": layer, "token": t, "only_troupe": only_troupe, "only_transformers": only_hf,
                          "logits_only_troupe": [float(logits[t, e]) for e in only_troupe],
                          "logits_only_transformers": [float(logits[t, e]) for e in only_hf],
                          "transformers_rank_of_only_troupe": [order.index(e) + 1 for e in only_troupe],
                          "kth_logit": kth, "next_logit": next_, "gap_k": kth - next_,
                          "gap_k_bf16_steps": bf16_steps(kth - next_, kth)})
    missing = sorted(set(troupe_rows) - set(records))
    if missing:
        fail(f"troupe routed layers {missing} that transformers' hooks never saw")
    g = torch.tensor(gaps) if gaps else torch.zeros(0)
    worst = max((p["gap_k"] for p in pairs), default=None)
    stats = {"pairs": len(gaps), "exact_boundary_ties": int((g == 0).sum()),
             "median_gap_k": float(g.median()) if len(gaps) else None,
             "largest_gap_k_among_differing": worst,
             "pairs_with_gap_k_at_most_that": int((g <= worst).sum()) if worst is not None else 0}
    return pairs, per_layer, stats


def describe_pair(p):
    fmt = lambda xs: ", ".join(f"{x:.4f}" for x in xs)
    steps = p["gap_k_bf16_steps"]
    return (f"layer {p['layer']} token {p['token']}: only troupe {p['only_troupe']} (transformers' logits "
            f"{fmt(p['logits_only_troupe'])}, its rank {p['transformers_rank_of_only_troupe']}), only transformers "
            f"{p['only_transformers']} ({fmt(p['logits_only_transformers'])}); transformers' k-th/(k+1)-th gap "
            f"{p['gap_k']:.4f}" + (f" ({steps:.2f} bf16 steps)" if steps is not None else ""))


def describe_run(label, r, troupe_token):
    return (f"{label}: transformers {r['token']} ({'=' if r['equals_troupe'] else '!='} troupe's {troupe_token}), "
            f"margin over troupe's token {r['margin']:.4f}, top-2 gap {r['top_gap']:.4f}")


def load_transformers(config):
    """transformers' model in bf16 on the GPU with troupe's dummy weights, as greedy_vs_transformers.py loads it."""
    gvt.check_unit_normal(DEVICE)
    start = time.time()
    with torch.device(DEVICE):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    filled = gvt.fill_transformers_model(model, config.num_hidden_layers)
    print(f"transformers {transformers.__version__}: {filled / 1e9:.2f} B parameters filled with troupe's dummy "
          f"weights in {time.time() - start:.1f} s", file=sys.stderr, flush=True)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model directory (config.json; troupe make-model --config-only)")
    ap.add_argument("--troupe", required=True, help="the troupe binary")
    ap.add_argument("--prompt-indices", default="1,2",
                    help=f"comma-separated indices into prompts_for(vocab, {PROMPT_COUNT}) (default 1,2)")
    ap.add_argument("--batched", action="store_true",
                    help=f"troupe runs all {PROMPT_COUNT} prompts at once, prefilled in one step, as "
                         "greedy_vs_transformers.py runs them (default: each selected prompt alone)")
    ap.add_argument("--out", help="write the whole report here as JSON")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        fail(f"{args.model}/config.json not found")
    if not (os.path.isfile(args.troupe) and os.access(args.troupe, os.X_OK)):
        fail(f"{args.troupe} is not an executable file")
    try:
        indices = [int(x) for x in args.prompt_indices.split(",") if x.strip()]
    except ValueError:
        fail(f"--prompt-indices: expected comma-separated integers, got '{args.prompt_indices}'")
    if not indices or any(i < 0 or i >= PROMPT_COUNT for i in indices):
        fail(f"--prompt-indices: each must be in [0, {PROMPT_COUNT}), got '{args.prompt_indices}'")

    config = transformers.AutoConfig.from_pretrained(args.model)
    k, experts = getattr(config, "num_experts_per_tok", None), getattr(config, "num_experts", None)
    if not k or not experts:
        fail(f"{args.model} is not an MoE model (no num_experts / num_experts_per_tok in its config)")
    prompts = gvt.prompts_for(config.vocab_size, PROMPT_COUNT)

    # troupe first, every prompt, so that its GPU memory is free before transformers loads.
    troupe = troupe_routing_batched(args.troupe, args.model, prompts, indices, k, extra) if args.batched else {}
    for i in indices:
        if not args.batched:
            troupe[i] = troupe_routing(args.troupe, args.model, prompts[i], k, extra)
        token, rows = troupe[i]
        print(f"troupe prompt {i} ({len(prompts[i])} tokens{', batched' if args.batched else ''}): token {token}, "
              f"{len(rows)} MoE layers routed", file=sys.stderr, flush=True)

    model = load_transformers(config)
    routers = find_routers(model, config)
    hooks = RouterHooks(routers, k, experts)

    report = {"model": os.path.basename(os.path.normpath(args.model)), "transformers": transformers.__version__,
              "torch": torch.__version__, "dtype": "bfloat16", "troupe_flags": extra,
              "troupe_prompts": "batched" if args.batched else "alone", "top_k": k,
              "num_experts": experts, "moe_layers": sorted(routers), "prompts": []}
    for i in indices:
        prompt, (troupe_token, troupe_rows) = prompts[i], troupe[i]
        base, base_logits, records = run_transformers(model, hooks, prompt, troupe_token)
        pairs, per_layer, stats = compare_routing(troupe_rows, records, k)
        entry = {"index": i, "prompt_len": len(prompt), "troupe_token": troupe_token, "transformers": base,
                 "differing_pairs": len(pairs), "differing_per_layer": {str(l): n for l, n in per_layer.items()},
                 "first_differing": pairs[0] if pairs else None, "pairs": pairs, "gap_stats": stats}

        # The hooks alone must change nothing: the same run with nothing forced, bit for bit.
        again, again_logits, _ = run_transformers(model, hooks, prompt, troupe_token, force={})
        entry["hooks_noop_identical"] = bool(torch.equal(again_logits, base_logits))

        def forced(force=None, force_all=None):
            r, _, recs = run_transformers(model, hooks, prompt, troupe_token, force, force_all)
            after, _, _ = compare_routing(troupe_rows, recs, k)
            r["pairs_differing_after"] = len(after)
            r["first_differing_after"] = after[0] if after else None
            return r

        if pairs:
            listed = {}
            for p in pairs:
                listed.setdefault(p["layer"], {})[p["token"]] = set(troupe_rows[p["layer"]][p["token"]])
            first = pairs[0]
            entry["forced_listed"] = forced(force=listed)
            entry["forced_first"] = forced(force={first["layer"]: {first["token"]: listed[first["layer"]][first["token"]]}})
            everywhere = {layer: torch.tensor(rows, device=DEVICE) for layer, rows in troupe_rows.items()}
            entry["forced_everywhere"] = forced(force_all=everywhere)
        report["prompts"].append(entry)

        print(f"\nprompt {i} ({len(prompt)} tokens): troupe {troupe_token}, " +
              describe_run("unforced", base, troupe_token).split(": ", 1)[1])
        print(f"  routing: {len(pairs)} of {stats['pairs']} (layer, token) pairs differ"
              + (f"; per layer {dict(sorted(per_layer.items()))}" if pairs else ""))
        if base["router_choice_mismatches"]:
            print(f"  WARNING: at {base['router_choice_mismatches']} tokens the recomputed logits' top-k is not the "
                  "router's own choice: the hook does not see what transformers routed from")
        if not entry["hooks_noop_identical"]:
            print("  WARNING: a second unforced run with the hooks gave other logits: transformers is not "
                  "deterministic here, or the hooks disturb it")
        print(f"  boundary gaps (k-th minus (k+1)-th logit) over all pairs: {stats['exact_boundary_ties']} exact ties, "
              f"median {stats['median_gap_k']:.4f}" if stats["median_gap_k"] is not None else "")
        if pairs:
            print(f"  FIRST differing pair (the one that matters): {describe_pair(pairs[0])}")
            print(f"  the largest gap among differing pairs is {stats['largest_gap_k_among_differing']:.4f}; "
                  f"{stats['pairs_with_gap_k_at_most_that']} of all {stats['pairs']} pairs have a gap that small")
            for p in pairs[1:SHOWN_PAIRS]:
                print(f"    {describe_pair(p)}")
            if len(pairs) > SHOWN_PAIRS:
                print(f"    ... {len(pairs) - SHOWN_PAIRS} more in --out")
            for key, label in (("forced_listed", f"forced at the {len(pairs)} differing pairs"),
                               ("forced_first", "forced at the first differing pair only"),
                               ("forced_everywhere", "forced to troupe's routing at every (layer, token)")):
                r = entry[key]
                print(f"  {describe_run(label, r, troupe_token)}; routing pairs still differing: "
                      f"{r['pairs_differing_after']}")
    hooks.remove()

    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nreport: {args.out}")


if __name__ == "__main__":
    main()
