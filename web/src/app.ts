// The chat client's state and behaviour, without the DOM: conversations,
// messages, receipts, presence and typing, driven by the session's events and
// the user's actions. The view (ui.ts) reads this state and is told what
// changed.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import type { Api } from "./api";
import {
  ClientFrameSchema,
  ConversationKind,
  GetHistoryRequest_Direction,
  type ClientFrame,
  type Message,
  type ServerEvent,
} from "./gen/chat_pb";
import { GrpcCode, codeName } from "./lib/codes";
import { refreshAt } from "./lib/jwt";
import { MessageStore, type MessageEntry } from "./lib/messages";
import { ReceiptCursor } from "./lib/receiptCursor";
import { SessionManager, codeOf, type ConnState, type SessionInfo } from "./lib/session";
import { ReceiptBook } from "./lib/ticks";
import { TypingSender, TypingWatch } from "./lib/typing";
import { num, type ChatMessage } from "./lib/types";
import { UnreadCounter } from "./lib/unread";

/** Conversations one session joins at most (the gateway's limit). */
export const MAX_JOINED = 64;
const HISTORY_PAGE = 50;
const ACK_DELAY_MS = 100;
const READ_DELAY_MS = 200;
const RECEIPT_RETRY_MS = 1000;
/** Failed connection attempts in a row before the banner says so. */
const FAILURES_BEFORE_BANNER = 4;

export type ViewPart = "list" | "messages" | "presence" | "typing" | "status" | "composer";

export interface View {
  invalidate(part: ViewPart): void;
  showError(text: string): void;
  /** The user must sign in again (token gone); resolves with nothing. */
  requestSignIn(reason: string): void;
}

export interface Env {
  now(): number;
  visible(): boolean;
  newId(): string;
}

/** Where the token comes from and how to get a fresh one. */
export interface Auth {
  user: string;
  token: string;
  expiresAtMs: number;
  obtainedAtMs: number;
  /** Development sign-in: mints a fresh token; absent in production. */
  refresh?: () => Promise<{ token: string; expiresAtMs: number }>;
}

export interface RenderLatency {
  seq: number;
  sentAtMs: number;
  renderedAtMs: number;
}

export interface ChatDebug {
  duplicatesDropped: number;
  renderLatencies: RenderLatency[];
  sessions: number;
  sessionId: string;
}

type FrameInit = NonNullable<MessageInitShape<typeof ClientFrameSchema>["frame"]>;

type JoinState = "none" | "joining" | "joined" | "failed" | "removed";

interface PendingRequest {
  kind: "join" | "send" | "ack" | "read" | "typing" | "refresh";
  conversationId: string;
  clientMessageId?: string;
  seq?: number;
}

export class Conversation {
  readonly messages: MessageStore;
  readonly receipts = new ReceiptBook();
  readonly cursor = new ReceiptCursor();
  readonly online = new Set<string>();
  readonly typing = new TypingWatch();
  unread = new UnreadCounter();
  typingSender: TypingSender | undefined;
  /** The resume point: the latest seq this client holds of the conversation's stream. */
  heldSeq: number | undefined = undefined;
  /** In the user's ListConversations. */
  listed = false;
  title = "";
  lastActivityMs = 0;
  preview = "";
  previewSender = "";
  /** This session. */
  joinState: JoinState = "none";
  joinedWithResume = false;
  snapshotLast: number | undefined = undefined;
  joinError = "";
  /** History paging (BACKWARD from the newest). */
  historyCursor = "";
  hasMore = true;
  loading = false;
  historyStarted = false;
  membersFetched = false;

  constructor(readonly id: string) {
    this.messages = new MessageStore(id);
  }

  /** Members to show: every member known, and whoever is online. */
  memberIds(): string[] {
    const ids = new Set<string>([...this.receipts.members.keys(), ...this.online]);
    return [...ids];
  }
}

export class ChatApp {
  readonly conversations = new Map<string, Conversation>();
  activeId: string | undefined = undefined;
  readonly debug: ChatDebug = { duplicatesDropped: 0, renderLatencies: [], sessions: 0, sessionId: "" };
  connState: ConnState = "connecting";
  gatewayId = "";
  gatewayIndex = 0;
  retryInMs: number | undefined = undefined;
  lastConnError = "";
  readonly session: SessionManager;
  private readonly requests = new Map<string, PendingRequest>();
  private requestCounter = 0;
  private readonly requestPrefix: string;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private readTimer: ReturnType<typeof setTimeout> | undefined;
  private typingTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private signInWaiters: Array<(ok: boolean) => void> = [];
  private listing = false;
  private failedAttempts = 0;

