// One live session at a time, over OpenSession (events) + SendFrames
// (frames), and the reconnect loop around it.
//
// A session ends when its stream ends or fails, when SendFrames says
// NOT_FOUND, or when SendFrames keeps failing (a dead gateway the stream did
// not notice yet; a periodic probe makes sure a silent stream is noticed
// too). Then: the next gateway in the list, after a backoff (250 ms doubling
// to 5 s, jittered; longer if a Disconnect asked), a new session, and the
// owner joins everything again with resume points (handlers.opened).

import { ConnectError } from "@connectrpc/connect";
import type { ClientFrame, ServerEvent } from "../gen/chat_pb";
import { GrpcCode } from "./codes";
import { FrameQueue, type FailureAction } from "./frameQueue";
import { Backoff, nextGateway, reconnectDelay } from "./reconnect";
import { num } from "./types";

export interface SessionApi {
  /** OpenSession on gateway `gateway`; ends or throws when the session does. */
  openSession(gateway: number, signal: AbortSignal): AsyncIterable<ServerEvent>;
  /** SendFrames on gateway `gateway`; resolves once the frames are queued in the session. */
  sendFrames(gateway: number, sessionId: string, frames: ClientFrame[], signal: AbortSignal): Promise<void>;
}

export type ConnState = "connecting" | "connected" | "reconnecting";

export interface SessionInfo {
  sessionId: string;
  gatewayId: string;
  gatewayIndex: number;
  expiresAtMs: number;
  /** Sessions opened so far, this one included (1, 2 after a reconnect, ...). */
  number: number;
}

export interface StateInfo {
  gatewayIndex: number;
  gatewayId: string;
  sessions: number;
  /** reconnecting: the wait before the next attempt. */
  retryInMs?: number;
  /** Why the last session ended or the last attempt failed. */
  error?: unknown;
}

export interface SessionHandlers {
  /** A session opened: queue its joins (and pending sends) with `send`. */
  opened(info: SessionInfo): void;
  /** Every event after SessionOpened, in order. */
  event(event: ServerEvent): void;
  state(state: ConnState, info: StateInfo): void;
  /** A session ended (or an attempt failed); frames never sent are lost with it. */
  closed(error: unknown, code: number | undefined): void;
  /**
   * The gateway refused the token (UNAUTHENTICATED): get a fresh one and
   * resolve true to go on, false to stop (the user must sign in again).
   */
  unauthenticated(error: unknown): Promise<boolean>;
  /** Frames a gateway refused for good (INVALID_ARGUMENT...). */
  dropped?(error: unknown, frames: ClientFrame[]): void;
}

export interface SessionManagerOptions {
  gatewayCount: number;
  preferred: number;
  backoff?: Backoff;
  /** A frame that does nothing but prove the session is alive (a refresh with the current token). */
  probeFrame?: () => ClientFrame | undefined;
  /** Probe a session that sent nothing for this long; 20 s. 0: never. */
  probeIntervalMs?: number;
  /** Retries of a failing SendFrames call before the session counts as lost. */
  sendRetries?: number;
  now?: () => number;
}

/** The gRPC status code of an error (UNKNOWN for anything else). */
export function codeOf(err: unknown): number {
  if (err instanceof ConnectError) return err.code;
  if (typeof err === "object" && err !== null && typeof (err as { code?: unknown }).code === "number") {
    return (err as { code: number }).code;
  }
  return GrpcCode.Unknown;
}

/** What a failed SendFrames call means for its frames. */
export function classifySendError(err: unknown): FailureAction {
  switch (codeOf(err)) {
    case GrpcCode.NotFound:
      return "lost";
    case GrpcCode.InvalidArgument:
    case GrpcCode.PermissionDenied:
    case GrpcCode.Cancelled:
      return "drop";
    default:
      // UNAVAILABLE (the session did not take them in time: none was queued),
      // a network error, a deadline: the same frames again.
      return "retry";
  }
}

export class SessionManager {
  private stopped = false;
  private running = false;
  private queue: FrameQueue<ClientFrame> | null = null;
  private abort: AbortController | null = null;
  private lostError: unknown = undefined;
  private wakeSleep: (() => void) | null = null;
  private probeTimer: ReturnType<typeof setInterval> | undefined;
  private lastCallAt = 0;
  private readonly backoff: Backoff;
  private readonly now: () => number;
  sessions = 0;
  current: SessionInfo | null = null;

  constructor(
    private readonly api: SessionApi,
    private readonly handlers: SessionHandlers,
    private readonly opts: SessionManagerOptions,
  ) {
    this.backoff = opts.backoff ?? new Backoff();
    this.now = opts.now ?? (() => Date.now());
  }

  /** Starts the connect loop (resolves when it stops). */
  start(): Promise<void> {
    if (this.running) return Promise.resolve();
    this.running = true;
    return this.run().finally(() => {
      this.running = false;
    });
  }

