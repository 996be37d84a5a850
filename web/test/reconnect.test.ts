import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Backoff, nextGateway, preferredGateway, reconnectDelay } from "../src/lib/reconnect";

describe("gateway choice", () => {
  it("rotates to the gateway after the one that failed", () => {
    assert.equal(nextGateway(0, 2), 1);
    assert.equal(nextGateway(1, 2), 0);
    assert.equal(nextGateway(2, 3), 0);
    assert.equal(nextGateway(0, 1), 0);
    assert.equal(nextGateway(0, 0), 0);
  });

  it("visits every gateway in turn", () => {
    const seen: number[] = [];
    let g = 1;
    for (let i = 0; i < 6; i++) {
      seen.push(g);
      g = nextGateway(g, 3);
    }
    assert.deepEqual(seen, [1, 2, 0, 1, 2, 0]);
  });

  it("takes ?gateway= as a 0-based index, 0 when absent or invalid", () => {
    assert.equal(preferredGateway("1", 2), 1);
    assert.equal(preferredGateway("0", 2), 0);
    assert.equal(preferredGateway(undefined, 2), 0);
    assert.equal(preferredGateway("x", 2), 0);
    assert.equal(preferredGateway("-1", 2), 0);
    assert.equal(preferredGateway("3", 2), 1);
  });
});

describe("backoff", () => {
  it("doubles from 250 ms up to 5 s", () => {
    const b = new Backoff({ random: () => 0.999999 });
    const delays = Array.from({ length: 8 }, () => b.next());
    assert.deepEqual(delays, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
  });

  it("jitters each delay within [base/2, base]", () => {
    const low = new Backoff({ random: () => 0 });
    assert.deepEqual([low.next(), low.next(), low.next()], [125, 250, 500]);
    const b = new Backoff();
    for (let i = 0; i < 50; i++) {
      const base = b.base();
      const d = b.next();
      assert.ok(d >= base / 2 && d <= base, `${d} within [${base / 2}, ${base}]`);
    }
  });

  it("starts over after a session opened", () => {
    const b = new Backoff({ random: () => 0.999999 });
    b.next();
    b.next();
    b.next();
    b.reset();
    assert.equal(b.next(), 250);
    assert.equal(b.attempts, 1);
  });

  it("honours a Disconnect's retry_after_ms", () => {
    assert.equal(reconnectDelay(250, 3000), 3000);
    assert.equal(reconnectDelay(4000, 3000), 4000);
    assert.equal(reconnectDelay(250, undefined), 250);
    assert.equal(reconnectDelay(250, 0), 250);
  });
});
