import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FrameQueue, type FailureAction } from "../src/lib/frameQueue";

interface Call {
  frames: number[];
  resolve(): void;
  reject(err: unknown): void;
}

/** A SendFrames stand-in whose calls the test completes by hand. */
function harness(classify: (err: unknown) => FailureAction = () => "retry", maxRetries = 2) {
  const calls: Call[] = [];
  const lost: Array<{ err: unknown; unsent: number[] }> = [];
  const dropped: number[][] = [];
  const timers: Array<() => void> = [];
  const q = new FrameQueue<number>({
    send: (frames) =>
      new Promise<void>((resolve, reject) => {
        calls.push({ frames, resolve, reject });
      }),
    classify,
    maxRetries,
    onLost: (err, unsent) => lost.push({ err, unsent: unsent.map((i) => i.frame) }),
    onDropped: (_err, items) => dropped.push(items.map((i) => i.frame)),
    schedule: (fn) => void timers.push(fn),
  });
  return { q, calls, lost, dropped, timers };
}

const tick = () => new Promise<void>((r) => setTimeout(r, 0));

describe("outgoing frame queue", () => {
  it("batches what is pushed in one task into one call", async () => {
    const { q, calls } = harness();
    q.push(1);
    q.push(2);
    q.push(3);
    await tick();
    assert.equal(calls.length, 1);
    assert.deepEqual(calls[0]?.frames, [1, 2, 3]);
  });

  it("keeps one call in flight; what waits goes together in the next, in order", async () => {
    const { q, calls } = harness();
    q.push(1);
    await tick();
    q.push(2);
    q.push(3);
    await tick();
    assert.equal(calls.length, 1, "no second call while the first is in flight");
    q.push(4);
    calls[0]?.resolve();
    await tick();
    assert.equal(calls.length, 2);
    assert.deepEqual(calls[1]?.frames, [2, 3, 4]);
    calls[1]?.resolve();
    await tick();
    assert.equal(q.size, 0);
    assert.equal(q.sent, 4);
  });

  it("sends at most 64 frames a call", async () => {
    const { q, calls } = harness();
    for (let i = 0; i < 150; i++) q.push(i);
    await tick();
    assert.equal(calls[0]?.frames.length, 64);
    calls[0]?.resolve();
    await tick();
    assert.equal(calls[1]?.frames.length, 64);
    assert.equal(calls[1]?.frames[0], 64);
    calls[1]?.resolve();
    await tick();
    assert.deepEqual(calls[2]?.frames, Array.from({ length: 22 }, (_, i) => 128 + i));
  });

  it("tells each frame's sender when its call returned", async () => {
    const { q, calls } = harness();
    const sent: number[] = [];
    q.push(1, () => sent.push(1));
    q.push(2, () => sent.push(2));
    await tick();
    assert.deepEqual(sent, []);
    calls[0]?.resolve();
    await tick();
    assert.deepEqual(sent, [1, 2]);
  });

  it("retries a failed call first, before anything pushed since", async () => {
    const { q, calls, timers } = harness(() => "retry");
    q.push(1);
    q.push(2);
    await tick();
    calls[0]?.reject(new Error("UNAVAILABLE"));
    await tick();
    q.push(3);
    await tick();
    assert.equal(calls.length, 1, "waits for the retry delay");
    timers.shift()?.();
    await tick();
    assert.deepEqual(calls[1]?.frames, [1, 2, 3]);
  });

  it("counts the session lost when retries run out", async () => {
    const { q, calls, timers, lost } = harness(() => "retry", 1);
    q.push(1);
    await tick();
    calls[0]?.reject(new Error("down"));
    await tick();
    timers.shift()?.();
    await tick();
    q.push(2);
    calls[1]?.reject(new Error("still down"));
    await tick();
    assert.equal(lost.length, 1);
    assert.deepEqual(lost[0]?.unsent, [1, 2]);
    assert.equal(q.isClosed, true);
    assert.equal(q.push(3), false);
  });

  it("NOT_FOUND: the session is gone at once", async () => {
    const { q, calls, lost } = harness(() => "lost");
    q.push(1);
    await tick();
    q.push(2);
    calls[0]?.reject(new Error("NOT_FOUND"));
    await tick();
    assert.deepEqual(lost[0]?.unsent, [1, 2]);
  });

  it("drops a refused call and goes on", async () => {
    const { q, calls, dropped } = harness(() => "drop");
    q.push(1);
    await tick();
    q.push(2);
    calls[0]?.reject(new Error("INVALID_ARGUMENT"));
    await tick();
    assert.deepEqual(dropped, [[1]]);
    assert.deepEqual(calls[1]?.frames, [2]);
  });

  it("close() returns what was never sent and ignores late answers", async () => {
    const { q, calls } = harness();
    const sent: number[] = [];
    q.push(1, () => sent.push(1));
    await tick();
    q.push(2);
    const unsent = q.close().map((i) => i.frame);
    assert.deepEqual(unsent, [1, 2]);
    calls[0]?.resolve();
    await tick();
    assert.deepEqual(sent, []);
    assert.equal(calls.length, 1);
  });

  it("idle() resolves once everything went out", async () => {
    const { q, calls } = harness();
    q.push(1);
    let idle = false;
    void q.idle().then(() => (idle = true));
    await tick();
    assert.equal(idle, false);
    calls[0]?.resolve();
    await tick();
    await tick();
    assert.equal(idle, true);
  });
});
