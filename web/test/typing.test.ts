import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { TypingSender, TypingWatch, typingText, type Clock } from "../src/lib/typing";

function fakeClock() {
  let now = 0;
  let timers: Array<{ at: number; fn: () => void; id: number }> = [];
  let next = 1;
  const clock: Clock = {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = next++;
      timers.push({ at: now + ms, fn, id });
      return id;
    },
    clearTimeout: (id) => {
      timers = timers.filter((t) => t.id !== id);
    },
  };
  const advance = (ms: number) => {
    const until = now + ms;
    for (;;) {
      const due = timers.filter((t) => t.at <= until).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      timers = timers.filter((t) => t !== due);
      now = due.at;
      due.fn();
    }
    now = until;
  };
  return { clock, advance };
}

describe("own typing indicator", () => {
  it("sends true at once, then at most every 3 s while typing", () => {
    const { clock, advance } = fakeClock();
    const sent: boolean[] = [];
    const t = new TypingSender((v) => sent.push(v), { clock });
    t.input();
    for (let i = 0; i < 10; i++) {
      advance(500);
      t.input();
    }
    // 0 s, then 3 s: two frames in 5 s of typing.
    assert.deepEqual(sent, [true, true]);
  });

  it("sends false after 4 s idle", () => {
    const { clock, advance } = fakeClock();
    const sent: boolean[] = [];
    const t = new TypingSender((v) => sent.push(v), { clock });
    t.input();
    advance(3999);
    assert.deepEqual(sent, [true]);
    advance(1);
    assert.deepEqual(sent, [true, false]);
    assert.equal(t.isTyping, false);
  });

  it("sends false on send, and true again on the next keystroke", () => {
    const { clock, advance } = fakeClock();
    const sent: boolean[] = [];
    const t = new TypingSender((v) => sent.push(v), { clock });
    t.input();
    advance(100);
    t.stop();
    t.stop();
    advance(100);
    t.input();
    assert.deepEqual(sent, [true, false, true]);
    advance(10_000);
    assert.deepEqual(sent, [true, false, true, false]);
  });
});

describe("others typing", () => {
  it("shows who is typing until 6 s pass without an update", () => {
    const w = new TypingWatch();
    w.update("bob", true, 0);
    w.update("carol", true, 2000);
    assert.deepEqual(w.active(5000), ["bob", "carol"]);
    assert.equal(w.nextExpiry(), 6000);
    assert.deepEqual(w.active(6000), ["carol"]);
    w.update("carol", true, 7000);
    assert.deepEqual(w.active(12_000), ["carol"]);
    assert.deepEqual(w.active(13_000), []);
  });

  it("stops on typing false or a message", () => {
    const w = new TypingWatch();
    w.update("bob", true, 0);
    w.update("carol", true, 0);
    assert.equal(w.update("bob", false, 10), true);
    assert.equal(w.clear("carol"), true);
    assert.deepEqual(w.active(20), []);
  });

  it("words it", () => {
    assert.equal(typingText([]), "");
    assert.equal(typingText(["bob"]), "bob is typing…");
    assert.equal(typingText(["bob", "carol"]), "bob and carol are typing…");
    assert.equal(typingText(["a", "b", "c"]), "3 people are typing…");
  });
});
