// Tick status of own messages from the other members' receipt positions.
//
// A member's DELIVERED / READ receipt is cumulative: `up_to_seq` covers every
// earlier message. An own message shows the least advanced status among the
// other members known (from PresenceSnapshot.receipts, Receipt events,
// MemberJoined, GetConversation): ✓ SENT, ✓✓ DELIVERED, blue ✓✓ READ.
// FAILED (an external recipient's channel gave up on one message) ranks
// lowest: it is terminal for that recipient.

import {
  ReceiptKind,
  type MemberReceiptState,
  type ReceiptUpdate,
  type TickStatus,
} from "./types";

export interface MemberPosition {
  delivered: number;
  read: number;
  /** Joined after this seq (MemberJoined): earlier messages were not sent to them. */
  since: number;
}

const RANK: Record<TickStatus, number> = { FAILED: 0, PENDING: 1, SENT: 2, DELIVERED: 3, READ: 4 };

export function tickRank(status: TickStatus): number {
  return RANK[status];
}

/** Receipt positions of a conversation's members. */
export class ReceiptBook {
  readonly members = new Map<string, MemberPosition>();
  /** seq -> users for whom that message FAILED (with the reason). */
  readonly failed = new Map<number, Map<string, string>>();

  /** Positions from a PresenceSnapshot: positions never move backward. */
  seed(states: readonly MemberReceiptState[]): void {
    for (const s of states) {
      const pos = this.ensure(s.userId);
      pos.delivered = Math.max(pos.delivered, s.deliveredSeq, s.readSeq);
      pos.read = Math.max(pos.read, s.readSeq);
    }
  }

  /**
   * A member. `sinceSeq`: they joined when the conversation was at that seq
   * (MemberJoined), so messages up to it were never theirs to receive and
   * do not wait for them.
   */
  addMember(userId: string, sinceSeq = 0): void {
    const pos = this.ensure(userId);
    if (sinceSeq > pos.since && pos.delivered === 0 && pos.read === 0) pos.since = sinceSeq;
  }

  removeMember(userId: string): void {
    this.members.delete(userId);
  }

  /** A Receipt event; returns whether anything moved. */
  apply(r: ReceiptUpdate): boolean {
    const pos = this.ensure(r.userId);
    switch (r.status) {
      case ReceiptKind.Delivered:
        if (r.upToSeq > pos.delivered) {
          pos.delivered = r.upToSeq;
          return true;
        }
        return false;
      case ReceiptKind.Read: {
        let moved = false;
        if (r.upToSeq > pos.read) {
          pos.read = r.upToSeq;
          moved = true;
        }
        if (r.upToSeq > pos.delivered) {
          pos.delivered = r.upToSeq;
          moved = true;
        }
        return moved;
      }
      case ReceiptKind.Failed: {
        let users = this.failed.get(r.upToSeq);
        if (!users) {
          users = new Map();
          this.failed.set(r.upToSeq, users);
        }
        users.set(r.userId, r.reason ?? "");
        return true;
      }
      default:
        return false;
    }
  }

  /** The status of own message `seq` for one member. */
  statusFor(userId: string, seq: number): TickStatus {
    if (this.failed.get(seq)?.has(userId)) return "FAILED";
    const pos = this.members.get(userId);
    if (!pos) return "SENT";
    if (pos.read >= seq) return "READ";
    if (pos.delivered >= seq) return "DELIVERED";
    return "SENT";
  }

  /** Why message `seq` failed, for a tooltip ("" when it did not). */
  failureReason(seq: number): string {
    const users = this.failed.get(seq);
    if (!users) return "";
    return [...users].map(([u, why]) => (why ? `${u}: ${why}` : u)).join("; ");
  }

  private ensure(userId: string): MemberPosition {
    let pos = this.members.get(userId);
    if (!pos) {
      pos = { delivered: 0, read: 0, since: 0 };
      this.members.set(userId, pos);
    }
    return pos;
  }
}

/**
 * The ticks of an own message. `seq` undefined: not accepted yet (PENDING, or
 * FAILED when the send was refused). Accepted: the least advanced status among
 * the members other than `me`; SENT while no other member is known.
 */
export function tickStatus(
  book: ReceiptBook,
  me: string,
  seq: number | undefined,
  sendFailed = false,
): TickStatus {
  if (seq === undefined) return sendFailed ? "FAILED" : "PENDING";
  let least: TickStatus | undefined;
  for (const [userId, pos] of book.members) {
    // A member who joined after the message counts once they got to it.
    if (userId === me || (seq <= pos.since && pos.delivered < seq)) continue;
    const s = book.statusFor(userId, seq);
    if (least === undefined || RANK[s] < RANK[least]) least = s;
    if (least === "FAILED") break;
  }
  return least ?? "SENT";
}

/**
 * The statuses to write, in order, to move a tick from `from` to `to`:
 * statuses only move forward (SENT -> DELIVERED -> READ), so a jump from
 * below DELIVERED straight to READ (both receipts in one batch, or a READ
 * that came first) passes through DELIVERED, as the recipient did.
 */
export function tickSteps(from: TickStatus | undefined, to: TickStatus): TickStatus[] {
  if (from === to) return [];
  if (to === "READ" && from !== undefined && RANK[from] < RANK.DELIVERED && from !== "FAILED") {
    return ["DELIVERED", "READ"];
  }
  return [to];
}
