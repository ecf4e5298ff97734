// Chat web client: plain JavaScript, no build step, no third-party code.
//
// Three parts:
//   1. Protocol   — the WebSocket protocol v1 connection: reconnect with backoff,
//                   resume from per-chat cursors, outbox resend with the same client_id.
//   2. State      — chats, messages by seq, own pending sends; all merging is idempotent
//                   (a message is keyed by seq), so replays and resends never duplicate.
//   3. UI         — rendering and forms.
// The person using it never needs to reload: every gap is filled by `resume`.
"use strict";

// ============================================================================ 1. Protocol

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 10000;
const GAP_RETRY_MIN_MS = 1500; // a seq gap older than this triggers `resume`
const GAP_RETRY_MAX_MS = 30000;
const RESEND_AFTER_MS = 5000; // an un-acked send is sent again (same client_id)
const HISTORY_PAGE = 50;

class Protocol {
  constructor({ token, onFrame, onState, onAuthFailed }) {
    this.token = token;
    this.onFrame = onFrame;
    this.onState = onState;
    this.onAuthFailed = onAuthFailed;
    this.ws = null;
    this.ready = false; // `hello` received on the current socket
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    window.addEventListener("online", () => this.reconnectNow());
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws?token=${encodeURIComponent(this.token)}`;
  }

  connect() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.ready = false;
    this.onState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (frame.type === "hello") {
        this.ready = true;
        this.attempt = 0;
        this.onState("online");
      } else if (frame.type === "reconnect") {
        this.plannedDelay = frame.after_ms;
      }
      this.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      const hadHello = this.ready;
      this.ws = null;
      this.ready = false;
      if (this.stopped) return;
      if (!hadHello) this.checkToken();
      this.scheduleReconnect(ev.code);
    };
  }

  scheduleReconnect(code) {
    let delay;
    if (this.plannedDelay !== undefined) {
      // Graceful restart (`reconnect` frame, close 1012): come back after the hint.
      delay = this.plannedDelay + Math.random() * 500;
      this.plannedDelay = undefined;
    } else {
      const base = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** this.attempt);
      delay = base / 2 + Math.random() * (base / 2); // jitter: no thundering herd
      this.attempt += 1;
    }
    this.onState("offline", delay, code);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.ws || this.stopped) return;
    this.attempt = 0;
    this.connect();
  }

  async checkToken() {
    // The browser hides the handshake's HTTP status: ask the API whether the token is
    // still good, so an expired session goes back to the login form instead of looping.
    try {
      const res = await fetch("/api/v1/me", { headers: { Authorization: `Bearer ${this.token}` } });
      if (res.status === 401) {
        this.stop();
        this.onAuthFailed();
      }
    } catch (e) {
      /* offline: keep retrying */
    }
  }

  send(frame) {
    if (!this.ws || !this.ready || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }
}

// ============================================================================ 2. State

const api = {
  token: null,
  async call(method, path, body) {
    const headers = { "Content-Type": "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = res.status === 204 ? {} : await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = new Error((data.error && data.error.message) || res.statusText);
      err.status = res.status;
      err.code = data.error && data.error.code;
      throw err;
    }
    return data;
  },
};

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

class Chat {
  constructor(summary) {
    this.id = summary.chat_id;
    this.title = summary.title || `Chat ${summary.chat_id}`;
    this.memberIds = summary.member_ids || [];
    this.lastSeq = summary.last_seq || 0; // highest seq known to exist
    this.messages = new Map(); // seq -> message
    this.cursor = null; // highest contiguous seq held (null: history not loaded yet)
    this.oldest = null; // lowest seq held, for "load older"
    this.gapSince = 0;
    this.gapDelay = GAP_RETRY_MIN_MS;
    this.resumeAt = 0;
    this.unread = 0;
    this.historyRequested = false;
  }

  add(m) {
    if (this.messages.has(m.seq)) return false;
    this.messages.set(m.seq, m);
    if (m.seq > this.lastSeq) this.lastSeq = m.seq;
    if (this.oldest === null || m.seq < this.oldest) this.oldest = m.seq;
    this.advance();
    return true;
  }

  advance() {
    if (this.cursor === null) return;
    while (this.messages.has(this.cursor + 1)) this.cursor += 1;
  }

  hasGap() {
    return this.cursor !== null && this.lastSeq > this.cursor;
  }
}

class Store {
  constructor(me) {
    this.me = me;
    this.chats = new Map();
    this.current = null;
    this.outboxKey = `chat.outbox.${me.user_id}`;
    // client_id -> {client_id, chat_id, text, attachments, state, id?, seq?, error?, sentAt}
    this.pending = new Map();
    for (const p of JSON.parse(localStorage.getItem(this.outboxKey) || "[]")) {
      p.state = "queued";
      p.sentAt = 0;
      this.pending.set(p.client_id, p);
    }
  }

  saveOutbox() {
    const keep = [...this.pending.values()]
      .filter((p) => p.state === "queued" || p.state === "sent")
      .map(({ client_id, chat_id, text, attachments }) => ({ client_id, chat_id, text, attachments }));
    localStorage.setItem(this.outboxKey, JSON.stringify(keep));
  }

  upsertChats(summaries) {
    for (const s of summaries) {
      const chat = this.chats.get(s.chat_id);
      if (chat) {
        chat.title = s.title || chat.title;
        chat.memberIds = s.member_ids || chat.memberIds;
        chat.lastSeq = Math.max(chat.lastSeq, s.last_seq || 0);
      } else {
        this.chats.set(s.chat_id, new Chat(s));
      }
    }
  }
}

// ============================================================================ 3. App

class App {
  constructor() {
    this.session = JSON.parse(localStorage.getItem("chat.session") || "null");
    this.protocol = null;
    this.store = null;
    this.attachment = null;
    this.bindAuth();
    this.bindChat();
    if (this.session) this.start();
    else this.showAuth();
  }

  // ------------------------------------------------------------------ auth

  bindAuth() {
    this.signupMode = false;
    const setMode = (signup) => {
      this.signupMode = signup;
      $("#tab-signup").classList.toggle("active", signup);
      $("#tab-login").classList.toggle("active", !signup);
      $("#name-row").hidden = !signup;
      $("#name").required = signup;
      $("#auth-submit").textContent = signup ? "Create account" : "Log in";
      $("#password").autocomplete = signup ? "new-password" : "current-password";
    };
    $("#tab-login").onclick = () => setMode(false);
    $("#tab-signup").onclick = () => setMode(true);
    $("#auth-form").onsubmit = async (ev) => {
      ev.preventDefault();
      $("#auth-error").textContent = "";
      const email = $("#email").value.trim();
      const password = $("#password").value;
      const name = $("#name").value.trim();
      try {
        const res = this.signupMode
          ? await api.call("POST", "/api/v1/auth/signup", { email, password, name })
          : await api.call("POST", "/api/v1/auth/login", { email, password });
        api.token = res.token;
        const me = await api.call("GET", "/api/v1/me");
        this.session = { token: res.token, user_id: me.user_id, name: me.name };
        localStorage.setItem("chat.session", JSON.stringify(this.session));
        this.start();
      } catch (e) {
        $("#auth-error").textContent = e.message;
      }
    };
  }

  showAuth() {
    $("#chat-view").hidden = true;
    $("#auth-view").hidden = false;
  }

  logout() {
    if (this.protocol) this.protocol.stop();
    this.protocol = null;
    localStorage.removeItem("chat.session");
    this.session = null;
    clearInterval(this.ticker);
    this.showAuth();
  }

  // ------------------------------------------------------------------ start

  start() {
    api.token = this.session.token;
    this.store = new Store(this.session);
    $("#auth-view").hidden = true;
    $("#chat-view").hidden = false;
    $("#me-name").textContent = this.session.name;
    $("#message-list").replaceChildren();
    this.renderChats();
    this.refreshChats();
    this.protocol = new Protocol({
      token: this.session.token,
      onFrame: (f) => this.onFrame(f),
      onState: (s, delay) => this.onState(s, delay),
      onAuthFailed: () => this.logout(),
    });
    this.protocol.connect();
    // Housekeeping once a second: resend un-acked sends, chase seq gaps with `resume`.
    this.ticker = setInterval(() => this.tick(), 1000);
    this.chatPoll = 0;
  }

  async refreshChats() {
    try {
      const { chats } = await api.call("GET", "/api/v1/chats");
      this.store.upsertChats(chats);
      this.renderChats();
      if (this.store.current === null && chats.length) this.select(chats[0].chat_id);
      for (const chat of this.store.chats.values()) this.requestHistory(chat);
    } catch (e) {
      if (e.status === 401) this.logout();
    }
  }

  // ------------------------------------------------------------------ frames

  onFrame(f) {
    switch (f.type) {
      case "hello":
        return this.onHello(f);
      case "ack":
        return this.onAck(f);
      case "message":
        return this.onMessage(f);
      case "history":
        return this.onHistory(f);
      case "error":
        return this.onError(f);
      default:
        return undefined; // pong, reconnect: handled by Protocol
    }
  }

  onHello(f) {
    const store = this.store;
    const unknown = f.chats.some((c) => !store.chats.has(c.chat_id));
    for (const c of f.chats) {
      const chat = store.chats.get(c.chat_id);
      if (chat) chat.lastSeq = Math.max(chat.lastSeq, c.last_seq);
    }
    if (unknown) this.refreshChats();
    // Catch up: every chat whose server-side last_seq is past what we hold.
    const cursors = {};
    for (const chat of store.chats.values()) {
      if (chat.cursor === null) this.requestHistory(chat, true);
      else if (chat.lastSeq > chat.cursor) cursors[chat.id] = chat.cursor;
    }
    if (Object.keys(cursors).length) this.protocol.send({ type: "resume", cursors });
    // Outbox: everything not acked goes again, same client_id (the server dedups).
    for (const p of store.pending.values()) {
      if (p.state === "queued" || p.state === "sent") this.transmit(p);
    }
    this.renderChats();
  }

  requestHistory(chat, force = false) {
    if (chat.cursor !== null || (chat.historyRequested && !force)) return;
    if (this.protocol && this.protocol.send({ type: "history", chat_id: chat.id, limit: HISTORY_PAGE })) {
      chat.historyRequested = true;
    }
  }

  onHistory(f) {
    const chat = this.store.chats.get(f.chat_id);
    if (!chat) return;
    for (const m of f.messages) chat.add(m);
    if (chat.cursor === null) {
      // The first page anchors the cursor at the latest persisted message.
      const seqs = f.messages.map((m) => m.seq);
      chat.cursor = seqs.length ? Math.max(...seqs) : 0;
      chat.advance();
    }
    if (this.store.current === chat.id) this.renderMessages(!this.keepScroll);
    this.keepScroll = false;
    this.renderChats();
  }

  onMessage(m) {
    const store = this.store;
    let chat = store.chats.get(m.chat_id);
    if (!chat) {
      chat = new Chat({ chat_id: m.chat_id, title: "", member_ids: [], last_seq: m.seq });
      store.chats.set(m.chat_id, chat);
      this.refreshChats(); // a chat we were just added to
    }
    for (const p of store.pending.values()) {
      if (p.id === m.id) {
        store.pending.delete(p.client_id);
        store.saveOutbox();
      }
    }
    if (!chat.add(m)) return;
    if (store.current !== chat.id && m.sender_id !== store.me.user_id) chat.unread += 1;
    if (store.current === chat.id) this.renderMessages(true);
    this.renderChats();
  }

  onAck(f) {
    const store = this.store;
    const p = store.pending.get(f.client_id);
    const chat = store.chats.get(f.chat_id);
    if (chat && f.seq > chat.lastSeq) chat.lastSeq = f.seq;
    if (!p) return;
    if (chat && chat.messages.has(f.seq)) {
      store.pending.delete(p.client_id); // its message frame came first
    } else {
      Object.assign(p, { state: "acked", id: f.id, seq: f.seq, ts: f.ts });
    }
    store.saveOutbox();
    if (store.current === f.chat_id) this.renderMessages(false);
  }

  onError(f) {
    const p = f.client_id ? this.store.pending.get(f.client_id) : null;
    if (!p) {
      console.warn("server error", f.code, f.message);
      return;
    }
    if (f.code === "unavailable" || f.code === "rate_limited") {
      p.state = "queued"; // retried by tick()
      p.sentAt = Date.now();
    } else {
      p.state = "failed";
      p.error = f.message;
      this.store.saveOutbox();
    }
    if (this.store.current === p.chat_id) this.renderMessages(false);
  }

  onState(state, delay) {
    const el = $("#conn-state");
    el.dataset.state = state;
    if (state === "online") el.textContent = "Connected";
    else if (state === "connecting") el.textContent = "Connecting…";
    else el.textContent = `Offline — retrying in ${Math.ceil(delay / 1000)} s`;
  }

  // ------------------------------------------------------------------ sending

  transmit(p) {
    if (this.protocol.send({ type: "send", chat_id: p.chat_id, client_id: p.client_id, text: p.text, attachments: p.attachments })) {
      p.state = "sent";
      p.sentAt = Date.now();
    }
  }

  queueSend(chatId, text, attachments) {
    const p = { client_id: newClientId(), chat_id: chatId, text, attachments, state: "queued", sentAt: 0 };
    this.store.pending.set(p.client_id, p);
    this.store.saveOutbox();
    this.transmit(p);
    this.renderMessages(true);
  }

  tick() {
    const store = this.store;
    const now = Date.now();
    for (const p of store.pending.values()) {
      const stale = p.state === "sent" && now - p.sentAt > RESEND_AFTER_MS;
      const retry = p.state === "queued" && now - p.sentAt > 1000;
      if (stale || retry) this.transmit(p);
    }
    // A gap (seq missing below lastSeq) that outlives a normal delivery: ask for it.
    const cursors = {};
    for (const chat of store.chats.values()) {
      if (!chat.hasGap()) {
        chat.gapSince = 0;
        chat.gapDelay = GAP_RETRY_MIN_MS;
        continue;
      }
      if (!chat.gapSince) chat.gapSince = now;
      if (now - chat.gapSince >= chat.gapDelay && now >= chat.resumeAt) {
        cursors[chat.id] = chat.cursor;
        chat.resumeAt = now + chat.gapDelay;
        chat.gapDelay = Math.min(GAP_RETRY_MAX_MS, chat.gapDelay * 2);
      }
    }
    if (Object.keys(cursors).length) this.protocol.send({ type: "resume", cursors });
    this.chatPoll += 1;
    if (this.chatPoll % 20 === 0 && this.protocol.ready) this.refreshChats();
  }

  // ------------------------------------------------------------------ UI

  bindChat() {
    $("#logout").onclick = () => this.logout();
    $("#new-chat").onsubmit = async (ev) => {
      ev.preventDefault();
      $("#new-chat-error").textContent = "";
      const title = $("#new-chat-title").value.trim();
      const emails = $("#new-chat-members").value.split(",").map((s) => s.trim()).filter(Boolean);
      try {
        const ids = [];
        for (const email of emails) {
          const u = await api.call("GET", `/api/v1/users?email=${encodeURIComponent(email)}`);
          ids.push(u.user_id);
        }
        const { chat_id } = await api.call("POST", "/api/v1/chats", { title, member_ids: ids });
        $("#new-chat-title").value = "";
        $("#new-chat-members").value = "";
        this.store.upsertChats([{ chat_id, title, member_ids: [this.session.user_id, ...ids], last_seq: 0 }]);
        this.select(chat_id);
        this.refreshChats();
      } catch (e) {
        $("#new-chat-error").textContent = e.message;
      }
    };
    $("#composer").onsubmit = (ev) => {
      ev.preventDefault();
      this.submitComposer();
    };
    $("#composer-text").onkeydown = (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) {
        ev.preventDefault();
        this.submitComposer();
      }
    };
    $("#file").onchange = () => {
      const file = $("#file").files[0];
      this.attachment = file || null;
      $("#attachment-name").textContent = file ? file.name : "";
    };
    $("#older").onclick = () => {
      const chat = this.store.chats.get(this.store.current);
      if (!chat || chat.oldest === null) return;
      this.keepScroll = true;
      this.protocol.send({ type: "history", chat_id: chat.id, before_seq: chat.oldest, limit: HISTORY_PAGE });
    };
  }

  async submitComposer() {
    const chatId = this.store.current;
    const text = $("#composer-text").value.trim();
    if (chatId === null || (!text && !this.attachment)) return;
    let attachments = [];
    if (this.attachment) {
      try {
        attachments = [await this.upload(this.attachment)];
      } catch (e) {
        $("#attachment-name").textContent = `upload failed: ${e.message}`;
        return;
      }
      this.attachment = null;
      $("#file").value = "";
      $("#attachment-name").textContent = "";
    }
    $("#composer-text").value = "";
    this.queueSend(chatId, text, attachments);
  }

  async upload(file) {
    const type = file.type || "application/octet-stream";
    const slot = await api.call("POST", "/api/v1/attachments", { content_type: type, size: file.size });
    const res = await fetch(slot.upload_url, { method: "PUT", headers: { "Content-Type": type }, body: file });
    if (!res.ok) throw new Error(`upload: HTTP ${res.status}`);
    return slot.key;
  }

  select(chatId) {
    this.store.current = chatId;
    const chat = this.store.chats.get(chatId);
    if (!chat) return;
    chat.unread = 0;
    $("#composer").hidden = false;
    this.requestHistory(chat);
    this.renderChats();
    this.renderMessages(true);
    $("#composer-text").focus();
  }

  renderChats() {
    const list = $("#chat-list");
    const items = [...this.store.chats.values()].sort((a, b) => b.id - a.id);
    list.replaceChildren(
      ...items.map((chat) => {
        const li = el("li", { className: "chat-item", dataset: { chatId: chat.id } });
        li.classList.toggle("active", chat.id === this.store.current);
        li.append(el("span", { className: "chat-title", textContent: chat.title }));
        if (chat.unread) li.append(el("span", { className: "badge", textContent: String(chat.unread) }));
        li.onclick = () => this.select(chat.id);
        return li;
      }),
    );
    const chat = this.store.chats.get(this.store.current);
    $("#chat-title").textContent = chat ? chat.title : "Pick or create a chat";
    $("#chat-members").textContent = chat ? `${chat.memberIds.length} members` : "";
  }

  renderMessages(scroll) {
    const chat = this.store.chats.get(this.store.current);
    const box = $("#messages");
    const list = $("#message-list");
    if (!chat) {
      list.replaceChildren();
      return;
    }
    const me = this.store.me.user_id;
    const rows = [...chat.messages.values()].sort((a, b) => a.seq - b.seq).map((m) => {
      const li = el("li", { className: "msg", dataset: { seq: m.seq, id: m.id, state: "delivered" } });
      li.classList.toggle("mine", m.sender_id === me);
      li.append(
        el("div", { className: "meta", textContent: `${m.sender_name || "user " + m.sender_id} · ${time(m.ts)}` }),
        el("div", { className: "msg-text", textContent: m.text }),
      );
      for (const a of m.attachments || []) li.append(attachmentLink(a));
      if (m.sender_id === me) li.append(el("span", { className: "tick", textContent: "✓✓", title: "delivered" }));
      return li;
    });
    const pending = [...this.store.pending.values()]
      .filter((p) => p.chat_id === chat.id && !(p.seq && chat.messages.has(p.seq)))
      .sort((a, b) => (a.seq || Infinity) - (b.seq || Infinity))
      .map((p) => {
        const li = el("li", { className: "msg mine pending", dataset: { clientId: p.client_id, state: p.state } });
        const label = { queued: "waiting for connection", sent: "sending…", acked: "✓", failed: `failed: ${p.error}` }[p.state];
        li.append(
          el("div", { className: "meta", textContent: "you" }),
          el("div", { className: "msg-text", textContent: p.text }),
          el("span", { className: "tick", textContent: label }),
        );
        if (p.state === "failed") {
          const x = el("button", { className: "link", textContent: "dismiss", type: "button" });
          x.onclick = () => {
            this.store.pending.delete(p.client_id);
            this.store.saveOutbox();
            this.renderMessages(false);
          };
          li.append(x);
        }
        return li;
      });
    list.replaceChildren(...rows, ...pending);
    $("#older").hidden = !(chat.oldest !== null && chat.oldest > 1);
    if (scroll) box.scrollTop = box.scrollHeight;
  }
}

// ============================================================================ helpers

function $(selector) {
  return document.querySelector(selector);
}

function el(tag, props) {
  const node = document.createElement(tag);
  const { dataset, ...rest } = props || {};
  Object.assign(node, rest);
  if (dataset) for (const [k, v] of Object.entries(dataset)) node.dataset[k] = v;
  return node;
}

function time(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function attachmentLink(a) {
  const href = `${a.url}?token=${encodeURIComponent(api.token)}`;
  if (a.content_type.startsWith("image/")) {
    const link = el("a", { href, target: "_blank", rel: "noopener", className: "attachment" });
    link.append(el("img", { src: href, alt: a.key, loading: "lazy" }));
    return link;
  }
  return el("a", { href, target: "_blank", rel: "noopener", className: "attachment", textContent: `attachment: ${a.content_type}, ${a.size} bytes` });
}

window.chatApp = new App();