  constructor(
    private readonly api: Api,
    readonly auth: Auth,
    private readonly view: View,
    private readonly env: Env,
    preferredGateway: number,
  ) {
    this.requestPrefix = env.newId().slice(0, 8);
    this.gatewayIndex = preferredGateway;
    api.preferred = preferredGateway;
    this.session = new SessionManager(
      api,
      {
        opened: (info) => this.onOpened(info),
        event: (event) => this.onEvent(event),
        state: (state, info) => {
          this.connState = state;
          this.gatewayIndex = info.gatewayIndex;
          if (state === "connected") {
            this.gatewayId = info.gatewayId;
            this.lastConnError = "";
            this.failedAttempts = 0;
            this.api.preferred = info.gatewayIndex;
          }
          this.retryInMs = info.retryInMs;
          if (info.error !== undefined) {
            this.lastConnError = errorText(info.error);
            // Say so when the service stays out of reach (the badge says it meanwhile).
            if (++this.failedAttempts === FAILURES_BEFORE_BANNER) {
              this.view.showError(`Cannot reach the chat service (still trying): ${this.lastConnError}`);
            }
          }
          this.view.invalidate("status");
        },
        closed: () => this.onClosed(),
        unauthenticated: (err) => this.onUnauthenticated(err),
        dropped: (err) => this.view.showError(errorText(err)),
      },
      {
        gatewayCount: api.gateways.length,
        preferred: preferredGateway,
        probeFrame: () => this.frame("refresh", "", { case: "refresh", value: { token: this.auth.token } }),
      },
    );
  }

  get me(): string {
    return this.auth.user;
  }

  get active(): Conversation | undefined {
    return this.activeId === undefined ? undefined : this.conversations.get(this.activeId);
  }

  /** Signs in: the session (each session lists the conversations), token refresh. */
  start(): void {
    void this.session.start();
    this.scheduleRefresh();
  }

  stop(): void {
    this.session.stop();
    clearTimeout(this.refreshTimer);
  }

  // ------------------------------------------------------------ conversations

  conversation(id: string): Conversation {
    let c = this.conversations.get(id);
    if (!c) {
      c = new Conversation(id);
      const conv = c;
      c.typingSender = new TypingSender((typing) => {
        if (conv.joinState !== "joined") return;
        this.session.send(this.frame("typing", conv.id, { case: "typing", value: { conversationId: conv.id, typing } }));
      });
      this.conversations.set(id, c);
    }
    return c;
  }

  /** The list, most recent first (the open one where it falls). */
  sortedConversations(): Conversation[] {
    return [...this.conversations.values()].sort(
      (a, b) => b.lastActivityMs - a.lastActivityMs || a.id.localeCompare(b.id),
    );
  }

  async loadConversations(): Promise<void> {
    if (this.listing) return;
    this.listing = true;
    try {
      let cursor = "";
      for (let page = 0; page < 5; page++) {
        const res = await this.api.unary((c, o) => c.listConversations({ pageSize: 100, cursor }, o));
        for (const s of res.conversations) {
          const known = this.conversations.has(s.conversationId);
          const conv = this.conversation(s.conversationId);
          conv.listed = true;
          const last = s.lastMessage;
          const lastSeq = num(last?.seq);
          if (!known) {
            conv.unread = new UnreadCounter({ unread: num(s.unread), lastReadSeq: num(s.lastReadSeq), upToSeq: lastSeq });
            if (conv.id === this.activeId && this.env.visible()) conv.unread.onRead(lastSeq);
          }
          conv.cursor.seedRead(num(s.lastReadSeq));
          if (conv.heldSeq === undefined && conv.joinState === "none") conv.heldSeq = lastSeq;
          if (last && num(last.sentAtMs) >= conv.lastActivityMs) {
            conv.lastActivityMs = num(last.sentAtMs);
            conv.preview = last.body;
            conv.previewSender = last.sender;
          }
        }
        cursor = res.nextCursor;
        if (!cursor) break;
      }
    } catch (err) {
      this.view.showError(`Listing conversations: ${errorText(err)}`);
    } finally {
      this.listing = false;
    }
    this.view.invalidate("list");
    this.syncJoins();
  }

