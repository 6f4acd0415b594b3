// The TypeScript SDK against a live `sfm serve` (SFM_URL; tests/test_typescript.py starts it).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { BadRequest, Memory, NotFound, RateLimited } from "../src/index.js";

const url = process.env.SFM_URL;
const memory = new Memory({ url });
const ns = () => `ts-${randomUUID().slice(0, 8)}`;

test("remember, recall, get, update, forget", { skip: !url }, async () => {
  const space = ns();
  const stored = await memory.remember("Alice prefers the window seat on long flights", {
    namespace: space,
    importance: 0.8,
    metadata: { user: "alice" },
  });
  assert.match(stored.id, /^mem_/);
  const again = await memory.remember("Alice prefers the window seat on long flights", { namespace: space });
  assert.equal(again.deduplicated, true);
  assert.equal(again.id, stored.id);
  await memory.remember("Bob's dentist appointment is on Tuesday", { namespace: space });
  const found = await memory.recall("where does Alice like to sit on a plane?", { namespace: space, top_k: 2 });
  assert.equal(found.memories[0].id, stored.id);
  assert.deepEqual(found.memories[0].metadata, { user: "alice" });
  assert.deepEqual((await memory.recall("Alice", { namespace: space, filters: { user: "bob" } })).memories, []);
  const changed = await memory.update(stored.id, { importance: 0.3 });
  assert.equal(changed.importance, 0.3);
  assert.equal((await memory.get(stored.id)).status, "valid");
  await memory.forget(stored.id);
  await assert.rejects(memory.get(stored.id), (error: unknown) => {
    assert.ok(error instanceof NotFound);
    assert.equal(error.code, "memory_not_found");
    assert.equal(error.status, 404);
    return true;
  });
});

test("list pages with async iteration, batch, links, graph, namespaces, purge", { skip: !url }, async () => {
  const space = ns();
  const stored = await memory.batch(
    Array.from({ length: 5 }, (_, i) => ({ content: `Standup ${i}: the payment bug slipped`, namespace: space })),
  );
  assert.equal(stored.length, 5);
  const seen: string[] = [];
  for await (const record of memory.list({ namespace: space, pageSize: 2 })) seen.push(record.id);
  assert.deepEqual(seen.sort(), stored.map((s) => s.id).sort());
  const link = await memory.link(stored[0].id, stored[1].id, "related", 0.5);
  assert.equal(link.kind, "related");
  assert.ok((await memory.links(stored[0].id)).some((l) => l.target === stored[1].id && l.kind === "related"));
  const graph = await memory.graph(stored[0].id, { kinds: ["related"] });
  assert.deepEqual(graph.nodes.map((n) => n.id).sort(), [stored[0].id, stored[1].id].sort());
  await memory.unlink(stored[0].id, stored[1].id, "related");
  const job = await memory.consolidate(space);
  assert.equal(job.status, "succeeded");
  assert.equal((await memory.job(job.id)).id, job.id);
  assert.equal((await memory.namespace(space)).by_type["episodic"], 5);
  assert.ok((await memory.namespaces()).some((n) => n.namespace === space));
  const would = await memory.purge({ namespace: space, all: true, dryRun: true });
  assert.equal(would.dry_run, true);
  assert.ok(would.memories >= 5);
  const text = await memory.export([space]);
  assert.equal(text.trim().split("\n").length, would.memories);
  const erased = await memory.deleteNamespace(space);
  assert.equal(erased.memories, would.memories);
  const back = await memory.import(text);
  assert.equal(back.memories, would.memories);
  assert.equal((await memory.purge({ namespace: space, all: true })).memories, would.memories);
});

test("versions of a key, as_of and history", { skip: !url }, async () => {
  const space = ns();
  const lisbon = await memory.remember("Alice lives in Lisbon", { namespace: space, key: "alice/city", valid_from: "2024-01-01T00:00:00Z" });
  const berlin = await memory.remember("Alice lives in Berlin", { namespace: space, key: "alice/city", valid_from: new Date("2024-06-01T00:00:00Z") });
  assert.deepEqual(berlin.supersedes, [lisbon.id]);
  assert.deepEqual((await memory.history(berlin.id)).map((m) => m.id), [lisbon.id, berlin.id]);
  const then = await memory.recall("Where does Alice live?", { namespace: space, as_of: "2024-03-01T00:00:00Z" });
  assert.deepEqual(then.memories.map((h) => h.id), [lisbon.id]);
  const current = [];
  for await (const record of memory.list({ namespace: space, key: "alice/city" })) current.push(record.id);
  assert.deepEqual(current, [berlin.id]);
});

test("errors carry the service's code; 429 and 503 are retried honouring Retry-After", { skip: !url }, async () => {
  await assert.rejects(memory.remember("x", { importance: 3 }), (error: unknown) => {
    assert.ok(error instanceof BadRequest);
    assert.equal(error.code, "validation_error");
    return true;
  });
  let calls = 0;
  const flaky = new Memory({
    url: "http://127.0.0.1:1",
    retries: 2,
    backoffMs: 1,
    fetch: async () => {
      calls += 1;
      if (calls < 3) {
        return new Response(JSON.stringify({ error: { code: "rate_limited", message: "slow down" } }), {
          status: 429,
          headers: { "Retry-After": "0" },
        });
      }
      return new Response(JSON.stringify({ id: "mem_x", deleted: true }), { status: 200 });
    },
  });
  await flaky.forget("mem_x");
  assert.equal(calls, 3);
  const impatient = new Memory({
    retries: 0,
    fetch: async () =>
      new Response(JSON.stringify({ error: { code: "rate_limited", message: "slow down" } }), { status: 429 }),
  });
  await assert.rejects(impatient.get("mem_x"), RateLimited);
});
