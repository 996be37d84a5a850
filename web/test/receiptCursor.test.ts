import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ReceiptCursor } from "../src/lib/receiptCursor";

describe("acks and reads", () => {
  it("acks nothing before the join's snapshot", () => {
    const c = new ReceiptCursor();
    c.onStreamMessage(3);
    assert.equal(c.ackDue(), undefined);
    c.onSnapshot(2);
    assert.equal(c.ackDue(), 3);
  });

  it("acks the highest seq received, once, cumulatively", () => {
    const c = new ReceiptCursor();
    c.onSnapshot(0);
    c.onStreamMessage(1);
    c.onStreamMessage(2);
    assert.equal(c.ackDue(), 2);
    c.ackQueuedAt(2);
    assert.equal(c.ackDue(), undefined);
    c.onStreamMessage(3);
    assert.equal(c.ackDue(), 3);
  });

  it("never reads past what the session knows of, nor seq 0", () => {
    const c = new ReceiptCursor();
    c.onSnapshot(10);
    assert.equal(c.readDue(12), 10);
    assert.equal(c.readDue(0), undefined);
    c.readQueuedAt(10);
    assert.equal(c.readDue(10), undefined);
    const empty = new ReceiptCursor();
    empty.onSnapshot(0);
    assert.equal(empty.readDue(0), undefined);
    assert.equal(empty.ackDue(), undefined);
  });

  it("does not read again what ListConversations says was read", () => {
    const c = new ReceiptCursor();
    c.seedRead(8);
    c.onSnapshot(8);
    assert.equal(c.readDue(8), undefined);
    assert.equal(c.readDue(9), undefined, "the session knows of nothing past 8");
    c.onStreamMessage(9);
    assert.equal(c.readDue(9), 9);
  });

  it("sends again on a new session what the lost one never delivered", () => {
    const c = new ReceiptCursor();
    c.onSnapshot(5);
    c.onStreamMessage(6);
    c.ackQueuedAt(6);
    c.readQueuedAt(6);
    // The call never returned; the session was lost.
    c.newSession();
    assert.equal(c.ackDue(), undefined, "not joined yet");
    c.onSnapshot(7);
    assert.equal(c.ackDue(), 6);
    assert.equal(c.readDue(6), 6);
    c.ackQueuedAt(6);
    c.ackSent(6);
    c.newSession();
    c.onSnapshot(7);
    assert.equal(c.ackDue(), undefined, "confirmed acks are not repeated");
  });

  it("a refused ack (rate limit) is due again unless a later one went out", () => {
    const c = new ReceiptCursor();
    c.onSnapshot(0);
    c.onStreamMessage(4);
    c.ackQueuedAt(4);
    c.ackSent(4);
    c.ackRefused(4);
    assert.equal(c.ackDue(), 4);
    c.ackQueuedAt(4);
    c.onStreamMessage(5);
    c.ackQueuedAt(5);
    c.ackRefused(4);
    assert.equal(c.ackDue(), undefined);
  });
});