  /** Opens (and joins) a conversation by id. */
  open(id: string): void {
    const trimmed = id.trim();
    if (!trimmed) return;
    const previous = this.active;
    if (previous && previous.id !== trimmed) previous.typingSender?.stop();
    const conv = this.conversation(trimmed);
    this.activeId = trimmed;
    if (conv.lastActivityMs === 0) conv.lastActivityMs = this.env.now();
    if (this.env.visible()) conv.unread.onRead(Math.max(conv.messages.maxSeq, conv.heldSeq ?? 0));
    if (conv.joinState === "failed") conv.joinState = "none"; // try again
    this.syncJoins();
    if (conv.joinState === "joined") this.afterJoined(conv);
    this.view.invalidate("list");
    this.view.invalidate("messages");
    this.view.invalidate("presence");
    this.view.invalidate("typing");
    this.view.invalidate("composer");
  }

  async createConversation(id: string): Promise<void> {
    const trimmed = id.trim();
    if (!trimmed) return;
    try {
      await this.api.unary((c, o) =>
        c.createConversation(
          { kind: ConversationKind.PUBLIC, conversationId: trimmed, title: trimmed },
          o,
        ),
      );
    } catch (err) {
      if (codeOf(err) !== GrpcCode.AlreadyExists) {
        this.view.showError(`Creating ${trimmed}: ${errorText(err)}`);
        return;
      }
    }
    this.open(trimmed);
  }

  /** Joins what the session should hold: the open conversation, then the most recent, up to 64. */
  private syncJoins(): void {
    if (!this.session.connected) return;
    const wanted: Conversation[] = [];
    const active = this.active;
    if (active) wanted.push(active);
    for (const c of this.sortedConversations()) if (c !== active) wanted.push(c);
    let joined = 0;
    for (const c of wanted) {
      if (c.joinState === "joined" || c.joinState === "joining") joined++;
    }
    for (const c of wanted) {
      if (c.joinState !== "none") continue;
      if (joined >= MAX_JOINED && c !== active) break;
      this.join(c);
      joined++;
    }
  }

  private join(conv: Conversation): void {
    const resume = conv.heldSeq;
    conv.joinState = "joining";
    conv.joinedWithResume = resume !== undefined;
    conv.snapshotLast = undefined;
    conv.joinError = "";
    const frame = this.frame("join", conv.id, {
      case: "join",
      value: { conversationId: conv.id, resumeAfterSeq: resume === undefined ? undefined : BigInt(resume) },
    });
    if (!this.session.send(frame)) conv.joinState = "none";
  }

  // ------------------------------------------------------------ session

  private onOpened(info: SessionInfo): void {
    this.debug.sessions = info.number;
    this.debug.sessionId = info.sessionId;
    this.requests.clear();
    for (const c of this.conversations.values()) {
      if (c.joinState !== "failed" && c.joinState !== "removed") c.joinState = "none";
      c.cursor.newSession();
      c.snapshotLast = undefined;
    }
    this.syncJoins();
    // Sends that never got an answer go again, same client_message_id: the
    // gateway answers a repeat with the original seq (duplicate = true).
    for (const c of this.conversations.values()) {
      if (c.joinState !== "joining") continue;
      for (const entry of c.messages.pendingSends()) {
        if (entry.local && !entry.local.failed) this.sendEntry(c, entry);
      }
    }
    // The token may have been refreshed while no session held it.
    if (info.expiresAtMs && this.auth.expiresAtMs > info.expiresAtMs + 1000) {
      this.session.send(this.frame("refresh", "", { case: "refresh", value: { token: this.auth.token } }));
    }
    // The list (unread counts, new conversations) on every session.
    void this.loadConversations();
    this.view.invalidate("status");
  }

  private onClosed(): void {
    for (const c of this.conversations.values()) {
      if (c.joinState === "joining" || c.joinState === "joined") c.joinState = "none";
      c.cursor.onUnjoined();
      for (const user of c.typing.active(this.env.now())) c.typing.clear(user);
    }
    this.view.invalidate("typing");
    this.view.invalidate("presence");
    this.view.invalidate("status");
  }

