// The Vercel AI SDK (`ai` 6, `@ai-sdk/openai`, `@ai-sdk/anthropic`, pinned in package.json and
// package-lock.json) against a real `quota serve` with a sandbox key (issue 16.9, SPEC §14):
// its strict stream parsers accept what Quota sends, streaming and not, for both providers.
// Its Anthropic parser accepts only Anthropic's event types, so those streams are read with
// the separate `event: quota_usage` turned off (by header, and by the key's setting); `quota`
// is then on the final `message_delta`, which the SDK hands over as a raw chunk.
//
// Run by scripts/test (`scripts/test js`): `npm ci` from the npm registry, then `node --test`.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { embed, embedMany, generateText, streamText } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { createAnthropic } from "@ai-sdk/anthropic";

const here = dirname(fileURLToPath(import.meta.url));
const QUOTA_BIN = process.env.QUOTA_BIN || resolve(here, "../../target/debug/quota");

let server;
let workdir;
let base;
let session;
let key;
let keyId;

/** Start `quota serve --port 0` on a fresh SQLite file; resolve with its base URL. */
function startQuota() {
  workdir = mkdtempSync(join(tmpdir(), "quota-ai-sdk-"));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("QUOTA_")));
  Object.assign(env, {
    QUOTA_DATABASE_URL: `sqlite://${join(workdir, "quota.db")}`,
    QUOTA_BIND: "127.0.0.1",
    QUOTA_WELCOME_CREDITS: "1000000",
    QUOTA_RATE_LIMIT_PER_MINUTE: "1000000",
    NO_COLOR: "1",
  });
  server = spawn(QUOTA_BIN, ["serve", "--port", "0"], { cwd: workdir, env, stdio: ["ignore", "pipe", "ignore"] });
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("quota serve did not start in 30 s")), 30_000);
    let out = "";
    server.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/Quota listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
      }
    });
    server.on("exit", (code) => fail(new Error(`quota serve exited with ${code}`)));
  });
}

