// Plain shapes the app works with: the generated protobuf types carry
// uint64/int64 as bigint, these carry numbers (seqs and epoch milliseconds
// stay far below 2^53).

export interface ChatMessage {
  conversationId: string;
  seq: number;
  messageId: string;
  sender: string;
  body: string;
  sentAtMs: number;
  clientMessageId: string;
}

/** The ticks an own message shows. */
export type TickStatus = "PENDING" | "SENT" | "DELIVERED" | "READ" | "FAILED";

/** The numbers of proto `MessageStatus`. */
export const ReceiptKind = {
  Unspecified: 0,
  Sent: 1,
  Delivered: 2,
  Read: 3,
  Failed: 4,
} as const;

/** A `Receipt` event, in numbers. */
export interface ReceiptUpdate {
  userId: string;
  status: number;
  upToSeq: number;
  reason?: string;
}

/** A member's position from `PresenceSnapshot.receipts`. */
export interface MemberReceiptState {
  userId: string;
  deliveredSeq: number;
  readSeq: number;
}

/** bigint (or number) from the generated code to a plain number. */
export function num(value: bigint | number | undefined | null): number {
  if (value === undefined || value === null) return 0;
  return typeof value === "bigint" ? Number(value) : value;
}