  private onUnauthenticated(err: unknown): Promise<boolean> {
    if (this.auth.refresh) {
      return this.refreshToken().then(
        () => true,
        (refreshErr) => {
          this.view.showError(`Signing in again failed: ${errorText(refreshErr)}`);
          return true; // keep trying (backoff)
        },
      );
    }
    this.view.requestSignIn(`The gateway refused the token: ${errorText(err)}. Paste a new token to go on.`);
    return new Promise((resolve) => this.signInWaiters.push(resolve));
  }

  /** A new token from the sign-in form while signed in (production). */
  replaceToken(token: string, user: string, expiresAtMs: number): boolean {
    if (user !== this.auth.user) {
      this.view.showError(`That token is for ${user}; this page is signed in as ${this.auth.user}.`);
      return false;
    }
    this.setToken(token, expiresAtMs);
    const waiters = this.signInWaiters;
    this.signInWaiters = [];
    for (const w of waiters) w(true);
    return true;
  }

  private setToken(token: string, expiresAtMs: number): void {
    this.auth.token = token;
    this.auth.expiresAtMs = expiresAtMs;
    this.auth.obtainedAtMs = this.env.now();
    if (this.session.connected) {
      this.session.send(this.frame("refresh", "", { case: "refresh", value: { token } }));
    }
    this.scheduleRefresh();
  }

  private async refreshToken(): Promise<void> {
    if (!this.auth.refresh) return;
    const fresh = await this.auth.refresh();
    this.setToken(fresh.token, fresh.expiresAtMs);
  }

  /** At 4/5 of the token's life: a fresh one, sent to the session as a refresh frame. */
  private scheduleRefresh(): void {
    clearTimeout(this.refreshTimer);
    const at = refreshAt(this.auth.obtainedAtMs, this.auth.expiresAtMs, this.env.now());
    if (at === undefined) return;
    const delay = Math.min(at - this.env.now(), 2 ** 31 - 1);
    this.refreshTimer = setTimeout(() => {
      if (this.auth.refresh) {
        this.refreshToken().catch((err) => {
          this.view.showError(`Refreshing the token: ${errorText(err)}`);
          this.refreshTimer = setTimeout(() => this.scheduleRefresh(), 10_000);
        });
      } else {
        this.view.requestSignIn("Your token expires soon: paste a fresh one to stay connected.");
      }
    }, delay);
  }

