import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { UnreadCounter } from "../src/lib/unread";

describe("unread counts", () => {
  it("starts from ListConversations and counts others' new messages", () => {
    const u = new UnreadCounter({ unread: 3, lastReadSeq: 7, upToSeq: 10 });
    assert.equal(u.count, 3);
    assert.equal(u.onMessage(11, false), true);
    assert.equal(u.onMessage(12, false), true);
    assert.equal(u.count, 5);
  });

  it("does not count own messages, repeats, or what the server's count covers", () => {
    const u = new UnreadCounter({ unread: 3, lastReadSeq: 7, upToSeq: 10 });
    assert.equal(u.onMessage(11, true), false);
    assert.equal(u.onMessage(9, false), false);
    assert.equal(u.onMessage(12, false), true);
    assert.equal(u.onMessage(12, false), false);
    assert.equal(u.count, 4);
  });

  it("reading up to the latest clears it; reading part way clears part", () => {
    const u = new UnreadCounter({ unread: 2, lastReadSeq: 8, upToSeq: 10 });
    u.onMessage(11, false);
    u.onMessage(12, false);
    u.onMessage(13, false);
    assert.equal(u.count, 5);
    assert.equal(u.onRead(12), true);
    assert.equal(u.count, 1);
    assert.equal(u.lastReadSeq, 12);
    u.onRead(13);
    assert.equal(u.count, 0);
    // Nothing counts at or below the read marker afterwards.
    assert.equal(u.onMessage(13, false), false);
    assert.equal(u.onMessage(14, false), true);
    assert.equal(u.count, 1);
  });

  it("starts at zero for a conversation not listed", () => {
    const u = new UnreadCounter();
    assert.equal(u.count, 0);
    u.onMessage(1, false);
    assert.equal(u.count, 1);
  });

  it("a fresh summary replaces the counted messages it covers", () => {
    const u = new UnreadCounter({ unread: 1, lastReadSeq: 0, upToSeq: 1 });
    u.onMessage(2, false);
    u.onMessage(3, false);
    u.reset({ unread: 3, lastReadSeq: 0, upToSeq: 3 });
    assert.equal(u.count, 3);
    u.onMessage(4, false);
    assert.equal(u.count, 4);
  });
});
