// The chat page (GET /) in headless Chromium, as a person uses it: type a message, send it, watch
// the reply stream in, stop a second reply mid-stream, and leave a screenshot to look at.
//
//   node tests/chat_page.mjs BASE_URL SCREENSHOT_PATH     e.g. http://127.0.0.1:8000 /tmp/chat.png
//
// SCREENSHOT_PATH shows the finished conversation; a second picture beside it, named with
// "-streaming" (/tmp/chat-streaming.png), shows the page mid-reply with Stop enabled.
//
// Drives Debian's Chromium (CHROMIUM overrides the path) through playwright-core; playwright never
// downloads a browser here. Exits 0 when every check passes, 1 with the reasons otherwise.
import { createRequire } from "node:module";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "tools", "node", "node_modules", "noop.js"));
const { chromium } = require("playwright-core");

const [baseURL, screenshotPath] = process.argv.slice(2);
if (!baseURL || !screenshotPath) {
  console.error("usage: node tests/chat_page.mjs BASE_URL SCREENSHOT_PATH");
  process.exit(2);
}

const streamingPath = screenshotPath.replace(/(\.png)?$/i, "-streaming.png");
const failures = [];
const check = (condition, what) => condition || failures.push(what);

// Runs in the page: records what the last assistant entry showed after every change of the
// conversation. A MutationObserver callback runs after each task, so each WebSocket delta the page
// renders is one observation even when the tiny model streams faster than anything could poll.
function watchReplies() {
  window.__observations = [];
  const messages = document.getElementById("messages");
  new MutationObserver(() => {
    const replies = messages.querySelectorAll(".message.assistant, .message.error");
    const reply = replies[replies.length - 1];
    if (!reply) return;
    // The reply's own text, without the finish line the page appends when it is done.
    const text = [...reply.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE).map((n) => n.data).join("");
    window.__observations.push({
      turn: replies.length,
      length: text.length,
      finished: reply.dataset.finishReason ?? null,
      sendDisabled: document.getElementById("send").disabled,
      stopDisabled: document.getElementById("stop").disabled,
    });
  }).observe(messages, { childList: true, subtree: true, characterData: true, attributes: true });
}

// The page's reply `turn` (1-based) once it carries a finish reason, with its visible parts.
async function finishedReply(page, turn, timeout) {
  const reply = page.locator(".message.assistant, .message.error").nth(turn - 1);
  await reply.and(page.locator("[data-finish-reason]")).waitFor({ timeout });
  return reply.evaluate((element) => ({
    className: element.className,
    finishReason: element.dataset.finishReason,
    text: [...element.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE).map((n) => n.data).join(""),
    meta: element.querySelector(".meta")?.textContent ?? "",
  }));
}