  private onEvent(event: ServerEvent): void {
    const e = event.event;
    switch (e.case) {
      case "message":
        this.onMessage(e.value);
        break;
      case "presenceSnapshot": {
        const s = e.value;
        const conv = this.conversation(s.conversationId);
        const last = num(s.lastSeq);
        conv.joinState = "joined";
        conv.snapshotLast = last;
        conv.cursor.onSnapshot(last);
        if (!conv.joinedWithResume) conv.heldSeq = Math.max(conv.heldSeq ?? 0, last);
        conv.online.clear();
        for (const u of s.online) conv.online.add(u);
        conv.receipts.seed(
          s.receipts.map((r) => ({ userId: r.userId, deliveredSeq: num(r.deliveredSeq), readSeq: num(r.readSeq) })),
        );
        if (conv.lastActivityMs === 0) conv.lastActivityMs = 1;
        this.afterJoined(conv);
        this.scheduleAck();
        if (conv.id === this.activeId) {
          this.scheduleRead();
          this.view.invalidate("presence");
          this.view.invalidate("messages");
        }
        this.view.invalidate("list");
        break;
      }
      case "presenceChanged": {
        const p = e.value;
        const conv = this.conversations.get(p.conversationId);
        if (!conv) break;
        if (p.online) {
          conv.online.add(p.userId);
          conv.receipts.addMember(p.userId);
        } else {
          conv.online.delete(p.userId);
          if (conv.typing.clear(p.userId)) this.invalidateIfActive(conv, "typing");
        }
        this.invalidateIfActive(conv, "presence");
        break;
      }
      case "memberJoined": {
        const conv = this.conversations.get(e.value.conversationId);
        if (!conv) break;
        // Messages before they joined were not sent to them: their ticks stay.
        conv.receipts.addMember(e.value.userId, Math.max(conv.messages.maxSeq, conv.heldSeq ?? 0));
        this.invalidateIfActive(conv, "presence");
        this.invalidateIfActive(conv, "messages");
        break;
      }
      case "memberLeft": {
        const conv = this.conversations.get(e.value.conversationId);
        if (!conv) break;
        conv.receipts.removeMember(e.value.userId);
        conv.online.delete(e.value.userId);
        this.invalidateIfActive(conv, "presence");
        this.invalidateIfActive(conv, "messages");
        break;
      }
      case "memberRemoved": {
        const r = e.value;
        const conv = this.conversations.get(r.conversationId);
        if (!conv) break;
        if (r.userId === this.me) {
          conv.joinState = "removed";
          conv.cursor.onUnjoined();
          this.view.showError(
            `You were removed from ${r.conversationId} by ${r.by || "an admin"}${r.banned ? " (banned)" : ""}.`,
          );
        } else {
          conv.receipts.removeMember(r.userId);
          conv.online.delete(r.userId);
        }
        this.invalidateIfActive(conv, "presence");
        this.invalidateIfActive(conv, "messages");
        this.view.invalidate("list");
        break;
      }
      case "typing": {
        const t = e.value;
        if (t.userId === this.me) break;
        const conv = this.conversations.get(t.conversationId);
        if (!conv) break;
        conv.typing.update(t.userId, t.typing, this.env.now());
        this.invalidateIfActive(conv, "typing");
        this.scheduleTypingExpiry();
        break;
      }
      case "sendAccepted": {
        const a = e.value;
        this.requests.delete(a.requestId);
        const conv = this.conversations.get(a.conversationId);
        if (!conv) break;
        conv.messages.accept(a.clientMessageId, num(a.seq), a.messageId);
        this.invalidateIfActive(conv, "messages");
        break;
      }
      case "error":
        this.onErrorEvent(e.value.requestId, e.value.code, e.value.message, e.value.conversationId, e.value.clientMessageId);
        break;
      case "disconnect": {
        for (const r of e.value.resume) {
          const conv = this.conversations.get(r.conversationId);
          if (conv) conv.heldSeq = Math.max(conv.heldSeq ?? 0, num(r.lastSeq));
        }
        this.lastConnError = e.value.detail || "";
        this.view.invalidate("status");
        break;
      }
      case "receipt": {
        const r = e.value;
        const conv = this.conversations.get(r.conversationId);
        if (!conv) break;
        const upTo = num(r.upToSeq);
        if (r.userId === this.me) {
          // This user read elsewhere (another tab or device).
          if (r.status === 3) {
            conv.cursor.seedRead(upTo);
            if (conv.unread.onRead(upTo)) this.view.invalidate("list");
          }
          break;
        }
        if (conv.receipts.apply({ userId: r.userId, status: r.status, upToSeq: upTo, reason: r.reason })) {
          this.invalidateIfActive(conv, "messages");
          this.invalidateIfActive(conv, "presence");
        }
        break;
      }
      case "roleChanged":
      case "sessionOpened":
      case undefined:
        break;
    }
  }

  private onMessage(m: Message): void {
    const conv = this.conversation(m.conversationId);
    const msg = toChatMessage(m);
    // Backfill after a resume (seq up to the snapshot's) is not live.
    const live = !(conv.snapshotLast !== undefined && msg.seq <= conv.snapshotLast);
    const result = conv.messages.add(msg, "stream", live);
    conv.cursor.onStreamMessage(msg.seq);
    conv.heldSeq = Math.max(conv.heldSeq ?? 0, msg.seq);
    if (result.duplicate) {
      this.debug.duplicatesDropped++;
      return;
    }
    const active = conv.id === this.activeId;
    const fromMe = msg.sender === this.me;
    if (!fromMe && conv.typing.clear(msg.sender)) this.invalidateIfActive(conv, "typing");
    if (result.added) {
      if (!(active && this.env.visible())) {
        if (conv.unread.onMessage(msg.seq, fromMe)) this.view.invalidate("list");
      }
      if (msg.sentAtMs >= conv.lastActivityMs) {
        conv.lastActivityMs = msg.sentAtMs;
        conv.preview = msg.body;
        conv.previewSender = msg.sender;
        this.view.invalidate("list");
      }
    }
    if (active) {
      this.view.invalidate("messages");
      this.scheduleRead();
    }
    this.scheduleAck();
  }

