// The single outgoing queue of a session's frames.
//
// Frames of one SendFrames call are handled in order, and order across calls
// holds only if each call returns before the next is made. So: one call in
// flight at a time; whatever was pushed meanwhile goes out together in the
// next call, at most 64 frames a call (the gateway's limit).

export type FailureAction = "retry" | "drop" | "lost";

export interface QueueItem<F> {
  frame: F;
  /** The call that carried the frame returned OK (the frame is queued in the session). */
  onSent?: () => void;
}

export interface FrameQueueOptions<F> {
  /** One SendFrames call. */
  send(frames: F[]): Promise<void>;
  /** What a failed call means: retry it, drop its frames, or the session is lost. */
  classify(err: unknown): FailureAction;
  /** The session is lost (NOT_FOUND, or retries ran out): these frames were not sent. */
  onLost(err: unknown, unsent: QueueItem<F>[]): void;
  /** A call's frames were refused for good (INVALID_ARGUMENT, say). */
  onDropped?(err: unknown, dropped: QueueItem<F>[]): void;
  /** Frames per call; 64 by default. */
  maxBatch?: number;
  /** Retries of one call before the session counts as lost; 4 by default. */
  maxRetries?: number;
  /** Wait before retry number `attempt` (0-based); 200 ms doubling by default. */
  retryDelayMs?(attempt: number): number;
  /** setTimeout by default (tests pass their own). */
  schedule?(fn: () => void, ms: number): void;
  /** queueMicrotask by default: frames pushed in one task share a call. */
  defer?(fn: () => void): void;
}

export class FrameQueue<F> {
  private queue: QueueItem<F>[] = [];
  private inFlight: QueueItem<F>[] | null = null;
  private closed = false;
  private pumpQueued = false;
  private waitingRetry = false;
  private retries = 0;
  private idleWaiters: Array<() => void> = [];
  /** SendFrames calls made (stats, tests). */
  calls = 0;
  /** Frames sent OK. */
  sent = 0;
  private readonly maxBatch: number;
  private readonly maxRetries: number;

  constructor(private readonly opts: FrameQueueOptions<F>) {
    this.maxBatch = opts.maxBatch ?? 64;
    this.maxRetries = opts.maxRetries ?? 4;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Frames waiting or in flight. */
  get size(): number {
    return this.queue.length + (this.inFlight?.length ?? 0);
  }

  /** Queues a frame; it goes out with whatever else is waiting. False once closed. */
  push(frame: F, onSent?: () => void): boolean {
    if (this.closed) return false;
    this.queue.push(onSent ? { frame, onSent } : { frame });
    this.schedulePump();
    return true;
  }

  /** Ends the queue (the session is gone): returns the frames never sent. */
  close(): QueueItem<F>[] {
    if (this.closed) return [];
    this.closed = true;
    const unsent = [...(this.inFlight ?? []), ...this.queue];
    this.queue = [];
    this.inFlight = null;
    this.resolveIdle();
    return unsent;
  }

  /** Resolves once nothing is waiting or in flight (or the queue closed). */
  idle(): Promise<void> {
    if (this.closed || this.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private schedulePump(): void {
    if (this.pumpQueued) return;
    this.pumpQueued = true;
    const defer = this.opts.defer ?? ((fn: () => void) => queueMicrotask(fn));
    defer(() => {
      this.pumpQueued = false;
      this.pump();
    });
  }

  private pump(): void {
    if (this.closed || this.inFlight || this.waitingRetry) return;
    if (this.queue.length === 0) {
      this.resolveIdle();
      return;
    }
    const batch = this.queue.splice(0, this.maxBatch);
    this.inFlight = batch;
    this.calls++;
    let promise: Promise<void>;
    try {
      promise = this.opts.send(batch.map((item) => item.frame));
    } catch (err) {
      promise = Promise.reject(err);
    }
    promise.then(
      () => {
        if (this.closed || this.inFlight !== batch) return;
        this.inFlight = null;
        this.retries = 0;
        this.sent += batch.length;
        for (const item of batch) item.onSent?.();
        this.pump();
      },
      (err: unknown) => {
        if (this.closed || this.inFlight !== batch) return;
        this.inFlight = null;
        let action = this.opts.classify(err);
        if (action === "retry" && this.retries >= this.maxRetries) action = "lost";
        switch (action) {
          case "retry": {
            const delay = this.opts.retryDelayMs?.(this.retries) ?? 200 * 2 ** this.retries;
            this.retries++;
            // Back at the head: nothing pushed since may overtake it.
            this.queue.unshift(...batch);
            this.waitingRetry = true;
            const schedule = this.opts.schedule ?? ((fn: () => void, ms: number) => void setTimeout(fn, ms));
            schedule(() => {
              this.waitingRetry = false;
              this.pump();
            }, delay);
            break;
          }
          case "drop":
            this.retries = 0;
            this.opts.onDropped?.(err, batch);
            this.pump();
            break;
          case "lost": {
            const unsent = [...batch, ...this.queue];
            this.closed = true;
            this.queue = [];
            this.resolveIdle();
            this.opts.onLost(err, unsent);
            break;
          }
        }
      },
    );
  }

  private resolveIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