async function call(method, path, body, bearer) {
  const r = await fetch(base + path, {
    method,
    headers: { "content-type": "application/json", ...(bearer ? { authorization: `Bearer ${bearer}` } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await r.json();
  assert.ok(r.ok, `${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

before(async () => {
  base = await startQuota();
  const reg = await call("POST", "/auth/register", { email: "sdk@example.com", password: "correct horse battery" });
  session = reg.session_token;
  const k = await call("POST", "/developers/keys", { name: "ai sdk", billing_mode: "test" }, session);
  key = k.key;
  keyId = k.id;
});

after(() => {
  server?.kill("SIGTERM");
  if (workdir) rmSync(workdir, { recursive: true, force: true });
});

const openai = () => createOpenAI({ baseURL: `${base}/v1`, apiKey: key });
const anthropic = (headers = {}) => createAnthropic({ baseURL: `${base}/v1`, apiKey: key, headers });

/** Every part of a `streamText` run, raw chunks included. */
async function parts(result) {
  const out = [];
  for await (const p of result.fullStream) out.push(p);
  return out;
}

function assertClean(all) {
  const errors = all.filter((p) => p.type === "error");
  assert.deepEqual(errors, [], `stream errors: ${JSON.stringify(errors)}`);
  const finish = all.find((p) => p.type === "finish");
  assert.ok(finish, "the stream finished");
  assert.ok(finish.totalUsage.outputTokens > 0, JSON.stringify(finish.totalUsage));
}

test("openai chat completions, not streamed", async () => {
  const r = await generateText({ model: openai().chat("gpt-4o-mini"), prompt: "Say hello", maxOutputTokens: 20 });
  assert.ok(r.text.length > 0);
  assert.ok(r.usage.outputTokens > 0);
  assert.ok(r.response.body.quota.credits_used > 0, "quota stays in the body");
});

test("openai chat completions, streamed", async () => {
  const r = streamText({ model: openai().chat("gpt-4o-mini"), prompt: "Say hello", maxOutputTokens: 20, includeRawChunks: true });
  const all = await parts(r);
  assertClean(all);
  const raw = all.filter((p) => p.type === "raw").map((p) => p.rawValue);
  assert.ok(raw.some((c) => c.quota && c.quota.credits_used > 0), "the final chunk carries quota");
  assert.ok((await r.text).length > 0);
});

// The provider's default model factory, `openai(model)`, speaks the Responses API (issue 17).
test("openai default provider (Responses API), not streamed", async () => {
  const r = await generateText({ model: openai()("gpt-4o-mini"), prompt: "Say hello", maxOutputTokens: 20 });
  assert.ok(r.text.length > 0);
  assert.ok(r.usage.outputTokens > 0);
  assert.ok(r.response.body.quota.credits_used > 0, "quota is in the response body");
});

test("openai default provider (Responses API), streamed", async () => {
  const r = streamText({ model: openai()("gpt-4o-mini"), prompt: "Say hello", maxOutputTokens: 20, includeRawChunks: true });
  const all = await parts(r);
  assertClean(all);
  const raw = all.filter((p) => p.type === "raw").map((p) => p.rawValue);
  const completed = raw.find((c) => c.type === "response.completed");
  assert.ok(completed && completed.response.quota.credits_used > 0, "response.completed carries quota");
  assert.ok((await r.text).length > 0);
});

test("openai embeddings through embed and embedMany", async () => {
  const one = await embed({ model: openai().textEmbeddingModel("text-embedding-3-small"), value: "a ledger" });
  assert.equal(one.embedding.length, 1536);
  const many = await embedMany({ model: openai().textEmbeddingModel("text-embedding-3-small"), values: ["a ledger", "a wallet"] });
  assert.equal(many.embeddings.length, 2);
  assert.deepEqual(many.embeddings[0], one.embedding, "the same input gives the same vector");
  assert.ok(many.usage.tokens > 0);
});

test("anthropic messages, not streamed", async () => {
  const r = await generateText({ model: anthropic()("claude-sonnet-4-5"), prompt: "Say hello", maxOutputTokens: 20 });
  assert.ok(r.text.length > 0);
  assert.ok(r.usage.outputTokens > 0);
  assert.ok(r.response.body.quota.credits_used > 0);
});

test("anthropic messages, streamed, quota_usage off by the X-Quota-Usage-Event: off header", async () => {
  const model = anthropic({ "X-Quota-Usage-Event": "off" })("claude-sonnet-4-5");
  const r = streamText({ model, prompt: "Say hello", maxOutputTokens: 20, includeRawChunks: true });
  const all = await parts(r);
  assertClean(all);
  const raw = all.filter((p) => p.type === "raw").map((p) => p.rawValue);
  const delta = raw.filter((c) => c.type === "message_delta").at(-1);
  assert.ok(delta?.quota?.credits_used > 0, `quota on the final message_delta: ${JSON.stringify(delta)}`);
  assert.ok(!raw.some((c) => c.type === "quota_usage"));
  assert.ok((await r.text).length > 0);
});

// What issue 16.9 reported, kept as a fact about the SDK: with the documented event left on,
// its strict parser reports the unknown `quota_usage` event (the text still arrives).
test("anthropic messages, streamed, with the documented quota_usage event", async () => {
  const r = streamText({ model: anthropic()("claude-sonnet-4-5"), prompt: "Say hello", maxOutputTokens: 20 });
  const all = await parts(r);
  assert.ok((await r.text).length > 0);
  const errors = all.filter((p) => p.type === "error");
  assert.equal(errors.length, 1, JSON.stringify(errors));
  assert.equal(errors[0].error.name, "AI_TypeValidationError");
});

test("anthropic messages, streamed, quota_usage off by the key's setting", async () => {
  await call("PATCH", `/developers/keys/${keyId}`, { quota_usage_event: false }, session);
  try {
    const r = streamText({ model: anthropic()("claude-sonnet-4-5"), prompt: "Say hello", maxOutputTokens: 20, includeRawChunks: true });
    const all = await parts(r);
    assertClean(all);
    const delta = all.filter((p) => p.type === "raw" && p.rawValue.type === "message_delta").at(-1);
    assert.ok(delta.rawValue.quota.credits_used > 0);
  } finally {
    await call("PATCH", `/developers/keys/${keyId}`, { quota_usage_event: true }, session);
  }
});
