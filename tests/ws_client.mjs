// The `ws` client speaking troupe's WebSocket chat protocol (README, "WebSocket chat"): two
// conversations at once on one socket, one cancelled mid-stream, plus the protocol's error replies.
//
//   node tests/ws_client.mjs BASE_URL MODEL [--fake]     e.g. http://127.0.0.1:8000 qwen3
//
// Exits 0 when every check passes. `--fake` adds the exact texts of tests/fake_engine.hpp.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "tools", "node", "node_modules", "noop.js"));
const WebSocket = require("ws");

const [baseURL, model, flag] = process.argv.slice(2);
if (!baseURL || !model) {
  console.error("usage: node tests/ws_client.mjs BASE_URL MODEL [--fake]");
  process.exit(2);
}
const fake = flag === "--fake";
const failures = [];
const check = (condition, what) => condition || failures.push(what);

// The long conversation must still be running when it is cancelled: ask for most of the context.
const models = await (await fetch(`${baseURL}/v1/models`)).json();
const maxModelLen = models.data[0].max_model_len;
const longTokens = Math.max(16, maxModelLen - 100);

const socket = new WebSocket(baseURL.replace(/^http/, "ws") + "/v1/ws");
const conversations = new Map();  // id -> {deltas: [], done, error}
const waiters = new Map();
function conversation(id) {
  if (!conversations.has(id)) conversations.set(id, { deltas: [], done: null, error: null });
  return conversations.get(id);
}
function ended(id) {
  const c = conversation(id);
  if (c.done || c.error) return Promise.resolve(c);
  return new Promise((resolve) => waiters.set(id, resolve));
}
let cancelSent = false;
socket.on("message", (data) => {
  const m = JSON.parse(data.toString());
  const c = conversation(m.id ?? "null");
  if (m.type === "delta") {
    check(c.done === null, `${m.id}: delta after done`);
    c.deltas.push(m.content);
    // Cancel the long one once it is visibly streaming.
    if (m.id === "long" && c.deltas.length === 3 && !cancelSent) {
      cancelSent = true;
      socket.send(JSON.stringify({ type: "cancel", id: "long" }));
    }
  } else if (m.type === "done") {
    c.done = m;
  } else if (m.type === "error") {
    c.error = m;
  } else {
    failures.push(`unknown server message ${data}`);
  }
  if ((c.done || c.error) && waiters.has(m.id ?? "null")) waiters.get(m.id ?? "null")(c);
});
await new Promise((resolve, reject) => {
  socket.once("open", resolve);
  socket.once("error", reject);
});

const messages = (text) => [{ role: "user", content: text }];
socket.send(JSON.stringify({ type: "chat", id: "long", model, messages: messages("tell a long story"), max_tokens: longTokens,
                             ignore_eos: true, temperature: 0 }));
socket.send(JSON.stringify({ type: "chat", id: "short", messages: messages("hi there"), max_tokens: 6, temperature: 0 }));
// Errors: a bad parameter names it and carries the id; a message without an id gets id null.
socket.send(JSON.stringify({ type: "chat", id: "bad", messages: messages("x"), temperature: -1 }));
socket.send(JSON.stringify({ type: "chat", messages: messages("x") }));

const timeout = setTimeout(() => {
  console.error("timed out; state: " + JSON.stringify([...conversations]));
  process.exit(1);
}, 60000);
const [long, short, bad, anonymous] = await Promise.all([ended("long"), ended("short"), ended("bad"), ended("null")]);
clearTimeout(timeout);

check(long.done?.finish_reason === "abort", `long: finish_reason ${JSON.stringify(long.done ?? long.error)}, expected abort`);
check(long.deltas.length >= 3, `long: ${long.deltas.length} deltas before the cancel`);
check(long.done?.usage?.completion_tokens < longTokens, "long: stopped early");
check(["length", "stop"].includes(short.done?.finish_reason), `short: finish_reason ${JSON.stringify(short.done ?? short.error)}`);
check(short.done?.usage?.completion_tokens > 0 && short.done.usage.completion_tokens <= 6, "short: usage");
check(short.done?.usage?.total_tokens === short.done?.usage?.prompt_tokens + short.done?.usage?.completion_tokens, "short: total");
if (fake) check(short.deltas.join("") === "hi the", `short: text '${short.deltas.join("")}'`);
check(bad.error?.error?.param === "temperature" && bad.error.error.code === 400, `bad: ${JSON.stringify(bad.error)}`);
check(anonymous.error?.id === null && anonymous.error.error.param === "id", `anonymous: ${JSON.stringify(anonymous.error)}`);

// The socket still works after all that, and a reused id is fine once its conversation ended.
conversations.delete("short");
socket.send(JSON.stringify({ type: "chat", id: "short", messages: messages("again"), max_tokens: 2, temperature: 0 }));
const again = await ended("short");
check(again.done && again.done.usage.completion_tokens <= 2, `again: ${JSON.stringify(again.done ?? again.error)}`);
socket.close();

if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
console.log("ws client: all checks passed");