  private onErrorEvent(requestId: string, code: number, message: string, conversationId: string, cmid: string): void {
    const req = this.requests.get(requestId);
    this.requests.delete(requestId);
    const text = `${codeName(code)}: ${message}`;
    const conv = this.conversations.get(req?.conversationId || conversationId);
    const kind = req?.kind ?? (cmid ? "send" : undefined);
    switch (kind) {
      case "send": {
        const id = req?.clientMessageId || cmid;
        if (conv && id && conv.messages.fail(id, text)) this.invalidateIfActive(conv, "messages");
        this.view.showError(`Sending failed: ${text}`);
        return;
      }
      case "join": {
        if (!conv) break;
        if (code === GrpcCode.InvalidArgument && conv.joinState === "joined") {
          // A resume point the gateway did not take: joined without resuming.
          console.warn(`join ${conv.id}: ${text}`);
          return;
        }
        if (code === GrpcCode.FailedPrecondition && conv.joinState === "joined") {
          // Too far behind to resume: go on from the snapshot and page history.
          conv.heldSeq = conv.snapshotLast ?? conv.heldSeq;
          conv.historyCursor = "";
          conv.hasMore = true;
          conv.historyStarted = false;
          if (conv.id === this.activeId) this.afterJoined(conv);
          console.warn(`join ${conv.id}: ${text}`);
          return;
        }
        conv.joinState = "failed";
        conv.joinError = text;
        this.invalidateIfActive(conv, "messages");
        this.view.invalidate("list");
        this.view.showError(`Joining ${conv.id}: ${text}`);
        return;
      }
      case "ack":
      case "read": {
        if (conv && req?.seq !== undefined) {
          if (kind === "ack") conv.cursor.ackRefused(req.seq);
          else conv.cursor.readRefused(req.seq);
          if (code === GrpcCode.ResourceExhausted) {
            // A rate limit: cumulative, so the next one covers this one.
            setTimeout(() => (kind === "ack" ? this.scheduleAck() : this.scheduleRead()), RECEIPT_RETRY_MS);
          }
        }
        console.warn(`${kind} ${conversationId}: ${text}`);
        return;
      }
      case "typing":
        console.warn(`typing ${conversationId}: ${text}`);
        return;
      case "refresh":
        this.view.showError(`Token refresh refused: ${text}`);
        return;
      default:
        break;
    }
    this.view.showError(text);
  }

  /** Joined (snapshot seen): the open conversation's history, members, reads. */
  private afterJoined(conv: Conversation): void {
    if (conv.id !== this.activeId) return;
    if (!conv.historyStarted) {
      conv.historyStarted = true;
      void this.loadOlder(conv).then(() => this.fillGap(conv));
    } else {
      void this.fillGap(conv);
    }
    if (!conv.membersFetched) {
      conv.membersFetched = true;
      void this.fetchMembers(conv);
    }
  }

  private async fetchMembers(conv: Conversation): Promise<void> {
    try {
      const res = await this.api.unary((c, o) => c.getConversation({ conversationId: conv.id }, o));
      if (res.conversation?.title) conv.title = res.conversation.title;
      for (const m of res.members) conv.receipts.addMember(m.userId);
      this.invalidateIfActive(conv, "presence");
      this.invalidateIfActive(conv, "messages");
      this.view.invalidate("list");
    } catch (err) {
      conv.membersFetched = false;
      console.warn(`GetConversation ${conv.id}: ${errorText(err)}`);
    }
  }

  // ------------------------------------------------------------ history

