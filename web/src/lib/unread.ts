// Unread count of one conversation: the server's count from
// ListConversations (messages after the read marker, up to its latest seq
// then) plus others' messages that arrived since, less what is read.

export interface UnreadInit {
  /** ConversationSummary.unread */
  unread: number;
  /** ConversationSummary.last_read_seq */
  lastReadSeq: number;
  /** The seq the server's count covers (the summary's last message), 0 if none. */
  upToSeq: number;
}

export class UnreadCounter {
  private baseline: number;
  private baselineSeq: number;
  private lastRead: number;
  private readonly live = new Set<number>();

  constructor(init: UnreadInit = { unread: 0, lastReadSeq: 0, upToSeq: 0 }) {
    this.baseline = Math.max(0, init.unread);
    this.baselineSeq = Math.max(init.upToSeq, init.lastReadSeq);
    this.lastRead = init.lastReadSeq;
  }

  get count(): number {
    return this.baseline + this.live.size;
  }

  get lastReadSeq(): number {
    return this.lastRead;
  }

  /**
   * A message arrived (stream). Others' messages after the read marker and
   * after what the server's count covered are unread, each seq once.
   * Returns whether the count changed.
   */
  onMessage(seq: number, fromMe: boolean): boolean {
    if (fromMe || seq <= this.lastRead || seq <= this.baselineSeq || this.live.has(seq)) return false;
    this.live.add(seq);
    return true;
  }

  /** The user read up to `seq`. Returns whether the count changed. */
  onRead(seq: number): boolean {
    const before = this.count;
    if (seq > this.lastRead) this.lastRead = seq;
    for (const s of this.live) if (s <= seq) this.live.delete(s);
    if (seq >= this.baselineSeq) this.baseline = 0;
    return this.count !== before;
  }

  /** A fresh summary from the server replaces what is known (reconnect). */
  reset(init: UnreadInit): void {
    this.baseline = Math.max(0, init.unread);
    this.baselineSeq = Math.max(init.upToSeq, init.lastReadSeq);
    this.lastRead = Math.max(this.lastRead, init.lastReadSeq);
    for (const s of this.live) if (s <= this.baselineSeq) this.live.delete(s);
  }
}
