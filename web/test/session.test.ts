import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ClientFrameSchema, ServerEventSchema, type ClientFrame, type ServerEvent } from "../src/gen/chat_pb";
import { Backoff } from "../src/lib/reconnect";
import { SessionManager, classifySendError, type SessionApi, type SessionInfo } from "../src/lib/session";

/** A server stream the test writes into. */
class FakeStream implements AsyncIterable<ServerEvent> {
  private queue: ServerEvent[] = [];
  private waiting: ((r: IteratorResult<ServerEvent>) => void) | null = null;
  private failWith: ((e: unknown) => void) | null = null;
  private ended: { error?: unknown } | null = null;

  constructor(
    readonly gateway: number,
    signal: AbortSignal,
  ) {
    signal.addEventListener("abort", () => this.end(new ConnectError("aborted", Code.Canceled)));
  }

  push(event: ServerEvent): void {
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = null;
      this.failWith = null;
      w({ value: event, done: false });
    } else this.queue.push(event);
  }

  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = error === undefined ? {} : { error };
    if (this.waiting) {
      const w = this.waiting;
      const f = this.failWith;
      this.waiting = null;
      this.failWith = null;
      if (error !== undefined) f?.(error);
      else w({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<ServerEvent> {
    return {
      next: () => {
        const e = this.queue.shift();
        if (e) return Promise.resolve({ value: e, done: false });
        if (this.ended) {
          return this.ended.error !== undefined
            ? Promise.reject(this.ended.error)
            : Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => {
          this.waiting = resolve;
          this.failWith = reject;
        });
      },
    };
  }
}

class FakeApi implements SessionApi {
  streams: FakeStream[] = [];
  calls: Array<{ gateway: number; sessionId: string; frames: ClientFrame[] }> = [];
  sendError: unknown = undefined;

  openSession(gateway: number, signal: AbortSignal): AsyncIterable<ServerEvent> {
    const s = new FakeStream(gateway, signal);
    this.streams.push(s);
    return s;
  }

  async sendFrames(gateway: number, sessionId: string, frames: ClientFrame[]): Promise<void> {
    this.calls.push({ gateway, sessionId, frames });
    if (this.sendError !== undefined) throw this.sendError;
  }
}

const opened = (id: string, gateway: string) =>
  create(ServerEventSchema, { event: { case: "sessionOpened", value: { sessionId: id, gatewayId: gateway, expiresAtMs: 0n } } });

const typing = (id: string) =>
  create(ClientFrameSchema, { requestId: id, frame: { case: "typing", value: { conversationId: "r", typing: true } } });

async function until(what: string, cond: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function setup(preferred = 0, gateways = 2) {
  const api = new FakeApi();
  const sessions: SessionInfo[] = [];
  const events: ServerEvent[] = [];
  const states: string[] = [];
  const closed: Array<number | undefined> = [];
  let unauthenticated = 0;
  let allowAfterUnauthenticated = true;
  const manager = new SessionManager(
    api,
    {
      opened: (info) => sessions.push(info),
      event: (e) => events.push(e),
      state: (s) => states.push(s),
      closed: (_err, code) => closed.push(code),
      unauthenticated: async () => {
        unauthenticated++;
        return allowAfterUnauthenticated;
      },
    },
    { gatewayCount: gateways, preferred, backoff: new Backoff({ initialMs: 1, maxMs: 4 }), probeIntervalMs: 0 },
  );
  return {
    api,
    manager,
    sessions,
    events,
    states,
    closed,
    get unauthenticated() {
      return unauthenticated;
    },
    deny() {
      allowAfterUnauthenticated = false;
    },
  };
}

describe("session and reconnect", () => {
  it("opens on the preferred gateway and hands over events after SessionOpened", async () => {
    const t = setup(1);
    void t.manager.start();
    await until("a stream", () => t.api.streams.length === 1);
    assert.equal(t.api.streams[0]?.gateway, 1);
    t.api.streams[0]?.push(opened("s1", "gw-b"));
    await until("opened", () => t.sessions.length === 1);
    assert.deepEqual(t.sessions[0], { sessionId: "s1", gatewayId: "gw-b", gatewayIndex: 1, expiresAtMs: 0, number: 1 });
    assert.deepEqual(t.states, ["connecting", "connected"]);
    t.api.streams[0]?.push(create(ServerEventSchema, { event: { case: "typing", value: { userId: "bob" } } }));
    await until("event", () => t.events.length === 1);
    t.manager.stop();
  });

  it("sends frames to the session's gateway with its id, in one call", async () => {
    const t = setup(0);
    void t.manager.start();
    await until("a stream", () => t.api.streams.length === 1);
    t.api.streams[0]?.push(opened("s1", "gw-a"));
    await until("opened", () => t.sessions.length === 1);
    t.manager.send(typing("a"));
    t.manager.send(typing("b"));
    await until("a call", () => t.api.calls.length === 1);
    assert.equal(t.api.calls[0]?.sessionId, "s1");
    assert.equal(t.api.calls[0]?.gateway, 0);
    assert.deepEqual(
      t.api.calls[0]?.frames.map((f) => f.requestId),
      ["a", "b"],
    );
    t.manager.stop();
  });

  it("reconnects to the next gateway when the stream fails, counting sessions", async () => {
    const t = setup(1);
    void t.manager.start();
    await until("a stream", () => t.api.streams.length === 1);
    t.api.streams[0]?.push(opened("s1", "gw-b"));
    await until("opened", () => t.sessions.length === 1);
    // The gateway dies: the stream errors.
    t.api.streams[0]?.end(new ConnectError("network error", Code.Unavailable));
    await until("a second stream", () => t.api.streams.length === 2);
    assert.equal(t.api.streams[1]?.gateway, 0, "rotated to the gateway after the failed one");
    assert.equal(t.manager.send(typing("x")), false, "no session while reconnecting");
    t.api.streams[1]?.push(opened("s2", "gw-a"));
    await until("reopened", () => t.sessions.length === 2);
    assert.equal(t.sessions[1]?.number, 2);
    assert.equal(t.manager.sessions, 2);
    assert.deepEqual(t.states, ["connecting", "connected", "reconnecting", "reconnecting", "connected"]);
    assert.deepEqual(t.closed, [Code.Unavailable]);
    t.manager.stop();
  });

  it("a stream that ends cleanly is reconnected too", async () => {
    const t = setup(0, 3);
    void t.manager.start();
    await until("a stream", () => t.api.streams.length === 1);
    t.api.streams[0]?.push(opened("s1", "a"));
    await until("opened", () => t.sessions.length === 1);
    t.api.streams[0]?.end();
    await until("a second stream", () => t.api.streams.length === 2);
    assert.equal(t.api.streams[1]?.gateway, 1);
    t.manager.stop();
  });

  it("keeps rotating while gateways cannot be reached", async () => {
    const t = setup(0, 3);
    void t.manager.start();
    for (let i = 0; i < 4; i++) {
      await until(`stream ${i + 1}`, () => t.api.streams.length === i + 1);
      t.api.streams[i]?.end(new ConnectError("refused", Code.Unavailable));
    }
    await until("stream 5", () => t.api.streams.length === 5);
    assert.deepEqual(
      t.api.streams.map((s) => s.gateway),
      [0, 1, 2, 0, 1],
    );
    t.manager.stop();
  });

  it("SendFrames NOT_FOUND ends the session: reconnect elsewhere", async () => {
    const t = setup(0);
    void t.manager.start();
    await until("a stream", () => t.api.streams.length === 1);
    t.api.streams[0]?.push(opened("s1", "a"));
    await until("opened", () => t.sessions.length === 1);
    t.api.sendError = new ConnectError("session not open", Code.NotFound);
    t.manager.send(typing("x"));
    await until("a second stream", () => t.api.streams.length === 2);
    assert.deepEqual(t.closed, [Code.NotFound]);
    assert.equal(t.api.streams[1]?.gateway, 1);
    t.manager.stop();
  });

  it("waits at least a Disconnect's retry_after_ms", async () => {
    const t = setup(0);
    void t.manager.start();
    await until("a stream", () => t.api.streams.length === 1);
    t.api.streams[0]?.push(opened("s1", "a"));
    await until("opened", () => t.sessions.length === 1);
    t.api.streams[0]?.push(
      create(ServerEventSchema, {
        event: { case: "disconnect", value: { reason: 1, retryAfterMs: 150, resume: [{ conversationId: "r", lastSeq: 9n }] } },
      }),
    );
    await until("disconnect handed over", () => t.events.length === 1);
    const endedAt = Date.now();
    t.api.streams[0]?.end(new ConnectError("shutting down", Code.Unavailable));
    await until("a second stream", () => t.api.streams.length === 2);
    assert.ok(Date.now() - endedAt >= 140, `waited ${Date.now() - endedAt} ms`);
    t.manager.stop();
  });

  it("UNAUTHENTICATED asks for a fresh token, and stops when there is none", async () => {
    const t = setup(0);
    void t.manager.start();
    await until("a stream", () => t.api.streams.length === 1);
    t.api.streams[0]?.end(new ConnectError("token expired", Code.Unauthenticated));
    await until("a second stream", () => t.api.streams.length === 2);
    assert.equal(t.unauthenticated, 1);
    t.deny();
    t.api.streams[1]?.end(new ConnectError("token expired", Code.Unauthenticated));
    await until("asked again", () => t.unauthenticated === 2);
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(t.api.streams.length, 2, "no further attempt");
  });

  it("classifies SendFrames failures", () => {
    assert.equal(classifySendError(new ConnectError("x", Code.NotFound)), "lost");
    assert.equal(classifySendError(new ConnectError("x", Code.Unavailable)), "retry");
    assert.equal(classifySendError(new ConnectError("x", Code.InvalidArgument)), "drop");
    assert.equal(classifySendError(new TypeError("Failed to fetch")), "retry");
  });
});
