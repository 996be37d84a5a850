import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MessageStore } from "../src/lib/messages";
import type { ChatMessage } from "../src/lib/types";

function msg(seq: number, sender = "bob", clientMessageId = ""): ChatMessage {
  return {
    conversationId: "room",
    seq,
    messageId: `m${seq}`,
    sender,
    body: `body ${seq}`,
    sentAtMs: 1_000 + seq,
    clientMessageId,
  };
}

const seqs = (s: MessageStore) => s.list().map((e) => e.seq);

describe("message merge", () => {
  it("keeps seq order whatever the arrival order", () => {
    const s = new MessageStore("room");
    for (const n of [5, 3, 9, 1, 7]) s.add(msg(n), "stream");
    assert.deepEqual(seqs(s), [1, 3, 5, 7, 9]);
    assert.equal(s.maxSeq, 9);
    assert.equal(s.minSeq, 1);
  });

  it("history pages, live messages and a resume never show a seq twice", () => {
    const s = new MessageStore("room");
    // Live messages arrive first (after the join's snapshot)...
    for (const n of [121, 122]) s.add(msg(n), "stream", true);
    // ...then the newest page (overlapping what is live)...
    for (let n = 122; n >= 73; n--) s.add(msg(n), "history");
    // ...an older page...
    for (let n = 72; n >= 23; n--) s.add(msg(n), "history");
    // ...a reconnect resumes after the highest seq held, but a gateway may repeat.
    for (const n of [122, 123, 124]) s.add(msg(n), "stream");
    const got = seqs(s);
    assert.deepEqual(got, Array.from({ length: 124 - 23 + 1 }, (_, i) => 23 + i));
    assert.equal(new Set(got).size, got.length);
    // Only the stream's repeat counts as a dropped duplicate.
    assert.equal(s.duplicatesDropped, 1);
  });

  it("reports what was added", () => {
    const s = new MessageStore("room");
    assert.deepEqual(
      [s.add(msg(1), "history").added, s.add(msg(1), "stream").duplicate, s.add(msg(1), "history").duplicate],
      [true, true, true],
    );
  });

  it("keeps history and gaps in order (seqs may be skipped)", () => {
    const s = new MessageStore("room");
    for (const n of [10, 12, 15]) s.add(msg(n), "stream");
    for (const n of [11, 14, 2]) s.add(msg(n), "history");
    assert.deepEqual(seqs(s), [2, 10, 11, 12, 14, 15]);
  });

  it("shows an own send at once, pending after every numbered message", () => {
    const s = new MessageStore("room");
    s.add(msg(1), "stream");
    const mine = s.addPending("c1", "alice", "hello", "r1", 5000);
    s.add(msg(2), "stream");
    assert.deepEqual(s.list().map((e) => e.seq ?? e.clientMessageId), [1, 2, "c1"]);
    assert.equal(mine.local?.requestId, "r1");
  });

  it("SendAccepted then the stream echo: one entry, in place", () => {
    const s = new MessageStore("room");
    const mine = s.addPending("c1", "alice", "hello", "r1", 5000);
    s.add(msg(1), "stream");
    const accepted = s.accept("c1", 2, "m2");
    assert.equal(accepted, mine);
    assert.equal(mine.seq, 2);
    assert.equal(mine.confirmed, false);
    const echo = s.add({ ...msg(2, "alice", "c1"), body: "hello" }, "stream");
    assert.equal(echo.entry, mine);
    assert.equal(echo.duplicate, false);
    assert.equal(mine.confirmed, true);
    assert.equal(mine.sentAtMs, 1002);
    assert.deepEqual(seqs(s), [1, 2]);
    assert.equal(s.duplicatesDropped, 0);
    assert.equal(s.pendingSends().length, 0);
  });

  it("the stream echo before SendAccepted: one entry", () => {
    const s = new MessageStore("room");
    const mine = s.addPending("c1", "alice", "hello", "r1", 5000);
    const echo = s.add(msg(7, "alice", "c1"), "stream");
    assert.equal(echo.entry, mine);
    assert.equal(echo.added, true);
    assert.equal(s.accept("c1", 7, "m7"), mine);
    assert.deepEqual(seqs(s), [7]);
  });

  it("does not take another sender's message for an own pending send", () => {
    const s = new MessageStore("room");
    s.addPending("c1", "alice", "hello", "r1", 5000);
    s.add(msg(3, "bob", "c1"), "stream");
    assert.equal(s.pendingSends().length, 1);
    assert.equal(s.list().length, 2);
  });

  it("a retried send accepted as a duplicate of a message already held stays single", () => {
    const s = new MessageStore("room");
    s.addPending("c1", "alice", "hello", "r1", 5000);
    // History brought the message (without a key to match, say).
    s.add(msg(4, "alice"), "history");
    s.accept("c1", 4, "m4");
    assert.deepEqual(seqs(s), [4]);
    assert.equal(s.pendingSends().length, 0);
  });

  it("fails and retries a send under the same client_message_id", () => {
    const s = new MessageStore("room");
    const mine = s.addPending("c1", "alice", "hello", "r1", 5000);
    assert.equal(s.fail("c1", "RESOURCE_EXHAUSTED: slow down"), mine);
    assert.equal(mine.local?.failed, true);
    s.retry("c1", "r2");
    assert.deepEqual(mine.local, { requestId: "r2", failed: false, error: "" });
    assert.equal(mine.clientMessageId, "c1");
    assert.equal(s.fail("unknown", "x"), undefined);
  });

  it("marks live messages only from the stream", () => {
    const s = new MessageStore("room");
    assert.equal(s.add(msg(1), "stream", true).entry.live, true);
    assert.equal(s.add(msg(2), "history", true).entry.live, false);
    assert.equal(s.add(msg(3), "stream", false).entry.live, false);
  });
});