  /** The next older page of the open conversation (newest first on open). */
  async loadOlder(conv: Conversation | undefined = this.active): Promise<void> {
    if (!conv || conv.loading || !conv.hasMore) return;
    conv.loading = true;
    this.invalidateIfActive(conv, "messages");
    try {
      const res = await this.api.unary((c, o) =>
        c.getHistory(
          conv.historyCursor
            ? { conversationId: conv.id, cursor: conv.historyCursor, pageSize: HISTORY_PAGE }
            : {
                conversationId: conv.id,
                direction: GetHistoryRequest_Direction.BACKWARD,
                pageSize: HISTORY_PAGE,
                fromSeq: 0n,
              },
          o,
        ),
      );
      for (const m of res.messages) conv.messages.add(toChatMessage(m), "history");
      const newest = res.messages.reduce<Message | undefined>((a, m) => (!a || m.seq > a.seq ? m : a), undefined);
      if (newest && num(newest.sentAtMs) > conv.lastActivityMs) {
        conv.lastActivityMs = num(newest.sentAtMs);
        conv.preview = newest.body;
        conv.previewSender = newest.sender;
        this.view.invalidate("list");
      }
      conv.historyCursor = res.nextCursor;
      conv.hasMore = res.nextCursor !== "" && res.messages.length > 0;
      if (conv.id === this.activeId) this.scheduleRead();
    } catch (err) {
      this.view.showError(`History of ${conv.id}: ${errorText(err)}`);
    } finally {
      conv.loading = false;
      this.invalidateIfActive(conv, "messages");
    }
  }

  /**
   * Joined without a resume point, the stream brings what follows the
   * snapshot and the history what precedes it; a message numbered just
   * before the snapshot may not be stored yet when the first page is read.
   * Fetch forward until the snapshot's seq is held.
   */
  private async fillGap(conv: Conversation): Promise<void> {
    const target = conv.snapshotLast;
    if (target === undefined || conv.joinedWithResume || conv.messages.has(target)) return;
    for (let attempt = 0; attempt < 6; attempt++) {
      let from = 0;
      for (const seq of conv.messages.seqs()) if (seq <= target) from = seq;
      if (from >= target) return;
      try {
        const res = await this.api.unary((c, o) =>
          c.getHistory(
            { conversationId: conv.id, direction: GetHistoryRequest_Direction.FORWARD, fromSeq: BigInt(from), pageSize: 200 },
            o,
          ),
        );
        let progressed = false;
        for (const m of res.messages) {
          const r = conv.messages.add(toChatMessage(m), "history");
          if (r.added) progressed = true;
          if (num(m.seq) >= target) {
            this.invalidateIfActive(conv, "messages");
            return;
          }
        }
        this.invalidateIfActive(conv, "messages");
        if (progressed && res.nextCursor) continue;
      } catch (err) {
        console.warn(`history gap of ${conv.id}: ${errorText(err)}`);
      }
      await new Promise((r) => setTimeout(r, 400 * (attempt + 1)));
      if (conv.snapshotLast !== target) return; // a new session took over
    }
  }

  // ------------------------------------------------------------ sending

  /** Sends `body` to the open conversation; shown at once as PENDING. */
  sendMessage(body: string): boolean {
    const conv = this.active;
    const text = body.trim();
    if (!conv || !text) return false;
    conv.typingSender?.stop();
    const cmid = this.env.newId();
    const entry = conv.messages.addPending(cmid, this.me, text, "", this.env.now());
    conv.lastActivityMs = this.env.now();
    conv.preview = text;
    conv.previewSender = this.me;
    if (conv.joinState === "joined" || conv.joinState === "joining") this.sendEntry(conv, entry);
    else if (conv.joinState === "failed" || conv.joinState === "removed") {
      conv.messages.fail(cmid, conv.joinError || `not a member of ${conv.id}`);
    }
    // Otherwise it goes when the session (re)joins.
    this.view.invalidate("messages");
    this.view.invalidate("list");
    return true;
  }

  /** Sends a failed message again, with the same client_message_id. */
  retry(conversationId: string, clientMessageId: string): void {
    const conv = this.conversations.get(conversationId);
    const entry = conv?.messages.pendingSend(clientMessageId);
    if (!conv || !entry) return;
    conv.messages.retry(clientMessageId, "");
    if (conv.joinState === "none" || conv.joinState === "failed") {
      if (conv.joinState === "failed") conv.joinState = "none";
      this.syncJoins();
    }
    if (conv.joinState === "joined" || conv.joinState === "joining") this.sendEntry(conv, entry);
    this.invalidateIfActive(conv, "messages");
  }

  private sendEntry(conv: Conversation, entry: MessageEntry): void {
    const frame = this.frame(
      "send",
      conv.id,
      { case: "send", value: { conversationId: conv.id, clientMessageId: entry.clientMessageId, body: entry.body } },
      { clientMessageId: entry.clientMessageId },
    );
    if (entry.local) entry.local.requestId = frame.requestId;
    this.session.send(frame);
  }