fs.mkdirSync(path.dirname(path.resolve(screenshotPath)), { recursive: true });
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "troupe-chromium-"));
let context;
let page;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run"],
    viewport: { width: 960, height: 640 },
    timeout: 20000,
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(10000);
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));
  page.on("console", (message) => message.type() === "error" && pageErrors.push(message.text()));
  // The page must stand alone: the machines that run it have no network.
  const foreign = [];
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(baseURL) && !url.startsWith("data:")) foreign.push(url);
  });

  const response = await page.goto(baseURL + "/");
  check(response.status() === 200, `GET / answered ${response.status()}`);
  check((await page.title()).length > 0, "the page has no title");
  check((await page.locator("h1").innerText()).trim().length > 0, "the page shows no heading");
  await page.locator("#status.connected").waitFor();
  const models = await (await fetch(baseURL + "/v1/models")).json();
  const model = models.data[0];
  await page.locator("#model", { hasText: model.id }).waitFor();
  check(await page.locator("#stop").isDisabled(), "#stop is enabled before anything streams");
  await page.evaluate(watchReplies);

  // Turn 1: greedy, so that the screenshot shows the same reply on every run; a few dozen tokens are
  // enough to see it stream and keep the picture readable.
  const question = "Tell me a short story about a lighthouse.";
  await page.locator("#temperature").fill("0");
  await page.locator("#max-tokens").fill("40");
  await page.locator("#input").pressSequentially(question);
  await page.locator("#send").click();
  const first = await finishedReply(page, 1, 20000);
  const user = await page.locator(".message.user").first().innerText();
  check(user === question, `the user's message shows ${JSON.stringify(user)}, not the question`);
  check(await page.locator("#input").inputValue() === "", "the input is not cleared after sending");
  check(first.className === "message assistant", `the reply is shown as ${first.className}: ${first.text}`);
  check(first.finishReason === "length" || first.finishReason === "stop",
        `the reply finished with ${first.finishReason}`);
  check(first.text.trim().length > 0, "the reply is empty");
  check(/\d+ tokens/.test(first.meta), `the finished reply shows no token count: ${JSON.stringify(first.meta)}`);
  check(await page.locator("#stop").isDisabled() && await page.locator("#send").isEnabled(),
        "after the reply, #send is not enabled again or #stop is still enabled");

  const observations = await page.evaluate(() => window.__observations);
  const streaming = observations.filter((o) => o.turn === 1 && o.finished === null);
  const lengths = [...new Set(streaming.map((o) => o.length))].filter((n) => n > 0);
  check(lengths.length >= 2, `the reply did not stream: while unfinished it showed lengths ${JSON.stringify(lengths)}`);
  check(streaming.every((o, i) => i === 0 || o.length >= streaming[i - 1].length), "the streamed reply shrank");
  // `done` carries no text: what streamed last is the whole reply.
  check(lengths.length === 0 || lengths[lengths.length - 1] === first.text.length,
        `the reply streamed ${lengths[lengths.length - 1]} characters but shows ${first.text.length} when done`);
  check(streaming.every((o) => o.sendDisabled && !o.stopDisabled),
        "while streaming, #send must be disabled and #stop enabled");

  // Turn 2, sent with Enter: an empty max tokens asks for the rest of the context, so the reply is
  // still streaming when Stop is clicked once its first text shows.
  await page.locator("#max-tokens").fill("");
  await page.locator("#input").fill("Now a long one, please.");
  await page.locator("#input").press("Enter");
  const second = page.locator(".message.assistant").nth(1);
  await second.filter({ hasText: /\S/ }).waitFor();
  await page.screenshot({ path: streamingPath });
  await page.locator("#stop").click();
  const stopped = await finishedReply(page, 2, 10000);
  check(stopped.finishReason === "abort", `Stop did not abort the reply: it finished with ${stopped.finishReason}`);
  check(stopped.text.length > 0, "the stopped reply lost its text");
  check(await page.locator("#send").isEnabled(), "after Stop, #send is not enabled again");

  await page.locator("#input").fill("Thanks!");  // shows a composed message next to the finished turns
  await page.screenshot({ path: screenshotPath });
  check(pageErrors.length === 0, `the page logged errors: ${pageErrors.join(" | ")}`);
  check(foreign.length === 0, `the page loaded resources from elsewhere: ${foreign.join(" ")}`);
  console.log(`reply 1 (${first.finishReason}, ${lengths.length} streamed lengths): ${JSON.stringify(first.text)}`);
  console.log(`reply 2 (${stopped.finishReason}): ${stopped.text.length} characters before Stop`);
  console.log(`screenshots: ${path.resolve(screenshotPath)} ${path.resolve(streamingPath)}`);
} catch (error) {
  failures.push(`${error.name}: ${error.message}`);
  // What the page showed when it went wrong is the quickest way to see why.
  await page?.screenshot({ path: screenshotPath }).catch(() => {});
} finally {
  await context?.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}

if (failures.length) {
  console.error("chat page FAILED:\n  " + failures.join("\n  "));
  process.exit(1);
}
console.log("chat page: ok");
