import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ReceiptBook, tickRank, tickStatus, tickSteps } from "../src/lib/ticks";
import { ReceiptKind } from "../src/lib/types";

describe("tick status", () => {
  it("is PENDING before acceptance and FAILED when the send was refused", () => {
    const book = new ReceiptBook();
    assert.equal(tickStatus(book, "alice", undefined), "PENDING");
    assert.equal(tickStatus(book, "alice", undefined, true), "FAILED");
  });

  it("is SENT while no other member is known", () => {
    const book = new ReceiptBook();
    book.addMember("alice");
    assert.equal(tickStatus(book, "alice", 5), "SENT");
  });

  it("follows cumulative receipts: every seq up to up_to_seq", () => {
    const book = new ReceiptBook();
    book.seed([
      { userId: "alice", deliveredSeq: 0, readSeq: 0 },
      { userId: "bob", deliveredSeq: 0, readSeq: 0 },
    ]);
    assert.equal(tickStatus(book, "alice", 3), "SENT");
    book.apply({ userId: "bob", status: ReceiptKind.Delivered, upToSeq: 4 });
    assert.equal(tickStatus(book, "alice", 3), "DELIVERED");
    assert.equal(tickStatus(book, "alice", 4), "DELIVERED");
    assert.equal(tickStatus(book, "alice", 5), "SENT");
    book.apply({ userId: "bob", status: ReceiptKind.Read, upToSeq: 3 });
    assert.equal(tickStatus(book, "alice", 1), "READ");
    assert.equal(tickStatus(book, "alice", 3), "READ");
    assert.equal(tickStatus(book, "alice", 4), "DELIVERED");
  });

  it("shows the least advanced among the other members", () => {
    const book = new ReceiptBook();
    book.seed([
      { userId: "alice", deliveredSeq: 0, readSeq: 0 },
      { userId: "bob", deliveredSeq: 10, readSeq: 10 },
      { userId: "carol", deliveredSeq: 10, readSeq: 2 },
    ]);
    assert.equal(tickStatus(book, "alice", 5), "DELIVERED");
    book.apply({ userId: "carol", status: ReceiptKind.Read, upToSeq: 7 });
    assert.equal(tickStatus(book, "alice", 5), "READ");
    // A member who joins later has nothing yet.
    book.addMember("dave");
    assert.equal(tickStatus(book, "alice", 5), "SENT");
    book.removeMember("dave");
    assert.equal(tickStatus(book, "alice", 5), "READ");
  });

  it("a member who joins later does not hold back messages sent before", () => {
    const book = new ReceiptBook();
    book.seed([
      { userId: "alice", deliveredSeq: 0, readSeq: 0 },
      { userId: "bob", deliveredSeq: 5, readSeq: 5 },
    ]);
    book.addMember("lat", 5);
    assert.equal(tickStatus(book, "alice", 5), "READ");
    assert.equal(tickStatus(book, "alice", 6), "SENT");
    book.apply({ userId: "bob", status: ReceiptKind.Read, upToSeq: 6 });
    assert.equal(tickStatus(book, "alice", 6), "SENT", "lat has not received 6");
    book.apply({ userId: "lat", status: ReceiptKind.Delivered, upToSeq: 6 });
    assert.equal(tickStatus(book, "alice", 6), "DELIVERED");
    // Once a late member reads an earlier message (history), it counts.
    book.apply({ userId: "lat", status: ReceiptKind.Read, upToSeq: 6 });
    assert.equal(tickStatus(book, "alice", 5), "READ");
    // Presence seen first, MemberJoined after: still joined late.
    book.addMember("zed");
    book.addMember("zed", 6);
    assert.equal(tickStatus(book, "alice", 6), "READ");
    assert.equal(tickStatus(book, "alice", 7), "SENT");
  });

  it("ignores the sender's own positions", () => {
    const book = new ReceiptBook();
    book.seed([
      { userId: "alice", deliveredSeq: 100, readSeq: 100 },
      { userId: "bob", deliveredSeq: 1, readSeq: 0 },
    ]);
    assert.equal(tickStatus(book, "alice", 2), "SENT");
  });

  it("never moves backward: a late DELIVERED below a READ, an older snapshot", () => {
    const book = new ReceiptBook();
    book.apply({ userId: "bob", status: ReceiptKind.Read, upToSeq: 8 });
    assert.equal(book.apply({ userId: "bob", status: ReceiptKind.Delivered, upToSeq: 6 }), false);
    book.seed([{ userId: "bob", deliveredSeq: 2, readSeq: 1 }]);
    assert.equal(tickStatus(book, "alice", 8), "READ");
    // A READ implies DELIVERED.
    assert.equal(book.members.get("bob")?.delivered, 8);
  });

  it("learns members from receipts", () => {
    const book = new ReceiptBook();
    book.apply({ userId: "bob", status: ReceiptKind.Delivered, upToSeq: 3 });
    assert.equal(tickStatus(book, "alice", 3), "DELIVERED");
  });

  it("ranks FAILED (an external recipient gave up on one message) lowest", () => {
    const book = new ReceiptBook();
    book.seed([{ userId: "bob", deliveredSeq: 10, readSeq: 10 }]);
    book.apply({ userId: "whatsapp:+1555", status: ReceiptKind.Failed, upToSeq: 4, reason: "undeliverable" });
    assert.equal(tickStatus(book, "alice", 4), "FAILED");
    assert.match(book.failureReason(4), /undeliverable/);
    // Only that message.
    assert.equal(tickStatus(book, "alice", 3), "SENT");
    assert.ok(tickRank("FAILED") < tickRank("SENT"));
  });

  it("steps through DELIVERED on the way to READ", () => {
    assert.deepEqual(tickSteps("SENT", "READ"), ["DELIVERED", "READ"]);
    assert.deepEqual(tickSteps("PENDING", "READ"), ["DELIVERED", "READ"]);
    assert.deepEqual(tickSteps("DELIVERED", "READ"), ["READ"]);
    assert.deepEqual(tickSteps("SENT", "DELIVERED"), ["DELIVERED"]);
    assert.deepEqual(tickSteps(undefined, "READ"), ["READ"]);
    assert.deepEqual(tickSteps("READ", "READ"), []);
    assert.deepEqual(tickSteps("PENDING", "SENT"), ["SENT"]);
  });
});
