// Typing indicators: the own one (sent at most every 3 s while typing, off
// after 4 s idle or on send) and the others' (shown until 6 s pass without
// an update).

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

export interface TypingSenderOptions {
  /** Least time between two `typing: true` frames; 3000 ms. */
  repeatMs?: number;
  /** Idle time after which `typing: false` goes out; 4000 ms. */
  idleMs?: number;
  clock?: Clock;
}

/** Decides when this user's typing frames go out for one conversation. */
export class TypingSender {
  private typing = false;
  private lastSentAt = Number.NEGATIVE_INFINITY;
  private idleTimer: unknown = undefined;
  private readonly repeatMs: number;
  private readonly idleMs: number;
  private readonly clock: Clock;

  constructor(
    private readonly send: (typing: boolean) => void,
    options: TypingSenderOptions = {},
  ) {
    this.repeatMs = options.repeatMs ?? 3000;
    this.idleMs = options.idleMs ?? 4000;
    this.clock = options.clock ?? systemClock;
  }

  get isTyping(): boolean {
    return this.typing;
  }

  /** The user typed (an input event with text in the composer). */
  input(): void {
    const now = this.clock.now();
    if (!this.typing || now - this.lastSentAt >= this.repeatMs) {
      this.typing = true;
      this.lastSentAt = now;
      this.send(true);
    }
    if (this.idleTimer !== undefined) this.clock.clearTimeout(this.idleTimer);
    this.idleTimer = this.clock.setTimeout(() => {
      this.idleTimer = undefined;
      this.stop();
    }, this.idleMs);
  }

  /** Sent, emptied or left: typing stops now (sends `false` if it was on). */
  stop(): void {
    if (this.idleTimer !== undefined) {
      this.clock.clearTimeout(this.idleTimer);
      this.idleTimer = undefined;
    }
    if (this.typing) {
      this.typing = false;
      this.lastSentAt = Number.NEGATIVE_INFINITY;
      this.send(false);
    }
  }
}

/** Who else is typing in one conversation. */
export class TypingWatch {
  private readonly until = new Map<string, number>();

  constructor(private readonly expireMs = 6000) {}

  /** A Typing event. Returns whether the shown set may have changed. */
  update(userId: string, typing: boolean, now: number): boolean {
    if (typing) {
      const had = this.until.has(userId);
      this.until.set(userId, now + this.expireMs);
      return !had;
    }
    return this.until.delete(userId);
  }

  /** A message from the user ends their typing. */
  clear(userId: string): boolean {
    return this.until.delete(userId);
  }

  /** The users typing at `now`, sorted; expired ones are forgotten. */
  active(now: number): string[] {
    const users: string[] = [];
    for (const [user, until] of this.until) {
      if (until <= now) this.until.delete(user);
      else users.push(user);
    }
    return users.sort();
  }

  /** When the next indicator expires (undefined when none shown). */
  nextExpiry(): number | undefined {
    let next: number | undefined;
    for (const until of this.until.values()) if (next === undefined || until < next) next = until;
    return next;
  }
}

/** "bob is typing…", "bob and carol are typing…", "3 people are typing…", or "". */
export function typingText(users: readonly string[]): string {
  if (users.length === 0) return "";
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length === 2) return `${users[0]} and ${users[1]} are typing…`;
  return `${users.length} people are typing…`;
}
