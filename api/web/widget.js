/*
 * <rapport-chat>: Rapport's chat widget. Plain ES2022, no build step, no dependency.
 *
 *   <script src="https://your-rapport/widget.js"></script>
 *   <rapport-chat session-endpoint="/your-backend/rapport-session" launcher></rapport-chat>
 *
 * The element never holds an API key: it asks the page's own backend (session-endpoint,
 * same origin, POST {"mode"}) for a session, and that backend relays Rapport's answer to
 * POST /api/sessions unchanged (201 ready, 202 queued, or a problem). A page may instead set
 * `element.sessionSource = async () => Response`. Everything else follows the live-session
 * contract (README, "Live sessions"): frames, seq, resume with last_seq, close codes.
 *
 * A page view costs nothing: the session is minted on the visitor's first message (or when
 * the chat is opened with start="open", or at once with autostart), and a reload resumes it
 * from what the tab keeps in sessionStorage.
 *
 * Styles live in a constructed stylesheet adopted by the shadow root (no <style>, no style
 * attribute), so a Content-Security-Policy without 'unsafe-inline' serves it as is.
 */
(() => {
  "use strict";

  if (typeof window === "undefined" || !window.customElements) return;
  if (window.customElements.get("rapport-chat")) return;

  // Every word the widget shows, in one place: a page replaces any of them through the
  // `strings` property. {name} is filled in.
  const STRINGS = {
    launcherOpen: "Chat with us",
    launcherClose: "Close the chat",
    unread: "New reply",
    logLabel: "Conversation",
    inputLabel: "Message",
    placeholder: "Type a message…",
    send: "Send",
    stop: "Stop the reply",
    mic: "Record a voice note",
    starters: "Suggested questions",
    sources: "Sources",
    tryAgain: "Try again",
    startNew: "Start a new conversation",
    newConversation: "New conversation",
    connecting: "Connecting…",
    reconnecting: "Reconnecting…",
    inLine: "You're number {position} in line",
    inLineWait: "You're number {position} in line — about {wait}",
    seconds: "{n} s",
    minutes: "{n} min",
    messagesLeft: "{n} messages left",
    messageLeft: "{n} message left",
    timeLeft: "{time} left",
    stopped: "Stopped",
    replyFailed: "This reply couldn't be finished.",
    voiceNote: "Voice note",
    voiceNoteSending: "Voice note…",
    voiceUnheard: "We couldn't hear anything in that voice note.",
    voiceUnusable: "We couldn't use that voice note.",
    voiceNeedsHttps: "Voice notes need a browser with microphone access on a secure (https) page.",
    micUnavailable: "The microphone isn't available. Please allow access and try again.",
    recordingUnsupported: "Recording isn't supported in this browser.",
    voiceUnreadable: "The voice note couldn't be read.",
    voiceNotSent: "The voice note couldn't be sent: the connection dropped.",
    somethingWrong: "Something went wrong.",
    missing: "Some messages may be missing.",
    tooBig: "That message was too large to send.",
    unreachable: "We couldn't reach the chat service. Please check your connection and try again.",
    trouble: "The chat service is having trouble. Please try again shortly.",
    notSetUp: "This chat isn't set up yet (no session endpoint).",
    placeLost: "Your place in line was lost. Please try again.",
    lineClosed: "The waiting line closed unexpectedly. Please try again.",
    mintFailed: "This chat couldn't be started. Please try again later.",
    waitingRoomFullFor: "The service is busy and the waiting line is full. Please try again in about {wait}.",
    // Closes after which this session never reconnects: what the person reading is told.
    "close.1000": "The conversation has ended.",
    "close.1008": "The connection was closed because of too many or invalid messages.",
    "close.1013": "The service is busy; please try again shortly.",
    "close.4001": "This chat link has expired. Please reload the page to start again.",
    "close.4004": "This conversation has ended and is no longer available.",
    "close.4005": "You've reached the message limit for this conversation. Start a new one to keep talking.",
    "close.4006": "This conversation has reached its time limit.",
    "close.4007": "This chat was closed after a quiet while. Send a message to start again.",
    "close.4009": "This conversation was opened in another tab or window.",
    // Minting problems, by the problem's code.
    "mint.limits.waiting_room_full":
      "The service is busy and the waiting line is full. Please try again in a few minutes.",
    "mint.limits.concurrent_session":
      "Too many conversations are open at the moment. Please close one or try again shortly.",
    "mint.limits.rate_exceeded": "Too many attempts in a short time. Please wait a moment and try again.",
    "mint.limits.session_time_limit": "We're not available right now. Please come back during opening hours.",
    "mint.resource.not_found": "This chat isn't available right now.",
    "mint.validation.failed": "This chat can't be started with these settings.",
  };
  const FINAL_CLOSES = new Set([1000, 1008, 1013, 4001, 4004, 4005, 4006, 4007, 4009]);
  // After these a fresh conversation makes sense (the next message starts one); 4001 says
  // reload, 4009 lives elsewhere.
  const RESTARTABLE = new Set([1000, 1008, 1013, 4004, 4005, 4006, 4007]);
  // What a kept session's socket answers once it is gone for good (past the resume window).
  const GONE = new Set([4001, 4004]);
  // Scripts written right to left: the widget lays out mirrored for these languages.
  const RTL = new Set(["ar", "arc", "ckb", "dv", "fa", "he", "iw", "ks", "ps", "sd", "ug", "ur", "yi"]);

  const MAX_BACKOFF_MS = 10000;
  const BASE_BACKOFF_MS = 500;
  const PING_EVERY_MS = 25000;
  const HIDDEN_CLOSE_SECONDS = 60; // a hidden tab lets go of its socket after this long
  const KEPT_ENTRIES = 200; // the transcript a tab keeps across page loads, newest last
  const MAX_STARTERS = 3;
  const FULL_MODE_COST = 2; // billing units a full-mode turn costs (chat: 1)
  const VOICE_MIMES = new Set([
    "audio/aac", "audio/m4a", "audio/mp3", "audio/mp4", "audio/mpeg",
    "audio/ogg", "audio/opus", "audio/wav", "audio/webm", "audio/x-wav",
  ]);

  const CSS = `
:host {
  --_accent: var(--rapport-accent, #4f46e5);
  --_bg: var(--rapport-bg, #ffffff);
  --_fg: var(--rapport-fg, #1f2937);
  --_font: var(--rapport-font, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
  --_radius: var(--rapport-radius, 14px);
  --_offset: var(--rapport-launcher-offset, 20px);
  display: block;
  box-sizing: border-box;
  max-width: 100%;
  min-width: 0;
  height: var(--rapport-height, 32rem);
  color: var(--_fg);
  font-family: var(--_font);
  font-size: 15px;
  line-height: 1.45;
}
:host([launcher]) {
  position: fixed;
  z-index: var(--rapport-z-index, 2147483000);
  bottom: var(--_offset);
  right: var(--_offset);
  height: auto;
  max-width: calc(100vw - 2 * var(--_offset));
}
:host([launcher][launcher-position="bottom-left"]) { right: auto; left: var(--_offset); }
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
.root { height: 100%; display: flex; flex-direction: column; gap: 12px; min-width: 0; }
.frame {
  display: flex;
  flex-direction: column;
  height: 100%;
  min-width: 0;
  overflow: hidden;
  background: var(--_bg);
  color: var(--_fg);
  border: 1px solid color-mix(in srgb, var(--_fg) 14%, transparent);
  border-radius: var(--_radius);
}
/* The corner is a place on the screen, whichever way the text runs: physical margins. */
:host([launcher]) .frame {
  width: var(--rapport-panel-width, 24rem);
  max-width: 100%;
  height: var(--rapport-height, 32rem);
  max-height: calc(100vh - 6rem - 2 * var(--_offset));
  margin-left: auto;
  box-shadow: 0 10px 30px color-mix(in srgb, var(--_fg) 20%, transparent);
}
.launcher { margin-left: auto; position: relative; height: 48px; padding: 0 18px; border-radius: 999px; box-shadow: 0 4px 14px color-mix(in srgb, var(--_fg) 25%, transparent); }
:host([launcher-position="bottom-left"]) .frame, :host([launcher-position="bottom-left"]) .launcher { margin-left: 0; margin-right: auto; }
.dot {
  position: absolute;
  top: -2px;
  inset-inline-end: -2px;
  width: 14px;
  height: 14px;
  border-radius: 50%;
  background: var(--rapport-unread, #d92d20);
  border: 2px solid var(--_bg);
}
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }
.head {
  display: flex;
  align-items: baseline;
  justify-content: space-between;
  gap: 8px;
  flex-wrap: wrap;
  padding: 10px 14px;
  border-bottom: 1px solid color-mix(in srgb, var(--_fg) 10%, transparent);
}
.persona { font-weight: 600; min-width: 0; overflow-wrap: anywhere; }
.budget { font-size: 12px; opacity: 0.7; font-variant-numeric: tabular-nums; }
.log {
  flex: 1 1 auto;
  min-height: 0;
  overflow-y: auto;
  overflow-x: hidden;
  padding: 12px;
  display: flex;
  flex-direction: column;
  gap: 8px;
}
.message {
  max-width: 85%;
  min-width: 0;
  padding: 8px 12px;
  border-radius: var(--_radius);
  overflow-wrap: anywhere;
  white-space: pre-wrap;
}
/* flex-end and the logical corners follow dir: a right-to-left chat mirrors itself. */
.message.user {
  align-self: flex-end;
  background: var(--_accent);
  color: #fff;
  border-end-end-radius: 4px;
}
.message.assistant {
  align-self: flex-start;
  background: color-mix(in srgb, var(--_fg) 7%, var(--_bg));
  border-end-start-radius: 4px;
}
.message.assistant[data-status="streaming"] .text:empty::before { content: "…"; opacity: 0.6; }
.message.pending { opacity: 0.85; }
.message .aside { display: block; margin-top: 4px; font-size: 12px; opacity: 0.7; white-space: normal; }
.sources { margin: 6px 0 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 4px; font-size: 12px; white-space: normal; }
.sources:empty { display: none; }
.sources::before { content: attr(data-label) ":"; opacity: 0.7; margin-inline-end: 2px; }
.sources li {
  padding: 1px 6px;
  border-radius: 999px;
  background: color-mix(in srgb, var(--_fg) 10%, transparent);
  overflow-wrap: anywhere;
}
.note { align-self: center; max-width: 100%; font-size: 12px; opacity: 0.75; text-align: center; overflow-wrap: anywhere; }
.note.error { color: #b42318; opacity: 1; }
.starters { display: flex; flex-wrap: wrap; gap: 6px; padding: 0 12px 8px; }
.starters button { height: auto; min-height: 32px; padding: 4px 12px; border-radius: 999px; text-align: start; border-color: color-mix(in srgb, var(--_accent) 45%, transparent); background: var(--_bg); color: var(--_accent); }
.status {
  padding: 0 14px;
  font-size: 13px;
  overflow-wrap: anywhere;
}
.status:not(:empty) { padding: 8px 14px; border-top: 1px solid color-mix(in srgb, var(--_fg) 10%, transparent); }
.retry-row { padding: 0 14px 8px; }
.composer {
  display: flex;
  align-items: flex-end;
  gap: 6px;
  padding: 8px;
  border-top: 1px solid color-mix(in srgb, var(--_fg) 10%, transparent);
  min-width: 0;
}
textarea {
  flex: 1 1 auto;
  min-width: 0;
  width: 100%;
  resize: none;
  max-height: 8rem;
  padding: 8px 10px;
  font: inherit;
  color: inherit;
  background: var(--_bg);
  border: 1px solid color-mix(in srgb, var(--_fg) 22%, transparent);
  border-radius: calc(var(--_radius) * 0.7);
}
textarea:disabled { opacity: 0.6; }
button {
  flex: 0 0 auto;
  display: inline-flex;
  align-items: center;
  justify-content: center;
  gap: 4px;
  min-width: 38px;
  height: 38px;
  padding: 0 10px;
  font: inherit;
  font-size: 14px;
  color: var(--_fg);
  background: color-mix(in srgb, var(--_fg) 8%, var(--_bg));
  border: 1px solid transparent;
  border-radius: calc(var(--_radius) * 0.7);
  cursor: pointer;
}
button:disabled { opacity: 0.45; cursor: default; }
button.primary { background: var(--_accent); color: #fff; }
button[aria-pressed="true"] { background: #d92d20; color: #fff; }
button svg { width: 18px; height: 18px; fill: currentColor; }
[dir="rtl"] [part="send"] svg { transform: scaleX(-1); }
button:focus-visible, textarea:focus-visible {
  outline: 2px solid var(--_accent);
  outline-offset: 2px;
}
`;

  let sheet = null;
  try {
    sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
  } catch {
    sheet = null; // a browser without constructable stylesheets gets a <style> instead
  }

  const ICONS = {
    send: '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M3.4 20.4 21 12 3.4 3.6 3.4 10l12.6 2-12.6 2z"/></svg>',
    stop: '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M7 7h10v10H7z"/></svg>',
    mic: '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M12 14a3 3 0 0 0 3-3V5a3 3 0 0 0-6 0v6a3 3 0 0 0 3 3zm5-3a5 5 0 0 1-10 0H5a7 7 0 0 0 6 6.9V21h2v-3.1a7 7 0 0 0 6-6.9z"/></svg>',
  };

  // Words are filled in from the strings (#applyStrings), never written here.
  const TEMPLATE = `
<div class="root" part="root">
<div class="frame" part="frame" id="panel">
  <div class="head" part="header">
    <span class="persona" part="persona"></span>
    <span class="budget" part="budget"></span>
  </div>
  <div class="log" part="log" role="log" aria-live="polite" tabindex="0"></div>
  <div class="starters" part="starters" role="group" hidden></div>
  <div class="status" part="status" role="status" aria-live="polite"></div>
  <div class="retry-row" hidden><button type="button" part="retry" class="primary"></button></div>
  <div class="composer" part="composer">
    <button type="button" part="mic" aria-pressed="false" hidden>${ICONS.mic}</button>
    <textarea part="input" rows="1" maxlength="4000"></textarea>
    <button type="button" part="stop" disabled>${ICONS.stop}</button>
    <button type="button" part="send" class="primary" disabled>${ICONS.send}</button>
  </div>
</div>
<button type="button" part="launcher" class="launcher primary" aria-controls="panel" aria-expanded="false" hidden><span class="label"></span><span class="dot" part="unread" hidden><span class="visually-hidden"></span></span></button>
</div>`;

  function fill(template, values) {
    return String(template).replace(/\{(\w+)\}/g, (whole, name) => (name in values ? String(values[name]) : whole));
  }

  function newId() {
    if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function backoff(attempt) {
    // Full jitter, applied after the cap.
    return Math.random() * Math.min(MAX_BACKOFF_MS, BASE_BACKOFF_MS * 2 ** attempt);
  }

  function clock(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, "0");
    return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
  }

  /** Up to three non-empty strings from ``value`` (an array, or JSON of one), else []. */
  function starterList(value) {
    let list = value;
    if (typeof list === "string") {
      try {
        list = JSON.parse(list);
      } catch {
        return [];
      }
    }
    if (!Array.isArray(list)) return [];
    return list.filter((s) => typeof s === "string" && s.trim() !== "").slice(0, MAX_STARTERS);
  }

  async function toBase64(blob) {
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  class RapportChat extends HTMLElement {
    static get observedAttributes() {
      return ["autostart", "launcher", "lang", "dir", "starter-prompts"];
    }

    #source = null;
    #strings = STRINGS;
    #starters = null; // the page's own (property); null: the attribute, else the last mint's
    #mintStarters = []; // starter_prompts of this tab's last mint
    #root;
    #els;
    #started = false;
    #restored = false; // what the tab kept has been put back (once per time on a page)
    #generation = 0; // bumped by each start()/end(): late callbacks of an older run do nothing
    // session
    #wsUrl = null;
    #ws = null;
    #mode = "chat";
    #lastSeq = 0;
    #hadReady = false;
    #live = false; // the socket is open and its session.ready came
    #kept = false; // this socket resumes a session left earlier (a page load, a hidden tab)
    #restartable = false; // closed, and the next message starts a new session
    #closingCode = null;
    #attempt = 0;
    #retryTimer = null;
    #retryNow = null;
    #pingTimer = null;
    #hiddenTimer = null;
    // waiting room
    #queueWs = null;
    #pollUrl = null;
    #admitted = false;
    // conversation
    #outbox = []; // user bubbles written before their session was ready, oldest first
    #pending = []; // user bubbles waiting for their turn number, oldest first
    #userByTurn = new Map();
    #assistantByTurn = new Map();
    #open = new Set(); // turns known to have started and not yet done
    #streaming = new Set(); // turns whose reply is streaming
    #lastRefError = null; // {bubble, seq}: an error about a message, maybe before its failed reply
    // launcher
    #panelOpen = false;
    #unread = false;
    // budget
    #interactions = null;
    #deadline = null;
    #budgetTimer = null;
    // voice
    #recording = null; // {recorder, discard} while the microphone records
    #onOnline = () => {
      // Back online: the next try need not wait out its backoff.
      if (this.#retryNow) this.#retryNow();
    };
    #onVisibility = () => this.#visibilityChanged();
    #onPageHide = () => this.#save();

    constructor() {
      super();
      this.#root = this.attachShadow({ mode: "open" });
      if (sheet) {
        this.#root.adoptedStyleSheets = [sheet];
      } else {
        const style = document.createElement("style");
        style.textContent = CSS;
        this.#root.append(style);
      }
      const holder = document.createElement("template");
      holder.innerHTML = TEMPLATE;
      this.#root.append(holder.content.cloneNode(true));
      const $ = (sel) => this.#root.querySelector(sel);
      this.#els = {
        root: $(".root"),
        frame: $(".frame"),
        persona: $('[part="persona"]'),
        budget: $('[part="budget"]'),
        log: $('[part="log"]'),
        starters: $('[part="starters"]'),
        status: $('[part="status"]'),
        retryRow: $(".retry-row"),
        retry: $('[part="retry"]'),
        input: $('[part="input"]'),
        send: $('[part="send"]'),
        stop: $('[part="stop"]'),
        mic: $('[part="mic"]'),
        launcher: $('[part="launcher"]'),
        launcherLabel: $('[part="launcher"] .label'),
        dot: $('[part="unread"]'),
      };
      const { input, send, stop, mic, retry, launcher, root } = this.#els;
      input.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          this.#sendText();
        }
      });
      input.addEventListener("input", () => {
        this.#fitInput();
        this.#refreshControls();
      });
      input.addEventListener("focus", () => this.#startOnOpen());
      send.addEventListener("click", () => this.#sendText());
      stop.addEventListener("click", () => this.#cancelReply());
      mic.addEventListener("click", () => this.#toggleMic());
      retry.addEventListener("click", () => this.start());
      launcher.addEventListener("click", () => this.#setPanel(!this.#panelOpen, true));
      root.addEventListener("keydown", (event) => {
        if (event.key === "Escape" && this.hasAttribute("launcher") && this.#panelOpen) {
          event.preventDefault();
          this.#setPanel(false, true);
        }
      });
      // Set on the element before this script defined it: keep them.
      for (const name of ["sessionSource", "strings", "starters"]) {
        if (Object.hasOwn(this, name)) {
          const value = this[name];
          delete this[name];
          this[name] = value;
        }
      }
      this.#applyStrings();
    }

    /** A page may set this: `async () => Response` shaped like Rapport's mint answer. */
    get sessionSource() {
      return this.#source;
    }

    set sessionSource(source) {
      this.#source = typeof source === "function" ? source : null;
    }

    /** The words the widget shows: an object merged over the English defaults. */
    get strings() {
      return { ...this.#strings };
    }

    set strings(value) {
      this.#strings = { ...STRINGS, ...(value && typeof value === "object" ? value : {}) };
      this.#applyStrings();
    }

    /** Suggested first messages (up to three) the page offers; null gives the mint's. */
    get starters() {
      return this.#starters ? [...this.#starters] : null;
    }

    set starters(value) {
      this.#starters = value == null ? null : starterList(value);
      this.#renderStarters();
    }

    connectedCallback() {
      if (!this.hasAttribute("state")) this.#setState("idle");
      window.addEventListener("online", this.#onOnline);
      window.addEventListener("pagehide", this.#onPageHide);
      document.addEventListener("visibilitychange", this.#onVisibility);
      this.#applyLanguage();
      if (!this.#restored) {
        this.#restored = true;
        this.#restore();
      }
      this.#showPanel();
      if (this.hasAttribute("autostart") && !this.#started) this.start();
    }

    disconnectedCallback() {
      window.removeEventListener("online", this.#onOnline);
      window.removeEventListener("pagehide", this.#onPageHide);
      document.removeEventListener("visibilitychange", this.#onVisibility);
      // Moved within the page: carry on. Removed: let go of the sockets (the session stays
      // resumable on the server until its resume window passes; end() ends it at once).
      queueMicrotask(() => {
        if (this.isConnected) return;
        this.#save();
        this.#teardown();
        this.#started = false; // put back on a page, it starts afresh (autostart or start())
        this.#restored = false;
        this.#setState("idle");
      });
    }

    attributeChangedCallback(name) {
      if (name === "autostart" && this.isConnected && this.hasAttribute("autostart") && !this.#started) {
        this.start();
      } else if (name === "lang" || name === "dir") {
        this.#applyLanguage();
      } else if (name === "launcher") {
        this.#showPanel();
      } else if (name === "starter-prompts") {
        this.#renderStarters();
      }
    }

    get state() {
      return this.getAttribute("state") || "idle";
    }

    /** Mint a session (through sessionSource or session-endpoint) and connect. */
    async start() {
      this.#teardown();
      this.#started = true;
      this.#restartable = false;
      const generation = ++this.#generation;
      // A line between conversations, once, before what the visitor wrote for this one.
      const first = this.#outbox[0] || null;
      const before = first ? first.previousElementSibling : this.#els.log.lastElementChild;
      if (before && !before.classList.contains("fresh")) {
        this.#note(this.#t("newConversation"), false, first).classList.add("fresh");
      }
      this.#resetSession();
      this.#setState("connecting");
      this.#setStatus(this.#t("connecting"));
      this.#showRetry(null);
      let response;
      try {
        response = await this.#mint();
      } catch (error) {
        if (generation !== this.#generation) return;
        this.#mintFailed(this.#t(error && error.notSetUp ? "notSetUp" : "unreachable"), 0, null);
        return;
      }
      if (generation !== this.#generation) return;
      let body = null;
      try {
        body = JSON.parse(await response.text());
      } catch {
        body = null;
      }
      if (generation !== this.#generation) return;
      if (response.ok && body && (body.status === "ready" || body.status === "queued")) {
        this.#mintStarters = starterList(body.starter_prompts);
        this.#renderStarters();
      }
      if (response.ok && body && body.status === "ready" && body.ws_url) {
        this.#mode = body.mode || this.#mode;
        if (body.budget) this.#setBudget(body.budget);
        this.#wsUrl = body.ws_url;
        this.#save();
        this.#openSession(false);
      } else if (response.ok && body && body.status === "queued" && body.queue_ws_url) {
        this.#pollUrl = body.poll_url || null;
        this.#setState("queued");
        this.#showPlace(body.position, null);
        this.#openQueue(body.queue_ws_url);
      } else {
        const code = body && typeof body.code === "string" ? body.code : null;
        let message = (code && this.#strings[`mint.${code}`]) || (response.status >= 500 ? this.#t("trouble") : null);
        if (!message) message = this.#t("mintFailed");
        const after = Number(response.headers.get("Retry-After"));
        if (code === "limits.waiting_room_full" && after > 0 && after < 3600) {
          message = this.#t("waitingRoomFullFor", { wait: this.#duration(after) });
        }
        this.#mintFailed(message, response.status, body);
      }
    }

    /** End the conversation: session.end on the socket, or leave the waiting line. */
    end() {
      if (this.#ws && this.#ws.readyState === WebSocket.OPEN) {
        this.#sendFrame({ type: "session.end" });
        return; // the server closes 1000
      }
      if (this.#queueWs && this.#pollUrl) {
        fetch(this.#pollUrl, { method: "DELETE", keepalive: true }).catch(() => {});
      }
      this.#teardown();
      this.#wsUrl = null;
      this.#setState("closed");
      this.#save();
    }


    // --- minting ---------------------------------------------------------------------------

    #mint() {
      const mode = this.getAttribute("mode") || "chat";
      this.#mode = mode;
      if (this.#source) return Promise.resolve(this.#source());
      const endpoint = this.getAttribute("session-endpoint");
      if (!endpoint) return Promise.reject(Object.assign(new Error("no endpoint"), { notSetUp: true }));
      return fetch(endpoint, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ mode }),
      });
    }

    #mintFailed(message, status, problem) {
      this.#restartable = true; // the next message tries again, with what is waiting to go
      this.#setState("closed");
      this.#setStatus(message);
      this.#showRetry(this.#t("tryAgain"));
      this.dispatchEvent(
        new CustomEvent("rapport-error", { detail: { status, problem, message }, bubbles: true, composed: true }),
      );
    }

    /** A socket to `url`, or null (said, with a way to try again) when it cannot be made. */
    #dial(url) {
      try {
        return new WebSocket(url);
      } catch {
        this.#finish(this.#t("trouble"), "tryAgain", true);
        return null;
      }
    }

    /** The first message, or the chat opened with start="open": mint now unless under way. */
    #startOnDemand() {
      const state = this.state;
      if (state === "idle" || (state === "closed" && this.#restartable)) {
        this.start();
      } else if (state === "paused") {
        this.#wake();
      }
    }

    #startOnOpen() {
      if (this.getAttribute("start") === "open" && this.state === "idle") this.start();
    }

    // --- the waiting room ------------------------------------------------------------------

    #openQueue(url) {
      const generation = this.#generation;
      const ws = this.#dial(url);
      if (!ws) return;
      this.#queueWs = ws;
      ws.addEventListener("message", (event) => {
        if (generation !== this.#generation || ws !== this.#queueWs) return;
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch {
          return;
        }
        if (frame.type === "queue.position") {
          this.#attempt = 0;
          this.#setState("queued");
          this.#showPlace(frame.position, frame.estimated_wait_s);
        } else if (frame.type === "queue.admitted" && frame.ws_url && !this.#admitted) {
          this.#admitted = true;
          this.#queueWs = null;
          try {
            ws.close(1000);
          } catch {
            /* closing anyway */
          }
          this.#wsUrl = frame.ws_url;
          this.#attempt = 0;
          this.#setState("connecting");
          this.#setStatus(this.#t("connecting"));
          this.#save();
          this.#openSession(false);
        }
      });
      ws.addEventListener("close", (event) => {
        if (generation !== this.#generation || ws !== this.#queueWs) return;
        this.#queueWs = null;
        if (this.#admitted) return;
        if (event.code === 4004) {
          this.#finish(this.#t("placeLost"), "tryAgain", true);
        } else if (event.code === 4001) {
          this.#finish(this.#t("close.4001"), null, false);
        } else if (event.code === 1000) {
          this.#finish(this.#t("lineClosed"), "tryAgain", true);
        } else {
          this.#later(() => this.#openQueue(url));
        }
      });
    }

    #showPlace(position, estimate) {
      if (typeof position !== "number") return;
      this.#setStatus(
        typeof estimate === "number"
          ? this.#t("inLineWait", { position, wait: this.#duration(Math.max(1, estimate)) })
          : this.#t("inLine", { position }),
      );
    }

    #duration(seconds) {
      return seconds < 90
        ? this.#t("seconds", { n: Math.ceil(seconds) })
        : this.#t("minutes", { n: Math.round(seconds / 60) });
    }

    // --- the session socket ----------------------------------------------------------------

    #openSession(resume) {
      const generation = this.#generation;
      const url = resume ? `${this.#wsUrl}&last_seq=${this.#lastSeq}` : this.#wsUrl;
      this.#closingCode = null;
      const ws = this.#dial(url);
      if (!ws) return;
      this.#ws = ws;
      ws.addEventListener("open", () => {
        if (generation !== this.#generation || ws !== this.#ws) return;
        clearInterval(this.#pingTimer);
        this.#pingTimer = setInterval(() => this.#sendFrame({ type: "ping" }), PING_EVERY_MS);
      });
      ws.addEventListener("message", (event) => {
        if (generation !== this.#generation || ws !== this.#ws) return;
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch {
          return;
        }
        if (!frame || typeof frame !== "object") return;
        if (typeof frame.seq === "number") {
          if (frame.seq <= this.#lastSeq) return; // seen already (a replay)
          this.#lastSeq = frame.seq;
        }
        this.#onEvent(frame);
        // What is kept and the seq kept go together: a delta is kept with what follows it.
        if (frame.type !== "reply.delta") this.#save();
      });
      ws.addEventListener("close", (event) => {
        if (generation !== this.#generation || ws !== this.#ws) return;
        this.#ws = null;
        this.#live = false;
        clearInterval(this.#pingTimer);
        this.#pingTimer = null;
        this.#stopRecording(true);
        let code = event.code;
        // A proxy may drop the close frame after the server said why it closes.
        if (code === 1006 && this.#closingCode !== null) code = this.#closingCode;
        this.#onSessionClosed(code);
      });
    }

    #onSessionClosed(code) {
      if (this.#kept && GONE.has(code)) {
        // The session kept from an earlier page is over (past its resume window): what was
        // said stays as history, and the next message starts a new session.
        this.#teardown();
        this.#resetSession();
        this.#restartable = false;
        this.#setState("idle");
        this.#setStatus("");
        this.#showRetry(null);
        this.#save();
        if (this.#outbox.length > 0 || this.hasAttribute("autostart")) this.start();
        return;
      }
      if (FINAL_CLOSES.has(code)) {
        this.#finish(this.#t(`close.${code}`), RESTARTABLE.has(code) ? "startNew" : null, RESTARTABLE.has(code));
        return;
      }
      if (code === 1009) this.#note(this.#t("tooBig"), true);
      this.#setState("reconnecting");
      this.#setStatus(this.#t("reconnecting"));
      this.#later(() => this.#openSession(true));
    }

    #later(action) {
      const generation = this.#generation;
      clearTimeout(this.#retryTimer);
      const run = () => {
        clearTimeout(this.#retryTimer);
        this.#retryTimer = null;
        this.#retryNow = null;
        if (generation === this.#generation) action();
      };
      this.#retryNow = run;
      this.#retryTimer = setTimeout(run, backoff(this.#attempt));
      this.#attempt += 1;
    }

    /** A final close: no reconnect; ``retry`` names the words of the button that starts
     * afresh; ``restartable``: the next message starts a new session too. */
    #finish(message, retry, restartable) {
      this.#teardown();
      this.#wsUrl = null; // nothing to resume
      this.#restartable = restartable;
      this.#setState("closed");
      this.#setStatus(message);
      this.#showRetry(retry ? this.#t(retry) : null);
      this.#save();
    }

    #teardown() {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
      this.#retryNow = null;
      clearInterval(this.#pingTimer);
      this.#pingTimer = null;
      clearInterval(this.#budgetTimer);
      this.#budgetTimer = null;
      clearTimeout(this.#hiddenTimer);
      this.#hiddenTimer = null;
      this.#stopRecording(true);
      for (const ws of [this.#ws, this.#queueWs]) {
        if (ws && ws.readyState <= WebSocket.OPEN) {
          try {
            ws.close(1000);
          } catch {
            /* gone already */
          }
        }
      }
      this.#ws = null;
      this.#queueWs = null;
      this.#live = false;
      this.#generation += 1;
      this.#forgetInFlight();
      this.#refreshControls();
    }

    #resetSession() {
      this.#wsUrl = null;
      this.#lastSeq = 0;
      this.#hadReady = false;
      this.#kept = false;
      this.#closingCode = null;
      this.#attempt = 0;
      this.#admitted = false;
      this.#pollUrl = null;
      this.#pending = [];
      this.#userByTurn = new Map();
      this.#assistantByTurn = new Map();
      this.#open = new Set();
      this.#streaming = new Set();
      this.#lastRefError = null;
      this.#interactions = null;
      this.#deadline = null;
      this.#els.budget.textContent = "";
    }

    #sendFrame(frame) {
      const ws = this.#ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return false;
      ws.send(JSON.stringify(frame));
      return true;
    }

    // --- a hidden tab ----------------------------------------------------------------------

    #visibilityChanged() {
      clearTimeout(this.#hiddenTimer);
      this.#hiddenTimer = null;
      if (document.visibilityState !== "hidden") {
        if (this.state === "paused") this.#wake();
        return;
      }
      const attribute = this.getAttribute("hidden-close-seconds");
      const seconds = attribute === null || attribute.trim() === "" ? HIDDEN_CLOSE_SECONDS : Number(attribute);
      if (!(seconds > 0) || !this.#wsUrl) return; // 0: never let go
      this.#hiddenTimer = setTimeout(() => this.#sleep(), seconds * 1000);
    }

    /** Let go of the socket of a tab nobody looks at; the session stays resumable. */
    #sleep() {
      this.#hiddenTimer = null;
      if (document.visibilityState !== "hidden" || !this.#canSend()) return;
      if (this.#busy()) {
        // A reply is coming: let it finish, then look again.
        this.#hiddenTimer = setTimeout(() => this.#sleep(), 1000);
        return;
      }
      const ws = this.#ws;
      this.#ws = null;
      this.#live = false;
      clearInterval(this.#pingTimer);
      this.#pingTimer = null;
      try {
        ws.close(1000); // a plain close: the server keeps the session for a resume
      } catch {
        /* gone already */
      }
      this.#kept = true; // gone by the time the tab is back: the next message starts afresh
      this.#setState("paused");
      this.#save();
    }

    #wake() {
      if (!this.#wsUrl || this.#ws) return;
      this.#attempt = 0;
      this.#setState("reconnecting");
      this.#openSession(true);
    }

    // --- events ----------------------------------------------------------------------------

    #onEvent(event) {
      switch (event.type) {
        case "session.ready": {
          const resumedAfterDrop = this.#hadReady;
          this.#hadReady = true;
          this.#kept = false;
          this.#live = true;
          this.#attempt = 0;
          this.#mode = event.mode || this.#mode;
          if (event.persona && event.persona.name) this.#els.persona.textContent = event.persona.name;
          if (event.budget) this.#setBudget(event.budget);
          if (resumedAfterDrop && event.resumed === false) {
            // What was missed is gone: keep what is shown, say so, and stop waiting on it.
            this.#note(this.#t("missing"));
            this.#forgetInFlight();
          }
          this.#els.mic.hidden = this.#mode !== "full";
          this.#setStatus("");
          this.#showRetry(null);
          this.#flushOutbox();
          this.#settle();
          break;
        }
        case "transcript": {
          const bubble = this.#userBubble(event.turn, event.seq, true);
          bubble.querySelector(".text").textContent = event.text;
          bubble.classList.remove("pending");
          break;
        }
        case "reply.delta": {
          this.#userBubble(event.turn, event.seq, false);
          const bubble = this.#assistantBubble(event.turn);
          bubble.querySelector(".text").textContent += event.text;
          this.#scroll();
          this.#settle();
          break;
        }
        case "reply.done": {
          this.#userBubble(event.turn, event.seq, false);
          const bubble = this.#assistantBubble(event.turn);
          const text = bubble.querySelector(".text");
          if (event.text) text.textContent = event.text;
          this.#setSources(bubble, event.sources || []);
          this.#finalise(event.turn, event.status || "completed");
          this.#scroll();
          this.#settle();
          break;
        }
        case "budget":
          this.#setBudget(event);
          break;
        case "error":
          this.#onError(event);
          break;
        case "session.closing":
          this.#closingCode = event.code;
          break;
        default:
          break; // pong, and whatever a newer server adds
      }
    }

    #onError(event) {
      let text = (typeof event.code === "string" && this.#strings[`error.${event.code}`]) || event.message || this.#t("somethingWrong");
      if (typeof event.code === "string" && event.code.startsWith("voice.")) {
        text = this.#t(event.code === "voice.transcription_failed" ? "voiceUnheard" : "voiceUnusable");
      }
      const index = event.ref ? this.#pending.findIndex((b) => b.dataset.id === event.ref) : -1;
      let bubble = null;
      if (index >= 0) {
        // A failed turn says so with a reply.done {failed} next; a refused message never
        // gets a turn: either way it no longer waits in line for one.
        [bubble] = this.#pending.splice(index, 1);
        this.#lastRefError = { bubble, seq: event.seq };
      } else if (event.ref) {
        const ref = String(event.ref);
        bubble = [...this.#els.log.querySelectorAll(".message.user")].find((b) => b.dataset.id === ref) || null;
      }
      if (!bubble) {
        this.#note(text, true);
        return;
      }
      if (bubble.classList.contains("pending")) {
        bubble.querySelector(".text").textContent = this.#t("voiceNote"); // no transcript will come
      }
      bubble.classList.remove("pending");
      this.#aside(bubble, text, true);
      this.#settle();
    }

    /** The user bubble of ``turn``: known, or the oldest one still waiting for a turn. */
    #userBubble(turn, seq, create) {
      let bubble = this.#userByTurn.get(turn);
      if (bubble) return bubble;
      const refError = this.#lastRefError;
      this.#lastRefError = null;
      if (refError && typeof seq === "number" && seq === refError.seq + 1 && !refError.bubble.dataset.turn) {
        bubble = refError.bubble;
      } else if (this.#pending.length > 0) {
        bubble = this.#pending.shift();
      } else if (create) {
        bubble = this.#bubble("user", "");
      } else {
        return null;
      }
      bubble.dataset.turn = String(turn);
      this.#userByTurn.set(turn, bubble);
      this.#open.add(turn);
      return bubble;
    }

    #assistantBubble(turn) {
      let bubble = this.#assistantByTurn.get(turn);
      if (!bubble) {
        bubble = this.#bubble("assistant", "");
        bubble.dataset.turn = String(turn);
        bubble.dataset.status = "streaming";
        this.#setSources(bubble, []);
        this.#assistantByTurn.set(turn, bubble);
        this.#streaming.add(turn);
        if (this.hasAttribute("launcher") && !this.#panelOpen) this.#setUnread(true);
      }
      return bubble;
    }

    #setSources(bubble, sources) {
      let list = bubble.querySelector(".sources");
      if (!list) {
        list = document.createElement("ul");
        list.className = "sources";
        bubble.append(list);
      }
      list.setAttribute("aria-label", this.#t("sources"));
      list.dataset.label = this.#t("sources");
      list.replaceChildren(
        ...sources.map((id) => {
          const li = document.createElement("li");
          li.textContent = String(id);
          return li;
        }),
      );
    }

    /** Nothing in flight will be heard of again (a new run, or a resume that lost events). */
    #forgetInFlight() {
      for (const turn of [...this.#streaming]) this.#finalise(turn, "cancelled");
      for (const bubble of this.#pending) bubble.classList.remove("pending");
      this.#pending = [];
      this.#open.clear();
      this.#streaming.clear();
    }

    #finalise(turn, status) {
      const bubble = this.#assistantByTurn.get(turn);
      this.#streaming.delete(turn);
      this.#open.delete(turn);
      if (!bubble) return;
      bubble.dataset.status = status;
      bubble.querySelector(".aside")?.remove();
      if (status === "cancelled" || status === "failed") {
        this.#aside(bubble, this.#t(status === "cancelled" ? "stopped" : "replyFailed"), false);
      }
    }

    #aside(bubble, text, error) {
      const aside = document.createElement("span");
      aside.className = error ? "aside error" : "aside";
      aside.textContent = text;
      const sources = bubble.querySelector(".sources");
      if (sources) sources.before(aside);
      else bubble.append(aside);
    }

    // --- what the user does ----------------------------------------------------------------

    #sendText(given) {
      const { input } = this.#els;
      const text = (given ?? input.value).trim();
      if (!text) return;
      if (this.#canSend()) {
        const id = newId();
        if (!this.#sendFrame({ type: "user.message", id, text })) return;
        this.#wrote(text, id, false);
      } else if (this.#acceptsText()) {
        // No session yet (or it is on its way back): the message waits for it, and goes the
        // moment session.ready comes, once (its id makes a resend run nothing).
        this.#startOnDemand();
        this.#wrote(text, newId(), true);
      } else {
        return;
      }
      if (given === undefined) {
        input.value = "";
        this.#fitInput();
      }
    }

    #wrote(text, id, waiting) {
      const bubble = this.#bubble("user", text);
      bubble.dataset.id = id;
      if (waiting) {
        bubble.classList.add("pending");
        this.#outbox.push(bubble);
      } else {
        this.#pending.push(bubble);
      }
      this.#renderStarters();
      this.#scroll(true);
      this.#settle();
      this.#save();
    }

    #flushOutbox() {
      const waiting = this.#outbox;
      this.#outbox = [];
      for (const bubble of waiting) {
        const text = bubble.querySelector(".text").textContent;
        if (this.#sendFrame({ type: "user.message", id: bubble.dataset.id, text })) {
          bubble.classList.remove("pending");
          this.#pending.push(bubble);
        }
      }
    }

    #cancelReply() {
      if (this.#busy()) this.#sendFrame({ type: "reply.cancel" });
    }

    async #toggleMic() {
      if (this.#recording) {
        this.#stopRecording(false);
        return;
      }
      if (!this.#canSend()) return;
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.MediaRecorder) {
        this.#note(this.#t("voiceNeedsHttps"), true);
        return;
      }
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      } catch {
        this.#note(this.#t("micUnavailable"), true);
        return;
      }
      const preferred = "audio/webm;codecs=opus";
      const options = MediaRecorder.isTypeSupported && MediaRecorder.isTypeSupported(preferred) ? { mimeType: preferred } : {};
      let recorder;
      try {
        recorder = new MediaRecorder(stream, options);
      } catch {
        stream.getTracks().forEach((t) => t.stop());
        this.#note(this.#t("recordingUnsupported"), true);
        return;
      }
      const chunks = [];
      const recording = { recorder, discard: false };
      recorder.addEventListener("dataavailable", (e) => {
        if (e.data && e.data.size > 0) chunks.push(e.data);
      });
      recorder.addEventListener("stop", () => {
        stream.getTracks().forEach((t) => t.stop());
        if (recording.discard || chunks.length === 0) return;
        const base = (recorder.mimeType || "audio/webm").split(";")[0].trim().toLowerCase();
        const mime = VOICE_MIMES.has(base) ? base : "audio/webm";
        this.#sendVoice(new Blob(chunks, { type: mime }), mime);
      });
      if (!this.#canSend()) {
        stream.getTracks().forEach((t) => t.stop()); // the socket dropped while asking
        return;
      }
      this.#recording = recording;
      recorder.start();
      this.#els.mic.setAttribute("aria-pressed", "true");
      this.#refreshControls();
    }

    /** Stop the microphone: the note is sent, or dropped when ``discard``. */
    #stopRecording(discard) {
      const recording = this.#recording;
      this.#recording = null;
      this.#els.mic.setAttribute("aria-pressed", "false");
      if (recording && recording.recorder.state !== "inactive") {
        recording.discard = discard;
        recording.recorder.stop();
      }
    }

    async #sendVoice(blob, mime) {
      const generation = this.#generation;
      let data_b64;
      try {
        data_b64 = await toBase64(blob);
      } catch {
        this.#note(this.#t("voiceUnreadable"), true);
        return;
      }
      if (generation !== this.#generation || !this.#canSend()) {
        this.#note(this.#t("voiceNotSent"), true);
        return;
      }
      const id = newId();
      if (!this.#sendFrame({ type: "user.message", id, audio: { data_b64, mime } })) return;
      const bubble = this.#bubble("user", this.#t("voiceNoteSending"));
      bubble.classList.add("pending");
      bubble.dataset.id = id;
      this.#pending.push(bubble);
      this.#renderStarters();
      this.#scroll(true);
      this.#settle();
    }

    // --- display ---------------------------------------------------------------------------

    #canSend() {
      return this.#live && this.#ws !== null && this.#ws.readyState === WebSocket.OPEN;
    }

    /** A message written now goes, at once or as soon as its session is ready. */
    #acceptsText() {
      const state = this.state;
      if (["idle", "connecting", "queued", "reconnecting", "paused"].includes(state)) return true;
      return state === "closed" && this.#restartable;
    }

    /** A message sent and its reply not done yet. */
    #busy() {
      return this.#pending.length > 0 || this.#open.size > 0 || this.#streaming.size > 0;
    }

    /** ready or replying, from what is in flight; and the controls to match. */
    #settle() {
      if (this.#canSend()) this.#setState(this.#busy() ? "replying" : "ready");
      this.#refreshControls();
    }

    #refreshControls() {
      const { input, send, stop, mic } = this.#els;
      const live = this.#canSend();
      const accepts = live || this.#acceptsText();
      input.disabled = !accepts;
      send.disabled = !accepts || input.value.trim() === "";
      stop.disabled = !(live && this.#busy());
      mic.disabled = !live && !this.#recording;
      for (const chip of this.#els.starters.children) chip.disabled = !accepts;
    }

    #setState(state) {
      if (this.getAttribute("state") !== state) {
        this.setAttribute("state", state);
        this.dispatchEvent(new CustomEvent("rapport-state", { detail: { state }, bubbles: true, composed: true }));
      }
      this.#refreshControls();
    }

    #setStatus(text) {
      if (this.#els.status.textContent !== text) this.#els.status.textContent = text;
    }

    /** The one button that starts afresh, with ``label``; hidden when null. */
    #showRetry(label) {
      this.#els.retryRow.hidden = !label;
      if (label) this.#els.retry.textContent = label;
    }

    #setBudget(budget) {
      if ("interactions_left" in budget) this.#interactions = budget.interactions_left;
      if (typeof budget.seconds_left === "number") {
        this.#deadline = performance.now() + budget.seconds_left * 1000;
        if (!this.#budgetTimer) this.#budgetTimer = setInterval(() => this.#showBudget(), 1000);
      }
      this.#showBudget();
    }

    #showBudget() {
      const parts = [];
      if (typeof this.#interactions === "number") {
        // Billing units: a full-mode turn costs two.
        const n = this.#mode === "full" ? Math.floor(this.#interactions / FULL_MODE_COST) : this.#interactions;
        parts.push(this.#t(n === 1 ? "messageLeft" : "messagesLeft", { n }));
      }
      if (this.#deadline !== null) {
        parts.push(this.#t("timeLeft", { time: clock((this.#deadline - performance.now()) / 1000) }));
      }
      const text = parts.join(" · ");
      if (this.#els.budget.textContent !== text) this.#els.budget.textContent = text;
    }

    #bubble(role, text) {
      const bubble = document.createElement("div");
      bubble.className = `message ${role}`;
      const body = document.createElement("span");
      body.className = "text";
      body.textContent = text;
      bubble.append(body);
      this.#els.log.append(bubble);
      this.#scroll(role === "user");
      return bubble;
    }

    #note(text, error = false, before = null) {
      const note = document.createElement("div");
      note.className = error ? "note error" : "note";
      note.textContent = text;
      if (before) before.before(note);
      else this.#els.log.append(note);
      this.#scroll();
      return note;
    }

    #scroll(force = false) {
      const log = this.#els.log;
      const near = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
      if (force || near) log.scrollTop = log.scrollHeight;
    }

    #fitInput() {
      const input = this.#els.input;
      input.style.height = "auto";
      input.style.height = `${Math.min(input.scrollHeight + 2, 128)}px`;
    }

    // --- words and languages ---------------------------------------------------------------

    #t(key, values = {}) {
      return fill(this.#strings[key] ?? STRINGS[key] ?? key, values);
    }

    /** The words of the controls (what the conversation already said stays as said). */
    #applyStrings() {
      const { log, input, send, stop, mic, starters } = this.#els;
      log.setAttribute("aria-label", this.#t("logLabel"));
      input.setAttribute("aria-label", this.#t("inputLabel"));
      input.placeholder = this.#t("placeholder");
      send.setAttribute("aria-label", this.#t("send"));
      stop.setAttribute("aria-label", this.#t("stop"));
      mic.setAttribute("aria-label", this.#t("mic"));
      starters.setAttribute("aria-label", this.#t("starters"));
      this.#els.dot.firstElementChild.textContent = this.#t("unread");
      for (const list of log.querySelectorAll(".sources")) {
        list.setAttribute("aria-label", this.#t("sources"));
        list.dataset.label = this.#t("sources");
      }
      this.#showPanel();
    }

    #applyLanguage() {
      const lang = (this.getAttribute("lang") || "").trim();
      const root = this.#els.root;
      if (lang) root.setAttribute("lang", lang);
      else root.removeAttribute("lang");
      const dir = (this.getAttribute("dir") || "").trim().toLowerCase();
      if (dir === "rtl" || dir === "ltr" || dir === "auto") {
        root.setAttribute("dir", dir);
      } else if (lang) {
        root.setAttribute("dir", RTL.has(lang.toLowerCase().split(/[-_]/)[0]) ? "rtl" : "ltr");
      } else {
        root.removeAttribute("dir"); // the page's own direction
      }
    }

    // --- the launcher ----------------------------------------------------------------------

    /** Open or close the panel; ``moveFocus``: the box when opened, the button when closed. */
    #setPanel(open, moveFocus) {
      this.#panelOpen = open;
      if (open) this.#setUnread(false);
      this.#showPanel();
      this.#save();
      if (!this.hasAttribute("launcher")) return;
      if (open) {
        this.#startOnOpen();
        if (moveFocus) this.#els.input.focus();
      } else if (moveFocus) {
        this.#els.launcher.focus();
      }
    }

    #showPanel() {
      const { launcher, launcherLabel, frame, dot } = this.#els;
      const has = this.hasAttribute("launcher");
      launcher.hidden = !has;
      frame.hidden = has && !this.#panelOpen;
      launcher.setAttribute("aria-expanded", String(has && this.#panelOpen));
      launcherLabel.textContent = this.#t(this.#panelOpen ? "launcherClose" : "launcherOpen");
      dot.hidden = !(has && this.#unread && !this.#panelOpen);
    }

    #setUnread(unread) {
      this.#unread = unread;
      this.#showPanel();
    }

    // --- starter prompts -------------------------------------------------------------------

    /** Chips before the first message: the page's (property, then attribute), else the
     * last mint's starter_prompts. */
    #renderStarters() {
      const box = this.#els.starters;
      let list = this.#starters;
      if (list === null && this.hasAttribute("starter-prompts")) list = starterList(this.getAttribute("starter-prompts"));
      if (!list || list.length === 0) list = this.#mintStarters;
      const show = list.length > 0 && !this.#els.log.querySelector(".message.user");
      box.hidden = !show;
      if (!show) {
        box.replaceChildren();
        return;
      }
      box.replaceChildren(
        ...list.map((text) => {
          const chip = document.createElement("button");
          chip.type = "button";
          chip.setAttribute("part", "starter");
          chip.textContent = text;
          chip.addEventListener("click", () => this.#sendText(text));
          return chip;
        }),
      );
      this.#refreshControls();
    }

    // --- what the tab keeps across page loads ----------------------------------------------

    /** Where this widget's record lives in sessionStorage; null keeps nothing. Only a widget
     * minting through its page's backend keeps anything: the playground and the dashboard
     * (sessionSource) start afresh each time. */
    #storageKey() {
      const endpoint = this.getAttribute("session-endpoint");
      if (!endpoint) return null;
      return `rapport-chat:${endpoint}:${this.getAttribute("mode") || "chat"}:${this.id}`;
    }

    #save() {
      const key = this.#storageKey();
      if (!key) return;
      const turnOf = (bubble, map) => {
        const turn = Number(bubble.dataset.turn);
        return map.get(turn) === bubble ? turn : undefined;
      };
      const log = [];
      for (const node of this.#els.log.children) {
        if (this.#outbox.includes(node)) continue; // not sent: nothing to resume for it
        const aside = node.querySelector(".aside");
        if (node.classList.contains("note")) {
          log.push({ kind: "note", text: node.textContent, error: node.classList.contains("error") });
        } else if (node.classList.contains("user")) {
          log.push({
            kind: "user",
            text: node.querySelector(".text").textContent,
            id: node.dataset.id,
            turn: turnOf(node, this.#userByTurn),
            waiting: this.#pending.includes(node),
            aside: aside?.textContent,
          });
        } else {
          log.push({
            kind: "assistant",
            text: node.querySelector(".text").textContent,
            turn: turnOf(node, this.#assistantByTurn),
            status: node.dataset.status,
            sources: [...node.querySelectorAll(".sources li")].map((li) => li.textContent),
            aside: aside?.textContent,
          });
        }
      }
      const record = {
        session: this.#wsUrl
          ? { wsUrl: this.#wsUrl, lastSeq: this.#lastSeq, mode: this.#mode, persona: this.#els.persona.textContent }
          : null,
        log: log.slice(-KEPT_ENTRIES),
        open: this.#panelOpen,
        unread: this.#unread,
        starters: this.#mintStarters,
      };
      try {
        sessionStorage.setItem(key, JSON.stringify(record));
      } catch {
        /* storage off or full: this page still works, a reload starts afresh */
      }
    }

    /** Put back what this tab kept, and resume its session with last_seq. */
    #restore() {
      const key = this.#storageKey();
      let record = null;
      try {
        record = key && JSON.parse(sessionStorage.getItem(key) || "null");
      } catch {
        record = null;
      }
      if (!record || typeof record !== "object") return;
      this.#panelOpen = record.open === true;
      this.#unread = record.unread === true;
      this.#mintStarters = starterList(record.starters);
      const session = record.session && typeof record.session.wsUrl === "string" ? record.session : null;
      const log = this.#els.log;
      log.replaceChildren();
      for (const entry of Array.isArray(record.log) ? record.log : []) {
        if (entry.kind === "note") {
          this.#note(String(entry.text), entry.error === true);
          continue;
        }
        const role = entry.kind === "user" ? "user" : "assistant";
        const bubble = this.#bubble(role, String(entry.text ?? ""));
        if (entry.id) bubble.dataset.id = String(entry.id);
        if (role === "assistant") {
          bubble.dataset.status = String(entry.status || "completed");
          this.#setSources(bubble, Array.isArray(entry.sources) ? entry.sources : []);
        }
        if (entry.aside) this.#aside(bubble, String(entry.aside), role === "user");
        const turn = session && typeof entry.turn === "number" ? entry.turn : null;
        if (turn !== null) {
          bubble.dataset.turn = String(turn);
          if (role === "user") {
            this.#userByTurn.set(turn, bubble);
            this.#open.add(turn); // until its reply is known done
          } else {
            this.#assistantByTurn.set(turn, bubble);
            if (bubble.dataset.status === "streaming") this.#streaming.add(turn);
            else this.#open.delete(turn);
          }
        } else if (session && role === "user" && entry.waiting) {
          this.#pending.push(bubble);
        }
      }
      this.#scroll(true);
      this.#renderStarters();
      if (!session) return;
      this.#wsUrl = session.wsUrl;
      this.#lastSeq = Number(session.lastSeq) || 0;
      this.#mode = session.mode || this.#mode;
      if (session.persona) this.#els.persona.textContent = String(session.persona);
      this.#started = true;
      this.#hadReady = true; // a resume that lost events says so
      this.#kept = true;
      this.#setState("reconnecting");
      this.#openSession(true);
    }
  }

  window.customElements.define("rapport-chat", RapportChat);
})();
