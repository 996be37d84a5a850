// The DOM: renders ChatApp's state, batched into animation frames, and
// forwards the user's input. Text always goes in through textContent.

import type { ChatApp, Conversation, View, ViewPart } from "./app";
import type { MessageEntry } from "./lib/messages";
import { tickStatus, tickSteps } from "./lib/ticks";
import type { TickStatus } from "./lib/types";
import { typingText } from "./lib/typing";

const TICK_TEXT: Record<TickStatus, string> = {
  PENDING: "◷",
  SENT: "✓",
  DELIVERED: "✓✓",
  READ: "✓✓",
  FAILED: "!",
};
const TICK_TITLE: Record<TickStatus, string> = {
  PENDING: "Sending…",
  SENT: "Sent",
  DELIVERED: "Delivered",
  READ: "Read",
  FAILED: "Not delivered",
};
interface Shown {
  seq: number | undefined;
  messageId: string;
  body: string;
  sentAtMs: number;
  grouped: boolean;
  status: TickStatus | undefined;
  error: string;
}

/** Load older history when scrolled this close to the top. */
const TOP_THRESHOLD_PX = 120;
/** Counts as "at the bottom" (new messages keep it there). */
const BOTTOM_THRESHOLD_PX = 48;
/** Consecutive messages of one sender within this share a header. */
const GROUP_MS = 5 * 60_000;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function byId<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} is missing from index.html`);
  return e as T;
}

function setAttr(e: Element, name: string, value: string): void {
  if (e.getAttribute(name) !== value) e.setAttribute(name, value);
}

function setText(e: Element, text: string): void {
  if (e.textContent !== text) e.textContent = text;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** performance.timeOrigin + performance.now(): epoch milliseconds, sub-ms. */
function nowPrecise(): number {
  return performance.timeOrigin + performance.now();
}

/** Runs `fn` in the next animation frame (or soon, when the page is hidden and frames stop). */
function nextFrame(fn: () => void): void {
  if (document.visibilityState === "hidden") setTimeout(fn, 16);
  else requestAnimationFrame(fn);
}

export class Ui implements View {
  private app: ChatApp | undefined;
  private readonly dirty = new Set<ViewPart>();
  private scheduled = false;
  private readonly messagesEl = byId<HTMLUListElement>("messages");
  private readonly conversationsEl = byId<HTMLUListElement>("conversations");
  private readonly presenceEl = byId<HTMLUListElement>("presence");
  private readonly typingEl = byId<HTMLElement>("typing");
  private readonly statusEl = byId<HTMLElement>("status");
  private readonly bannerEl = byId<HTMLElement>("error-banner");
  private readonly bannerText = byId<HTMLElement>("error-text");
  private readonly composer = byId<HTMLTextAreaElement>("composer");
  private readonly sendButton = byId<HTMLButtonElement>("send");
  private readonly titleEl = byId<HTMLElement>("conversation-title");
  private readonly subtitleEl = byId<HTMLElement>("conversation-subtitle");
  /** The rendered conversation's message elements, by entry. */
  private renderedConversation: string | undefined;
  private readonly items = new Map<MessageEntry, HTMLLIElement>();
  private readonly listItems = new Map<string, HTMLLIElement>();
  private stickToBottom = true;
  private readonly latencyRecorded = new Set<string>();
  /** What each message element shows now. */
  private readonly shown = new WeakMap<HTMLLIElement, Shown>();
  onSignInRequested: ((reason: string) => void) | undefined;

  attach(app: ChatApp): void {
    this.app = app;
    this.messagesEl.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.messagesEl.addEventListener("click", (ev) => {
      const target = ev.target as HTMLElement;
      if (!target.classList.contains("retry")) return;
      const li = target.closest<HTMLLIElement>("li.message");
      const cmid = li?.dataset.clientMessageId;
      if (cmid && this.app?.activeId) this.app.retry(this.app.activeId, cmid);
    });
    this.conversationsEl.addEventListener("click", (ev) => {
      const li = (ev.target as HTMLElement).closest<HTMLLIElement>("li[data-conversation-id]");
      const id = li?.dataset.conversationId;
      if (id) app.open(id);
    });
    this.composer.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.send();
      }
    });
    this.composer.addEventListener("input", () => app.composerInput(this.composer.value.trim() !== ""));
    this.sendButton.addEventListener("click", (ev) => {
      ev.preventDefault();
      this.send();
    });
    const openInput = byId<HTMLInputElement>("open-conversation");
    byId<HTMLFormElement>("open-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const submitter = (ev as SubmitEvent).submitter;
      const id = openInput.value.trim();
      if (!id) return;
      if (submitter?.id === "create-conversation-submit") void app.createConversation(id);
      else app.open(id);
      openInput.value = "";
    });
    byId<HTMLButtonElement>("error-dismiss").addEventListener("click", () => {
      this.bannerEl.hidden = true;
      setText(this.bannerText, "");
    });
    document.addEventListener("visibilitychange", () => app.visibilityChanged());
    window.addEventListener("focus", () => app.visibilityChanged());
    for (const part of ["list", "messages", "presence", "typing", "status", "composer"] as const) this.invalidate(part);
  }

  private send(): void {
    const app = this.app;
    if (!app) return;
    if (app.sendMessage(this.composer.value)) {
      this.composer.value = "";
      this.stickToBottom = true;
    }
    this.composer.focus();
  }

  private onScroll(): void {
    const ul = this.messagesEl;
    this.stickToBottom = ul.scrollHeight - ul.scrollTop - ul.clientHeight < BOTTOM_THRESHOLD_PX;
    if (ul.scrollTop < TOP_THRESHOLD_PX) this.maybeLoadOlder();
  }

  private maybeLoadOlder(): void {
    const conv = this.app?.active;
    if (conv && conv.historyStarted && conv.hasMore && !conv.loading) void this.app?.loadOlder(conv);
  }

  // ------------------------------------------------------------ View

  invalidate(part: ViewPart): void {
    this.dirty.add(part);
    if (this.scheduled) return;
    this.scheduled = true;
    nextFrame(() => this.render());
  }

  showError(text: string): void {
    setText(this.bannerText, text);
    this.bannerEl.hidden = false;
  }

  requestSignIn(reason: string): void {
    this.showError(reason);
    this.onSignInRequested?.(reason);
  }

  // ------------------------------------------------------------ rendering

  private render(): void {
    this.scheduled = false;
    const parts = new Set(this.dirty);
    this.dirty.clear();
    if (!this.app) return;
    if (parts.has("status")) this.renderStatus();
    if (parts.has("list")) this.renderList();
    if (parts.has("messages")) this.renderMessages();
    if (parts.has("presence")) this.renderPresence();
    if (parts.has("typing")) this.renderTyping();
    if (parts.has("composer") || parts.has("messages")) this.renderComposer();
  }

  private renderStatus(): void {
    const app = this.app as ChatApp;
    const s = this.statusEl;
    setAttr(s, "data-state", app.connState);
    setAttr(s, "data-gateway-id", app.gatewayId);
    setAttr(s, "data-sessions", String(app.debug.sessions));
    let text: string;
    switch (app.connState) {
      case "connected":
        text = `Connected · ${app.gatewayId}`;
        break;
      case "connecting":
        text = "Connecting…";
        break;
      case "reconnecting":
        text =
          app.retryInMs !== undefined
            ? `Reconnecting in ${(app.retryInMs / 1000).toFixed(1)} s…`
            : "Reconnecting…";
        break;
    }
    setText(s, text);
    s.title = app.lastConnError ? `Last error: ${app.lastConnError}` : "";
  }

  private renderList(): void {
    const app = this.app as ChatApp;
    const ul = this.conversationsEl;
    const convs = app.sortedConversations();
    const seen = new Set<string>();
    let cursor: ChildNode | null = ul.firstChild;
    for (const conv of convs) {
      seen.add(conv.id);
      let li = this.listItems.get(conv.id);
      if (!li) {
        li = el("li", "conversation");
        li.dataset.conversationId = conv.id;
        const avatar = el("span", "avatar");
        const main = el("div", "conv-main");
        const top = el("div", "conv-top");
        top.append(el("span", "name"), el("span", "unread"));
        main.append(top, el("div", "preview"));
        li.append(avatar, main);
        li.tabIndex = 0;
        this.listItems.set(conv.id, li);
      }
      this.updateListItem(li, conv, app);
      if (cursor === li) cursor = li.nextSibling;
      else ul.insertBefore(li, cursor);
    }
    removeFrom(ul, cursor);
    for (const id of [...this.listItems.keys()]) if (!seen.has(id)) this.listItems.delete(id);
  }

  private updateListItem(li: HTMLLIElement, conv: Conversation, app: ChatApp): void {
    const active = conv.id === app.activeId;
    li.classList.toggle("active", active);
    li.classList.toggle("failed", conv.joinState === "failed" || conv.joinState === "removed");
    const unread = conv.unread.count;
    setAttr(li, "data-unread", String(unread));
    const avatar = li.querySelector(".avatar") as HTMLElement;
    setText(avatar, (conv.title || conv.id).slice(0, 1).toUpperCase());
    setText(li.querySelector(".name") as HTMLElement, conv.title || conv.id);
    const badge = li.querySelector(".unread") as HTMLElement;
    setText(badge, unread > 0 ? String(unread) : "");
    badge.hidden = unread === 0;
    const preview = conv.joinError
      ? conv.joinError
      : conv.preview
        ? `${conv.previewSender === app.me ? "You" : conv.previewSender}: ${conv.preview}`
        : "";
    setText(li.querySelector(".preview") as HTMLElement, preview);
    li.title = conv.id;
  }

  private renderMessages(): void {
    const app = this.app as ChatApp;
    const ul = this.messagesEl;
    const conv = app.active;
    if (!conv) {
      if (this.renderedConversation !== undefined) {
        ul.replaceChildren();
        this.items.clear();
        this.renderedConversation = undefined;
      }
      setAttr(ul, "data-has-more", "false");
      setAttr(ul, "data-loading", "false");
      setText(this.titleEl, "No conversation open");
      setText(this.subtitleEl, "Pick one on the left, or open one by its id.");
      return;
    }
    const switched = this.renderedConversation !== conv.id;
    if (switched) {
      ul.replaceChildren();
      this.items.clear();
      this.renderedConversation = conv.id;
      this.stickToBottom = true;
    }
    setText(this.titleEl, conv.title || conv.id);
    setText(this.subtitleEl, this.subtitle(conv));

    // Keep what the user looks at where it is when older pages come in above.
    const atBottom = this.stickToBottom;
    let anchor: HTMLElement | null = null;
    let anchorOffset = 0;
    if (!atBottom) {
      for (const child of ul.children) {
        const li = child as HTMLElement;
        if (li.offsetTop + li.offsetHeight > ul.scrollTop) {
          anchor = li;
          anchorOffset = li.offsetTop - ul.scrollTop;
          break;
        }
      }
    }

    const entries = conv.messages.list();
    const painted: MessageEntry[] = [];
    const live = new Set<MessageEntry>();
    let cursor: ChildNode | null = ul.firstChild;
    let prev: MessageEntry | undefined;
    for (const entry of entries) {
      live.add(entry);
      let li = this.items.get(entry);
      if (!li) {
        li = this.createMessage(entry, app);
        this.items.set(entry, li);
        if (entry.live && entry.sender !== app.me && entry.seq !== undefined) painted.push(entry);
      }
      this.updateMessage(li, entry, conv, app, prev);
      prev = entry;
      if (cursor === li) cursor = li.nextSibling;
      else ul.insertBefore(li, cursor);
    }
    removeFrom(ul, cursor);
    if (this.items.size > live.size) {
      for (const entry of [...this.items.keys()]) if (!live.has(entry)) this.items.delete(entry);
    }

    setAttr(ul, "data-has-more", String(conv.hasMore));
    setAttr(ul, "data-loading", String(conv.loading));

    if (atBottom) ul.scrollTop = ul.scrollHeight;
    else if (anchor && anchor.parentNode === ul) ul.scrollTop = anchor.offsetTop - anchorOffset;

    if (painted.length) this.recordLatencies(conv.id, painted);

    // A first page shorter than the window: nothing to scroll, so load on.
    if (conv.historyStarted && conv.hasMore && !conv.loading && ul.scrollHeight <= ul.clientHeight + 4) {
      void app.loadOlder(conv);
    }
  }

  /** After the frame that painted them: when others' live messages showed. */
  private recordLatencies(conversationId: string, entries: MessageEntry[]): void {
    const debug = (this.app as ChatApp).debug;
    setTimeout(() => {
      const renderedAtMs = nowPrecise();
      for (const e of entries) {
        const key = `${conversationId}\u0000${e.seq}`;
        if (this.latencyRecorded.has(key)) continue;
        this.latencyRecorded.add(key);
        debug.renderLatencies.push({ seq: e.seq as number, sentAtMs: e.sentAtMs, renderedAtMs });
      }
      if (debug.renderLatencies.length > 20_000) debug.renderLatencies.splice(0, debug.renderLatencies.length - 20_000);
    }, 0);
  }

  private subtitle(conv: Conversation): string {
    switch (conv.joinState) {
      case "joining":
        return "Joining…";
      case "failed":
        return conv.joinError || "Could not join";
      case "removed":
        return "You are no longer a member";
      case "none":
        return "Waiting for the connection…";
      case "joined": {
        const members = conv.memberIds().length;
        const online = conv.online.size;
        return `${members} member${members === 1 ? "" : "s"} · ${online} online`;
      }
    }
  }

  private createMessage(entry: MessageEntry, app: ChatApp): HTMLLIElement {
    const li = el("li", "message");
    const own = entry.sender === app.me;
    li.classList.add(own ? "own" : "other");
    li.dataset.sender = entry.sender;
    li.dataset.clientMessageId = entry.clientMessageId;
    const meta = el("div", "meta");
    meta.append(el("span", "sender", entry.sender));
    const bubble = el("div", "bubble");
    bubble.append(el("div", "body", entry.body));
    const foot = el("div", "foot");
    foot.append(el("time", "time"));
    if (own) foot.append(el("span", "ticks"));
    bubble.append(foot);
    li.append(meta, bubble);
    return li;
  }

  private updateMessage(
    li: HTMLLIElement,
    entry: MessageEntry,
    conv: Conversation,
    app: ChatApp,
    prev: MessageEntry | undefined,
  ): void {
    // Every render walks every message: touch the DOM only for what changed.
    let shown = this.shown.get(li);
    if (!shown) {
      shown = { seq: undefined, messageId: "", body: "", sentAtMs: 0, grouped: false, status: undefined, error: "" };
      this.shown.set(li, shown);
    }
    if (shown.seq !== entry.seq) {
      shown.seq = entry.seq;
      if (entry.seq !== undefined) li.setAttribute("data-seq", String(entry.seq));
      else li.removeAttribute("data-seq");
    }
    if (shown.messageId !== entry.messageId) {
      shown.messageId = entry.messageId;
      li.setAttribute("data-message-id", entry.messageId);
    }
    if (shown.body !== entry.body) {
      shown.body = entry.body;
      setText(li.querySelector(".body") as HTMLElement, entry.body);
    }
    if (shown.sentAtMs !== entry.sentAtMs && entry.sentAtMs) {
      shown.sentAtMs = entry.sentAtMs;
      const time = li.querySelector(".time") as HTMLTimeElement;
      const d = new Date(entry.sentAtMs);
      setText(time, timeFormat.format(d));
      time.setAttribute("datetime", d.toISOString());
      time.title = dateTimeFormat.format(d);
    }
    const grouped =
      prev !== undefined && prev.sender === entry.sender && Math.abs(entry.sentAtMs - prev.sentAtMs) < GROUP_MS;
    if (shown.grouped !== grouped) {
      shown.grouped = grouped;
      li.classList.toggle("grouped", grouped);
    }
    if (entry.sender !== app.me) return;
    const ticks = li.querySelector(".ticks") as HTMLElement | null;
    if (!ticks) return;
    const status = tickStatus(conv.receipts, app.me, entry.seq, entry.local?.failed ?? false);
    if (shown.status !== status) {
      // Each status the message passes through is written (observers see DELIVERED before READ).
      for (const step of tickSteps(shown.status, status)) ticks.setAttribute("data-status", step);
      shown.status = status;
      setText(ticks, TICK_TEXT[status]);
      ticks.title =
        status === "FAILED" && entry.seq !== undefined
          ? `Not delivered: ${conv.receipts.failureReason(entry.seq)}`
          : TICK_TITLE[status];
      li.classList.toggle("failed", status === "FAILED");
    }
    const error = entry.local?.failed ? entry.local.error : "";
    if (shown.error !== error) {
      shown.error = error;
      li.querySelector(".error")?.remove();
      li.querySelector(".retry")?.remove();
      if (error) {
        const retry = el("button", "retry", "Retry");
        retry.type = "button";
        li.append(el("div", "error", error), retry);
      }
    }
  }

  private renderPresence(): void {
    const app = this.app as ChatApp;
    const ul = this.presenceEl;
    const conv = app.active;
    const users = conv ? conv.memberIds() : [];
    if (conv && !users.includes(app.me) && conv.joinState === "joined") users.push(app.me);
    const online = (u: string) => (u === app.me ? app.connState === "connected" : conv?.online.has(u) ?? false);
    users.sort((a, b) => Number(online(b)) - Number(online(a)) || a.localeCompare(b));
    const items: HTMLLIElement[] = [];
    const existing = new Map<string, HTMLLIElement>();
    for (const child of ul.children) {
      const li = child as HTMLLIElement;
      if (li.dataset.user) existing.set(li.dataset.user, li);
    }
    for (const u of users) {
      let li = existing.get(u);
      if (!li) {
        li = el("li", "member");
        li.dataset.user = u;
        li.append(el("span", "dot"), el("span", "member-name", u));
        if (u === app.me) li.append(el("span", "you", "you"));
      }
      setAttr(li, "data-online", String(online(u)));
      li.title = online(u) ? `${u} is online` : `${u} is offline`;
      items.push(li);
    }
    ul.replaceChildren(...items);
  }

  private renderTyping(): void {
    const app = this.app as ChatApp;
    setText(this.typingEl, typingText(app.typingUsers()));
  }

  private renderComposer(): void {
    const app = this.app as ChatApp;
    const conv = app.active;
    const enabled = conv !== undefined && conv.joinState !== "failed" && conv.joinState !== "removed";
    this.composer.disabled = !enabled;
    this.sendButton.disabled = !enabled;
    this.composer.placeholder = conv ? `Message ${conv.title || conv.id}` : "Open a conversation to write";
  }
}

/** Removes `cursor` and every node after it from `parent`: what a keyed
 * render left over. */
function removeFrom(parent: Node, cursor: ChildNode | null): void {
  while (cursor) {
    const next: ChildNode | null = cursor.nextSibling;
    parent.removeChild(cursor);
    cursor = next;
  }
}
