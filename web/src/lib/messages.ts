// The messages of one conversation, merged from history pages, the live
// stream (including resumed backfill after a reconnect) and own sends.
//
// Keyed by seq: a seq is held once, whatever brought it, and `list()` is in
// seq order. Own sends not yet accepted have no seq: they wait, in the order
// they were written, after every numbered message, keyed by their
// client_message_id; acceptance (SendAccepted or the stream's echo of the
// message, whichever comes first) gives them their seq, and the same entry
// moves into place.

import type { ChatMessage } from "./types";

export type MessageSource = "stream" | "history";

export interface LocalSend {
  /** The request_id of the latest attempt. */
  requestId: string;
  /** Refused with an ErrorEvent (retry reuses the client_message_id). */
  failed: boolean;
  error: string;
}

export interface MessageEntry {
  conversationId: string;
  /** Undefined while an own send waits for acceptance. */
  seq: number | undefined;
  messageId: string;
  sender: string;
  body: string;
  sentAtMs: number;
  clientMessageId: string;
  /** Set for own sends made by this page until they are accepted. */
  local: LocalSend | undefined;
  /** False while only SendAccepted is known (no Message event yet). */
  confirmed: boolean;
  /** Came on the stream after the join's snapshot point (not backfill, not history). */
  live: boolean;
}

export interface AddResult {
  entry: MessageEntry;
  /** A seq not held before. */
  added: boolean;
  /** Dropped as a repeat of a seq already held. */
  duplicate: boolean;
}

export class MessageStore {
  private readonly bySeq = new Map<number, MessageEntry>();
  private readonly pending = new Map<string, MessageEntry>();
  private sortedCache: MessageEntry[] | null = null;
  private max = 0;
  private min = 0;
  /** Stream messages dropped because their seq was already held. */
  duplicatesDropped = 0;

  constructor(readonly conversationId: string) {}

  get size(): number {
    return this.bySeq.size + this.pending.size;
  }

  /** Highest seq held (0 when none). */
  get maxSeq(): number {
    return this.max;
  }

  /** Lowest seq held (0 when none). */
  get minSeq(): number {
    return this.min;
  }

  private hold(seq: number, entry: MessageEntry): void {
    this.bySeq.set(seq, entry);
    if (seq > this.max) this.max = seq;
    if (this.min === 0 || seq < this.min) this.min = seq;
    this.sortedCache = null;
  }

  has(seq: number): boolean {
    return this.bySeq.has(seq);
  }

  get(seq: number): MessageEntry | undefined {
    return this.bySeq.get(seq);
  }

  /** An own send waiting for acceptance, by client_message_id. */
  pendingSend(clientMessageId: string): MessageEntry | undefined {
    return this.pending.get(clientMessageId);
  }

  /** Own sends not accepted yet, oldest first (failed ones included). */
  pendingSends(): MessageEntry[] {
    return [...this.pending.values()];
  }

  /**
   * A message from the stream or a history page. Held seqs are kept as they
   * are (a stream repeat counts in `duplicatesDropped`); the stream's echo of
   * an own pending send takes that entry into place.
   */
  add(m: ChatMessage, source: MessageSource, live = false): AddResult {
    const held = this.bySeq.get(m.seq);
    if (held) {
      if (!held.confirmed) {
        // Known from SendAccepted only: the message itself fills it in.
        held.messageId = m.messageId || held.messageId;
        held.sentAtMs = m.sentAtMs || held.sentAtMs;
        held.body = m.body;
        held.sender = m.sender;
        held.confirmed = true;
        return { entry: held, added: false, duplicate: false };
      }
      if (source === "stream") this.duplicatesDropped++;
      return { entry: held, added: false, duplicate: true };
    }
    const mine = m.clientMessageId ? this.pending.get(m.clientMessageId) : undefined;
    if (mine && mine.sender === m.sender) {
      this.pending.delete(m.clientMessageId);
      mine.seq = m.seq;
      mine.messageId = m.messageId;
      mine.sentAtMs = m.sentAtMs || mine.sentAtMs;
      mine.body = m.body;
      mine.local = undefined;
      mine.confirmed = true;
      this.hold(m.seq, mine);
      return { entry: mine, added: true, duplicate: false };
    }
    const entry: MessageEntry = {
      conversationId: this.conversationId,
      seq: m.seq,
      messageId: m.messageId,
      sender: m.sender,
      body: m.body,
      sentAtMs: m.sentAtMs,
      clientMessageId: m.clientMessageId,
      local: undefined,
      confirmed: true,
      live: source === "stream" && live,
    };
    this.hold(m.seq, entry);
    return { entry, added: true, duplicate: false };
  }

  /** An own send, shown at once as PENDING. */
  addPending(clientMessageId: string, sender: string, body: string, requestId: string, nowMs: number): MessageEntry {
    const entry: MessageEntry = {
      conversationId: this.conversationId,
      seq: undefined,
      messageId: "",
      sender,
      body,
      sentAtMs: nowMs,
      clientMessageId,
      local: { requestId, failed: false, error: "" },
      confirmed: false,
      live: false,
    };
    this.pending.set(clientMessageId, entry);
    this.sortedCache = null;
    return entry;
  }

  /**
   * SendAccepted for an own send: it takes its seq. Returns the entry that
   * now holds the message (undefined when the send is unknown here).
   */
  accept(clientMessageId: string, seq: number, messageId: string): MessageEntry | undefined {
    const mine = this.pending.get(clientMessageId);
    const held = this.bySeq.get(seq);
    if (!mine) return held;
    this.pending.delete(clientMessageId);
    this.sortedCache = null;
    if (held) {
      // The message came first (history without our key, say): keep it.
      return held;
    }
    mine.seq = seq;
    mine.messageId = messageId;
    mine.local = undefined;
    this.hold(seq, mine);
    return mine;
  }

  /** An ErrorEvent for an own send: FAILED, with the error, until retried. */
  fail(clientMessageId: string, error: string): MessageEntry | undefined {
    const mine = this.pending.get(clientMessageId);
    if (!mine || !mine.local) return undefined;
    mine.local.failed = true;
    mine.local.error = error;
    return mine;
  }

  /** A retry of a send: PENDING again under a new request_id. */
  retry(clientMessageId: string, requestId: string): MessageEntry | undefined {
    const mine = this.pending.get(clientMessageId);
    if (!mine || !mine.local) return undefined;
    mine.local = { requestId, failed: false, error: "" };
    return mine;
  }

  /** Every entry in display order: by seq, then pending sends in send order. */
  list(): MessageEntry[] {
    if (!this.sortedCache) {
      const numbered = [...this.bySeq.values()].sort((a, b) => (a.seq as number) - (b.seq as number));
      this.sortedCache = numbered.concat([...this.pending.values()]);
    }
    return this.sortedCache;
  }

  /** Seqs held, ascending. */
  seqs(): number[] {
    return [...this.bySeq.keys()].sort((a, b) => a - b);
  }
}