  /** Ends the session and the loop for good. */
  stop(): void {
    this.stopped = true;
    this.abort?.abort();
    this.wakeSleep?.();
  }

  /** The network is back (the browser's `online`): skip the rest of a backoff wait. */
  wake(): void {
    this.wakeSleep?.();
  }

  /** Drops the current session (the browser saw the network go away): reconnect. */
  dropSession(reason: unknown): void {
    if (!this.abort) return;
    this.lostError = reason;
    this.abort.abort();
  }

  get connected(): boolean {
    return this.queue !== null && !this.queue.isClosed;
  }

  /**
   * Queues a frame for the current session. False when there is none: the
   * frame is dropped (what matters is sent again when a session opens).
   */
  send(frame: ClientFrame, onSent?: () => void): boolean {
    return this.queue?.push(frame, onSent) ?? false;
  }

  /** Frames waiting or in flight in the current session. */
  get queued(): number {
    return this.queue?.size ?? 0;
  }

  private async run(): Promise<void> {
    let index = this.opts.preferred;
    let gatewayId = "";
    while (!this.stopped) {
      const abort = new AbortController();
      this.abort = abort;
      this.lostError = undefined;
      let retryAfterMs = 0;
      let failure: unknown = undefined;
      let opened = false;
      this.handlers.state(this.sessions === 0 ? "connecting" : "reconnecting", {
        gatewayIndex: index,
        gatewayId,
        sessions: this.sessions,
      });
      try {
        for await (const event of this.api.openSession(index, abort.signal)) {
          if (this.stopped || abort.signal.aborted) break;
          const e = event.event;
          if (e.case === "sessionOpened") {
            if (opened) continue;
            opened = true;
            this.sessions++;
            this.backoff.reset();
            gatewayId = e.value.gatewayId;
            const info: SessionInfo = {
              sessionId: e.value.sessionId,
              gatewayId,
              gatewayIndex: index,
              expiresAtMs: num(e.value.expiresAtMs),
              number: this.sessions,
            };
            this.current = info;
            this.queue = this.newQueue(index, info.sessionId, abort);
            this.lastCallAt = this.now();
            this.handlers.state("connected", { gatewayIndex: index, gatewayId, sessions: this.sessions });
            this.handlers.opened(info);
            this.startProbe();
            continue;
          }
          if (!opened) continue; // nothing precedes SessionOpened
          if (e.case === "disconnect") retryAfterMs = e.value.retryAfterMs;
          this.handlers.event(event);
        }
        if (this.lostError !== undefined) failure = this.lostError;
      } catch (err) {
        failure = this.lostError !== undefined ? this.lostError : err;
      }
      this.stopProbe();
      abort.abort();
      this.queue?.close();
      this.queue = null;
      this.current = null;
      this.abort = null;
      if (this.stopped) break;
      const code = failure === undefined ? undefined : codeOf(failure);
      this.handlers.closed(failure, code);
      if (code === GrpcCode.Unauthenticated) {
        let goOn = false;
        try {
          goOn = await this.handlers.unauthenticated(failure);
        } catch {
          goOn = false;
        }
        if (!goOn || this.stopped) break;
      }
      index = nextGateway(index, this.opts.gatewayCount);
      const delay = reconnectDelay(this.backoff.next(), retryAfterMs);
      this.handlers.state("reconnecting", {
        gatewayIndex: index,
        gatewayId,
        sessions: this.sessions,
        retryInMs: delay,
        error: failure,
      });
      await this.sleep(delay);
    }
    this.stopped = true;
  }

  private newQueue(index: number, sessionId: string, abort: AbortController): FrameQueue<ClientFrame> {
    return new FrameQueue<ClientFrame>({
      send: (frames) => {
        this.lastCallAt = this.now();
        return this.api.sendFrames(index, sessionId, frames, abort.signal);
      },
      classify: classifySendError,
      maxRetries: this.opts.sendRetries ?? 4,
      onLost: (err) => {
        // NOT_FOUND, or the gateway stopped answering: this session is over.
        if (this.abort === abort) this.dropSession(err);
      },
      onDropped: (err, items) => this.handlers.dropped?.(err, items.map((i) => i.frame)),
    });
  }

  private startProbe(): void {
    this.stopProbe();
    const every = this.opts.probeIntervalMs ?? 20_000;
    if (!every || !this.opts.probeFrame) return;
    this.probeTimer = setInterval(() => {
      if (!this.queue || this.queue.size > 0) return;
      if (this.now() - this.lastCallAt < every) return;
      const frame = this.opts.probeFrame?.();
      if (frame) this.queue.push(frame);
    }, Math.max(1000, Math.floor(every / 4)));
  }

  private stopProbe(): void {
    if (this.probeTimer !== undefined) clearInterval(this.probeTimer);
    this.probeTimer = undefined;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        if (self.wakeSleep === done) self.wakeSleep = null;
        resolve();
      }
      this.wakeSleep = done;
    });
  }
}