  /** The composer changed. */
  composerInput(hasText: boolean): void {
    const conv = this.active;
    if (!conv?.typingSender) return;
    if (hasText) conv.typingSender.input();
    else conv.typingSender.stop();
  }

  // ------------------------------------------------------------ receipts

  private scheduleAck(): void {
    if (this.ackTimer !== undefined) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      this.flushAcks();
    }, ACK_DELAY_MS);
  }

  /** Acks for everything that arrived (cumulative, one per conversation). */
  private flushAcks(): void {
    for (const conv of this.conversations.values()) {
      if (conv.joinState !== "joined") continue;
      const seq = conv.cursor.ackDue();
      if (seq === undefined) continue;
      const frame = this.frame("ack", conv.id, { case: "ack", value: { conversationId: conv.id, seq: BigInt(seq) } }, { seq });
      conv.cursor.ackQueuedAt(seq);
      this.session.send(frame, () => conv.cursor.ackSent(seq));
    }
  }

  /** Reads are sent for the open conversation while the page is visible. */
  scheduleRead(): void {
    if (this.readTimer !== undefined) return;
    this.readTimer = setTimeout(() => {
      this.readTimer = undefined;
      this.flushRead();
    }, READ_DELAY_MS);
  }

  private flushRead(): void {
    const conv = this.active;
    if (!conv || !this.env.visible()) return;
    const latest = conv.messages.maxSeq;
    if (latest > 0 && conv.unread.onRead(latest)) this.view.invalidate("list");
    if (conv.joinState !== "joined") return;
    // An ack first: DELIVERED comes before READ.
    this.flushAcks();
    const seq = conv.cursor.readDue(latest);
    if (seq === undefined) return;
    conv.cursor.readQueuedAt(seq);
    const frame = this.frame("read", conv.id, { case: "read", value: { conversationId: conv.id, seq: BigInt(seq) } }, { seq });
    this.session.send(frame, () => conv.cursor.readSent(seq));
  }

  /** The page became visible or hidden. */
  visibilityChanged(): void {
    if (this.env.visible()) {
      const conv = this.active;
      if (conv && conv.unread.onRead(conv.messages.maxSeq)) this.view.invalidate("list");
      this.scheduleRead();
    }
  }

  // ------------------------------------------------------------ helpers

  private scheduleTypingExpiry(): void {
    clearTimeout(this.typingTimer);
    const conv = this.active;
    const next = conv?.typing.nextExpiry();
    if (next === undefined) return;
    this.typingTimer = setTimeout(
      () => {
        this.view.invalidate("typing");
        this.scheduleTypingExpiry();
      },
      Math.max(50, next - this.env.now() + 10),
    );
  }

  typingUsers(): string[] {
    const conv = this.active;
    if (!conv) return [];
    const users = conv.typing.active(this.env.now());
    this.scheduleTypingExpiry();
    return users;
  }

  private invalidateIfActive(conv: Conversation, part: ViewPart): void {
    if (conv.id === this.activeId) this.view.invalidate(part);
  }

  private frame(
    kind: PendingRequest["kind"],
    conversationId: string,
    frame: FrameInit,
    extra: { clientMessageId?: string; seq?: number } = {},
  ): ClientFrame {
    const requestId = `${this.requestPrefix}-${kind[0]}${++this.requestCounter}`;
    this.requests.set(requestId, { kind, conversationId, ...extra });
    if (this.requests.size > 5000) {
      // Answers to acks, reads and refreshes are silent on success: forget the oldest.
      const oldest = this.requests.keys().next().value;
      if (oldest !== undefined) this.requests.delete(oldest);
    }
    return create(ClientFrameSchema, { requestId, frame });
  }
}

export function toChatMessage(m: Message): ChatMessage {
  return {
    conversationId: m.conversationId,
    seq: num(m.seq),
    messageId: m.messageId,
    sender: m.sender,
    body: m.body,
    sentAtMs: num(m.sentAtMs),
    clientMessageId: m.clientMessageId,
  };
}

/** "CODE_NAME: message" for a gRPC error (or any error). */
export function errorText(err: unknown): string {
  if (err instanceof ConnectError) return `${codeName(err.code)}: ${err.rawMessage}`;
  if (err instanceof Error) return err.message;
  return String(err);
}
