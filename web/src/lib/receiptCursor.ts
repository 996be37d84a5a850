// What to acknowledge (DELIVERED) and mark read in one conversation.
//
// The gateway refuses an ack or read above the latest seq the session knows
// of (the join's snapshot `last_seq`, or a message it delivered), and seq 0.
// Acks cover what arrived on a stream; reads cover what the page shows.
// Both are cumulative: only a higher seq is worth sending, and one whose call
// never made it (the session was lost) is sent again on the next session.

export class ReceiptCursor {
  /** This session: joined (snapshot seen) and the latest seq it knows of. */
  private joined = false;
  private known = 0;
  /** The highest seq that arrived on any stream. */
  private streamMax = 0;
  private ackQueued = 0;
  private ackDone = 0;
  private readQueued = 0;
  private readDone = 0;

  /** A new session: nothing is joined; unconfirmed receipts are due again. */
  newSession(): void {
    this.joined = false;
    this.known = 0;
    this.ackQueued = this.ackDone;
    this.readQueued = this.readDone;
  }

  /** The join's PresenceSnapshot. */
  onSnapshot(lastSeq: number): void {
    this.joined = true;
    this.known = Math.max(this.known, lastSeq);
  }

  /** The session left or lost the conversation. */
  onUnjoined(): void {
    this.joined = false;
  }

  /** A message arrived on the stream. */
  onStreamMessage(seq: number): void {
    this.known = Math.max(this.known, seq);
    this.streamMax = Math.max(this.streamMax, seq);
  }

  /** Read already recorded elsewhere (ListConversations' last_read_seq). */
  seedRead(seq: number): void {
    this.readDone = Math.max(this.readDone, seq);
    this.readQueued = Math.max(this.readQueued, seq);
  }

  get readSeq(): number {
    return this.readQueued;
  }

  /** The ack to send now, if any. */
  ackDue(): number | undefined {
    if (!this.joined) return undefined;
    const target = Math.min(this.streamMax, this.known);
    return target > 0 && target > this.ackQueued ? target : undefined;
  }

  /** The read to send now for what the page shows up to `latestShown`, if any. */
  readDue(latestShown: number): number | undefined {
    if (!this.joined) return undefined;
    const target = Math.min(latestShown, this.known);
    return target > 0 && target > this.readQueued ? target : undefined;
  }

  ackQueuedAt(seq: number): void {
    this.ackQueued = Math.max(this.ackQueued, seq);
  }

  ackSent(seq: number): void {
    this.ackDone = Math.max(this.ackDone, seq);
  }

  /** The ack was refused (a rate limit, say): due again unless a later one went out. */
  ackRefused(seq: number): void {
    if (this.ackQueued > seq) return;
    this.ackQueued = Math.min(this.ackQueued, seq - 1);
    this.ackDone = Math.min(this.ackDone, seq - 1);
  }

  readQueuedAt(seq: number): void {
    this.readQueued = Math.max(this.readQueued, seq);
  }

  readSent(seq: number): void {
    this.readDone = Math.max(this.readDone, seq);
  }

  /** The read was refused: due again unless a later one went out. */
  readRefused(seq: number): void {
    if (this.readQueued > seq) return;
    this.readQueued = Math.min(this.readQueued, seq - 1);
    this.readDone = Math.min(this.readDone, seq - 1);
  }
}
