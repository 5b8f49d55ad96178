// The official OpenAI Node client against a troupe server: what programs written for the OpenAI API
// see. Engine-agnostic checks (shapes, usage arithmetic, stream == non-stream under greedy sampling,
// the error classes) always run; `--fake` adds the exact texts of tests/fake_engine.hpp.
//
//   node tests/openai_client.mjs BASE_URL MODEL [--fake]     e.g. http://127.0.0.1:8000/v1 qwen3
//
// Exits 0 when every check passes; prints the failed checks otherwise. OPENAI_API_KEY is sent if set.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "tools", "node", "node_modules", "noop.js"));
const OpenAI = require("openai").default;

const [baseURL, model, flag] = process.argv.slice(2);
if (!baseURL || !model) {
  console.error("usage: node tests/openai_client.mjs BASE_URL MODEL [--fake]");
  process.exit(2);
}
const fake = flag === "--fake";
const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY || "unused", maxRetries: 0, timeout: 60000 });

const failures = [];
function check(condition, what) {
  if (!condition) failures.push(what);
}
function eq(actual, expected, what) {
  check(JSON.stringify(actual) === JSON.stringify(expected), `${what}: got ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
}
function checkUsage(usage, what) {
  check(usage && usage.prompt_tokens > 0 && usage.completion_tokens > 0, `${what}: usage counts ${JSON.stringify(usage)}`);
  if (usage) eq(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens, `${what}: total_tokens`);
}

async function models() {
  const list = await client.models.list();
  const card = list.data.find((m) => m.id === model);
  check(card !== undefined, `models: ${model} is listed`);
  check(card && card.object === "model" && card.max_model_len > 0, "models: card has object and max_model_len");
  const one = await client.models.retrieve(model);
  eq(one.id, model, "models.retrieve");
}

async function completions() {
  const params = { model, prompt: "Hello", max_tokens: 5, temperature: 0 };
  const r = await client.completions.create(params);
  eq(r.object, "text_completion", "completion: object");
  check(r.id.startsWith("cmpl-"), "completion: id prefix");
  eq(r.choices.length, 1, "completion: one choice");
  check(typeof r.choices[0].text === "string", "completion: text");
  check(["length", "stop"].includes(r.choices[0].finish_reason), "completion: finish_reason");
  checkUsage(r.usage, "completion");
  check(r.usage.completion_tokens <= 5, "completion: max_tokens respected");
  if (fake) {
    eq(r.choices[0].text, "Hello", "completion: fake text");
    eq(r.usage, { prompt_tokens: 5, total_tokens: 10, completion_tokens: 5 }, "completion: fake usage");
  }

  let text = "";
  let usage = null;
  let finish = null;
  const stream = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  eq(text, r.choices[0].text, "completion stream: same text as without streaming (greedy)");
  eq(finish, r.choices[0].finish_reason, "completion stream: finish_reason");
  eq(usage, r.usage, "completion stream: usage chunk");

  const n = await client.completions.create({ model, prompt: ["a", "b"], n: 2, max_tokens: 2, temperature: 0 });
  eq(n.choices.map((c) => c.index), [0, 1, 2, 3], "completion: prompts x n choices");
}

async function chat() {
  const params = { model, messages: [{ role: "user", content: "Say hello" }], max_tokens: 8, temperature: 0 };
  const r = await client.chat.completions.create(params);
  eq(r.object, "chat.completion", "chat: object");
  check(r.id.startsWith("chatcmpl-"), "chat: id prefix");
  eq(r.choices[0].message.role, "assistant", "chat: role");
  check(typeof r.choices[0].message.content === "string", "chat: content");
  checkUsage(r.usage, "chat");
  if (fake) eq(r.choices[0].message.content, "Say hell", "chat: fake content");

  let content = "";
  let role = null;
  let finish = null;
  let usage = null;
  let chunks = 0;
  let usageChunks = 0;
  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  for await (const chunk of stream) {
    eq(chunk.object, "chat.completion.chunk", "chat stream: object");
    if (chunks++ === 0) role = chunk.choices[0]?.delta?.role;
    if (chunk.usage) {
      usage = chunk.usage;
      usageChunks++;
      eq(chunk.choices.length, 0, "chat stream: usage chunk has no choices");
    }
    for (const c of chunk.choices) {
      content += c.delta.content ?? "";
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  eq(role, "assistant", "chat stream: first delta has the role");
  eq(content, r.choices[0].message.content, "chat stream: same content as without streaming (greedy)");
  eq(finish, r.choices[0].finish_reason, "chat stream: finish_reason");
  eq(usageChunks, 1, "chat stream: one usage chunk");
  eq(usage, r.usage, "chat stream: usage");
}

async function embeddings() {
  // The client asks for base64 and decodes it unless a format is given: exercise both.
  for (const format of [undefined, "float"]) {
    const r = await client.embeddings.create({ model, input: ["a", "bc"], ...(format ? { encoding_format: format } : {}) });
    const what = `embeddings (${format ?? "base64"})`;
    eq(r.object, "list", `${what}: object`);
    eq(r.data.map((d) => d.index), [0, 1], `${what}: indexes`);
    const v = r.data[0].embedding;
    check(Array.isArray(v) && v.length > 0, `${what}: a vector`);
    const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    check(Math.abs(norm - 1) < 1e-3, `${what}: L2-normalised (norm ${norm})`);
    check(r.usage.prompt_tokens > 0, `${what}: usage`);
  }
}

async function errors() {
  try {
    await client.chat.completions.create({ model, messages: [{ role: "user", content: "x" }], temperature: -1 });
    failures.push("errors: temperature -1 was accepted");
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError, `errors: BadRequestError, got ${e?.constructor?.name}`);
    eq(e.status, 400, "errors: status");
    eq(e.error?.message, "temperature must be non-negative, got -1.0", "errors: message");
    eq(e.param, "temperature", "errors: param");
  }
  try {
    await client.completions.create({ model: "no-such-model", prompt: "x" });
    failures.push("errors: an unknown model was accepted");
  } catch (e) {
    check(e instanceof OpenAI.NotFoundError, `errors: NotFoundError, got ${e?.constructor?.name}`);
    eq(e.error?.message, "The model `no-such-model` does not exist.", "errors: unknown model message");
  }
  try {
    await client.completions.create({ model, prompt: "x", max_tokens: 100000000 });
    failures.push("errors: max_tokens beyond the context was accepted");
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError, `errors: context BadRequestError, got ${e?.constructor?.name}`);
    check(/maximum context length/.test(e.error?.message ?? ""), `errors: context message: ${e.error?.message}`);
  }
}

for (const [name, test] of Object.entries({ models, completions, chat, embeddings, errors })) {
  try {
    await test();
  } catch (e) {
    failures.push(`${name}: threw ${e?.stack ?? e}`);
  }
}
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
console.log("openai client: all checks passed");
