// Which gateway to try next and how long to wait first.

/** The gateway after the one that failed, round the list. */
export function nextGateway(failed: number, count: number): number {
  if (count <= 0) return 0;
  return (((failed + 1) % count) + count) % count;
}

/** The preferred gateway index from `?gateway=`, clamped into the list. */
export function preferredGateway(param: string | null | undefined, count: number): number {
  const n = Number.parseInt(param ?? "", 10);
  if (!Number.isFinite(n) || n < 0 || count <= 0) return 0;
  return n % count;
}

export interface BackoffOptions {
  initialMs?: number;
  maxMs?: number;
  /** In [0, 1); Math.random by default. */
  random?: () => number;
}

/**
 * Exponential backoff with jitter: 250 ms doubling up to 5 s; each delay is
 * drawn from [base/2, base] so that clients a gateway dropped together do not
 * come back together.
 */
export class Backoff {
  private attempt = 0;
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly random: () => number;

  constructor(options: BackoffOptions = {}) {
    this.initialMs = options.initialMs ?? 250;
    this.maxMs = options.maxMs ?? 5000;
    this.random = options.random ?? Math.random;
  }

  get attempts(): number {
    return this.attempt;
  }

  /** The ceiling of the next delay. */
  base(): number {
    return Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 30));
  }

  /** The next delay (and counts an attempt). */
  next(): number {
    const base = this.base();
    this.attempt++;
    return Math.round(base / 2 + this.random() * (base / 2));
  }

  /** A session opened: the next failure starts from the beginning. */
  reset(): void {
    this.attempt = 0;
  }
}

/** The wait before reconnecting: the backoff, or longer if the gateway asked. */
export function reconnectDelay(backoffMs: number, retryAfterMs: number | undefined): number {
  return Math.max(backoffMs, retryAfterMs ?? 0);
}
