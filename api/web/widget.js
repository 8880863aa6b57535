/*
 * <rapport-chat>: Rapport's chat widget. Plain ES2022, no build step, no dependency.
 *
 *   <script src="https://your-rapport/widget.js"></script>
 *   <rapport-chat session-endpoint="/your-backend/rapport-session" autostart></rapport-chat>
 *
 * The element never holds an API key: it asks the page's own backend (session-endpoint,
 * same origin, POST {"mode"}) for a session, and that backend relays Rapport's answer to
 * POST /api/sessions unchanged (201 ready, 202 queued, or a problem). A page may instead set
 * `element.sessionSource = async () => Response`. Everything else follows the live-session
 * contract (README, "Live sessions"): frames, seq, resume with last_seq, close codes.
 *
 * Styles live in a constructed stylesheet adopted by the shadow root (no <style>, no style
 * attribute), so a Content-Security-Policy without 'unsafe-inline' serves it as is.
 */
(() => {
  "use strict";

  if (typeof window === "undefined" || !window.customElements) return;
  if (window.customElements.get("rapport-chat")) return;

  // Closes after which nothing reconnects: what the person reading the chat is told.
  const FINAL_CLOSES = {
    1000: "The conversation has ended.",
    1008: "The connection was closed because of too many or invalid messages.",
    1013: "The service is busy; please try again shortly.",
    4001: "This chat link has expired. Please reload the page to start again.",
    4004: "This conversation has ended and is no longer available.",
    4005: "You've reached the message limit for this conversation. Start a new one to keep talking.",
    4006: "This conversation has reached its time limit.",
    4009: "This conversation was opened in another tab or window.",
  };
  // After these a fresh conversation makes sense; 4001 says reload, 4009 lives elsewhere.
  const RESTARTABLE = new Set([1000, 1008, 1013, 4004, 4005, 4006]);

  const MINT_PROBLEMS = {
    "limits.waiting_room_full":
      "The service is busy and the waiting line is full. Please try again in a few minutes.",
    "limits.concurrent_session":
      "Too many conversations are open at the moment. Please close one or try again shortly.",
    "limits.rate_exceeded": "Too many attempts in a short time. Please wait a moment and try again.",
    "limits.session_time_limit": "We're not available right now. Please come back during opening hours.",
    "resource.not_found": "This chat isn't available right now.",
    "validation.failed": "This chat can't be started with these settings.",
  };
  const UNREACHABLE = "We couldn't reach the chat service. Please check your connection and try again.";
  const TROUBLE = "The chat service is having trouble. Please try again shortly.";
  const NOT_SET_UP = "This chat isn't set up yet (no session endpoint).";
  const PLACE_LOST = "Your place in line was lost. Please try again.";
  const LINE_CLOSED = "The waiting line closed unexpectedly. Please try again.";
  const MISSING = "Some messages may be missing.";
  const TOO_BIG = "That message was too large to send.";

  const MAX_BACKOFF_MS = 10000;
  const BASE_BACKOFF_MS = 500;
  const PING_EVERY_MS = 25000;
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
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
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
.message.user {
  align-self: flex-end;
  background: var(--_accent);
  color: #fff;
  border-bottom-right-radius: 4px;
}
.message.assistant {
  align-self: flex-start;
  background: color-mix(in srgb, var(--_fg) 7%, var(--_bg));
  border-bottom-left-radius: 4px;
}
.message.assistant[data-status="streaming"] .text:empty::before { content: "…"; opacity: 0.6; }
.message.pending { opacity: 0.85; }
.message .aside { display: block; margin-top: 4px; font-size: 12px; opacity: 0.7; white-space: normal; }
.sources { margin: 6px 0 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 4px; font-size: 12px; white-space: normal; }
.sources:empty { display: none; }
.sources::before { content: "Sources:"; opacity: 0.7; margin-right: 2px; }
.sources li {
  padding: 1px 6px;
  border-radius: 999px;
  background: color-mix(in srgb, var(--_fg) 10%, transparent);
  overflow-wrap: anywhere;
}
.note { align-self: center; max-width: 100%; font-size: 12px; opacity: 0.75; text-align: center; overflow-wrap: anywhere; }
.note.error { color: #b42318; opacity: 1; }
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

  const TEMPLATE = `
<div class="frame" part="frame">
  <div class="head" part="header">
    <span class="persona" part="persona"></span>
    <span class="budget" part="budget"></span>
  </div>
  <div class="log" part="log" role="log" aria-live="polite" aria-label="Conversation" tabindex="0"></div>
  <div class="status" part="status" role="status" aria-live="polite"></div>
  <div class="retry-row" hidden><button type="button" part="retry" class="primary">Try again</button></div>
  <div class="composer" part="composer">
    <button type="button" part="mic" aria-label="Record a voice note" aria-pressed="false" hidden>${ICONS.mic}</button>
    <textarea part="input" aria-label="Message" rows="1" maxlength="4000" placeholder="Type a message…" disabled></textarea>
    <button type="button" part="stop" aria-label="Stop the reply" disabled>${ICONS.stop}</button>
    <button type="button" part="send" class="primary" aria-label="Send" disabled>${ICONS.send}</button>
  </div>
</div>`;

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
      return ["autostart"];
    }

    #source = null;
    #root;
    #els;
    #started = false;
    #generation = 0; // bumped by each start()/end(): late callbacks of an older run do nothing
    // session
    #wsUrl = null;
    #ws = null;
    #mode = "chat";
    #lastSeq = 0;
    #hadReady = false;
    #live = false; // the socket is open and its session.ready came
    #closingCode = null;
    #attempt = 0;
    #retryTimer = null;
    #retryNow = null;
    #pingTimer = null;
    // waiting room
    #queueWs = null;
    #pollUrl = null;
    #admitted = false;
    // conversation
    #pending = []; // user bubbles waiting for their turn number, oldest first
    #userByTurn = new Map();
    #assistantByTurn = new Map();
    #open = new Set(); // turns known to have started and not yet done
    #streaming = new Set(); // turns whose reply is streaming
    #lastRefError = null; // {bubble, seq}: an error about a message, maybe before its failed reply
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
        persona: $('[part="persona"]'),
        budget: $('[part="budget"]'),
        log: $('[part="log"]'),
        status: $('[part="status"]'),
        retryRow: $(".retry-row"),
        retry: $('[part="retry"]'),
        input: $('[part="input"]'),
        send: $('[part="send"]'),
        stop: $('[part="stop"]'),
        mic: $('[part="mic"]'),
      };
      const { input, send, stop, mic, retry } = this.#els;
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
      send.addEventListener("click", () => this.#sendText());
      stop.addEventListener("click", () => this.#cancelReply());
      mic.addEventListener("click", () => this.#toggleMic());
      retry.addEventListener("click", () => this.start());
      // Set on the element before this script defined it: keep it.
      if (Object.hasOwn(this, "sessionSource")) {
        const source = this.sessionSource;
        delete this.sessionSource;
        this.#source = source;
      }
    }

    /** A page may set this: `async () => Response` shaped like Rapport's mint answer. */
    get sessionSource() {
      return this.#source;
    }

    set sessionSource(source) {
      this.#source = typeof source === "function" ? source : null;
    }

    connectedCallback() {
      if (!this.hasAttribute("state")) this.#setState("idle");
      window.addEventListener("online", this.#onOnline);
      if (this.hasAttribute("autostart") && !this.#started) this.start();
    }

    disconnectedCallback() {
      window.removeEventListener("online", this.#onOnline);
      // Moved within the page: carry on. Removed: let go of the sockets (the session stays
      // resumable on the server until its resume window passes; end() ends it at once).
      queueMicrotask(() => {
        if (this.isConnected) return;
        this.#teardown();
        this.#started = false; // put back on a page, it starts afresh (autostart or start())
        this.#setState("idle");
      });
    }

    attributeChangedCallback(name) {
      if (name === "autostart" && this.isConnected && this.hasAttribute("autostart") && !this.#started) {
        this.start();
      }
    }

    get state() {
      return this.getAttribute("state") || "idle";
    }

    /** Mint a session (through sessionSource or session-endpoint) and connect. */
    async start() {
      this.#teardown();
      this.#started = true;
      const generation = ++this.#generation;
      if (this.#els.log.childElementCount > 0) this.#note("New conversation");
      this.#resetSession();
      this.#setState("connecting");
      this.#setStatus("Connecting…");
      this.#showRetry(null);
      let response;
      try {
        response = await this.#mint();
      } catch (error) {
        if (generation !== this.#generation) return;
        this.#mintFailed(error && error.notSetUp ? NOT_SET_UP : UNREACHABLE, 0, null);
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
      if (response.ok && body && body.status === "ready" && body.ws_url) {
        this.#mode = body.mode || this.#mode;
        if (body.budget) this.#setBudget(body.budget);
        this.#wsUrl = body.ws_url;
        this.#openSession(false);
      } else if (response.ok && body && body.status === "queued" && body.queue_ws_url) {
        this.#pollUrl = body.poll_url || null;
        this.#setState("queued");
        this.#showPlace(body.position, null);
        this.#openQueue(body.queue_ws_url);
      } else {
        const code = body && typeof body.code === "string" ? body.code : null;
        let message = (code && MINT_PROBLEMS[code]) || (response.status >= 500 ? TROUBLE : null);
        if (!message) message = "This chat couldn't be started. Please try again later.";
        const after = Number(response.headers.get("Retry-After"));
        if (code === "limits.waiting_room_full" && after > 0 && after < 3600) {
          const wait = after < 90 ? `${Math.ceil(after)} s` : `${Math.round(after / 60)} min`;
          message = `The service is busy and the waiting line is full. Please try again in about ${wait}.`;
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
      this.#setState("closed");
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
      this.#setState("closed");
      this.#setStatus(message);
      this.#showRetry("Try again");
      this.dispatchEvent(
        new CustomEvent("rapport-error", { detail: { status, problem, message }, bubbles: true, composed: true }),
      );
    }

    /** A socket to `url`, or null (said, with a way to try again) when it cannot be made. */
    #dial(url) {
      try {
        return new WebSocket(url);
      } catch {
        this.#finish(TROUBLE, "Try again");
        return null;
      }
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
          this.#setStatus("Connecting…");
          this.#openSession(false);
        }
      });
      ws.addEventListener("close", (event) => {
        if (generation !== this.#generation || ws !== this.#queueWs) return;
        this.#queueWs = null;
        if (this.#admitted) return;
        if (event.code === 4004) {
          this.#finish(PLACE_LOST, "Try again");
        } else if (event.code === 4001) {
          this.#finish(FINAL_CLOSES[4001], null);
        } else if (event.code === 1000) {
          this.#finish(LINE_CLOSED, "Try again");
        } else {
          this.#later(() => this.#openQueue(url));
        }
      });
    }

    #showPlace(position, estimate) {
      if (typeof position !== "number") return;
      let text = `You're number ${position} in line`;
      if (typeof estimate === "number") {
        text += ` — about ${estimate < 90 ? `${Math.max(1, Math.round(estimate))} s` : `${Math.round(estimate / 60)} min`}`;
      }
      this.#setStatus(text);
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
      if (Object.hasOwn(FINAL_CLOSES, code)) {
        this.#finish(FINAL_CLOSES[code], RESTARTABLE.has(code) ? "Start a new conversation" : null);
        return;
      }
      if (code === 1009) this.#note(TOO_BIG, true);
      this.#setState("reconnecting");
      this.#setStatus("Reconnecting…");
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

    /** A final close: no reconnect; ``retry`` labels the button that starts afresh. */
    #finish(message, retry) {
      this.#teardown();
      this.#setState("closed");
      this.#setStatus(message);
      this.#showRetry(retry);
    }

    #teardown() {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
      this.#retryNow = null;
      clearInterval(this.#pingTimer);
      this.#pingTimer = null;
      clearInterval(this.#budgetTimer);
      this.#budgetTimer = null;
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

    // --- events ----------------------------------------------------------------------------

    #onEvent(event) {
      switch (event.type) {
        case "session.ready": {
          const resumedAfterDrop = this.#hadReady;
          this.#hadReady = true;
          this.#live = true;
          this.#attempt = 0;
          this.#mode = event.mode || this.#mode;
          if (event.persona && event.persona.name) this.#els.persona.textContent = event.persona.name;
          if (event.budget) this.#setBudget(event.budget);
          if (resumedAfterDrop && event.resumed === false) {
            // What was missed is gone: keep what is shown, say so, and stop waiting on it.
            this.#note(MISSING);
            this.#forgetInFlight();
          }
          this.#els.mic.hidden = this.#mode !== "full";
          this.#setStatus("");
          this.#showRetry(null);
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
          const list = bubble.querySelector(".sources");
          list.replaceChildren(
            ...(event.sources || []).map((id) => {
              const li = document.createElement("li");
              li.textContent = String(id);
              return li;
            }),
          );
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
      let text = event.message || "Something went wrong.";
      if (typeof event.code === "string" && event.code.startsWith("voice.")) {
        text =
          event.code === "voice.transcription_failed"
            ? "We couldn't hear anything in that voice note."
            : "We couldn't use that voice note.";
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
        bubble.querySelector(".text").textContent = "Voice note"; // no transcript will come
      }
      bubble.classList.remove("pending");
      const aside = document.createElement("span");
      aside.className = "aside error";
      aside.textContent = text;
      bubble.append(aside);
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
        const list = document.createElement("ul");
        list.className = "sources";
        list.setAttribute("aria-label", "Sources");
        bubble.append(list);
        this.#assistantByTurn.set(turn, bubble);
        this.#streaming.add(turn);
      }
      return bubble;
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
        const aside = document.createElement("span");
        aside.className = "aside";
        aside.textContent = status === "cancelled" ? "Stopped" : "This reply couldn't be finished.";
        bubble.querySelector(".sources").before(aside);
      }
    }

    // --- what the user does ----------------------------------------------------------------

    #sendText() {
      const { input } = this.#els;
      const text = input.value.trim();
      if (!text || !this.#canSend()) return;
      const id = newId();
      if (!this.#sendFrame({ type: "user.message", id, text })) return;
      input.value = "";
      this.#fitInput();
      const bubble = this.#bubble("user", text);
      bubble.dataset.id = id;
      this.#pending.push(bubble);
      this.#scroll(true);
      this.#settle();
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
        this.#note("Voice notes need a browser with microphone access on a secure (https) page.", true);
        return;
      }
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      } catch {
        this.#note("The microphone isn't available. Please allow access and try again.", true);
        return;
      }
      const preferred = "audio/webm;codecs=opus";
      const options = MediaRecorder.isTypeSupported && MediaRecorder.isTypeSupported(preferred) ? { mimeType: preferred } : {};
      let recorder;
      try {
        recorder = new MediaRecorder(stream, options);
      } catch {
        stream.getTracks().forEach((t) => t.stop());
        this.#note("Recording isn't supported in this browser.", true);
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
        this.#note("The voice note couldn't be read.", true);
        return;
      }
      if (generation !== this.#generation || !this.#canSend()) {
        this.#note("The voice note couldn't be sent: the connection dropped.", true);
        return;
      }
      const id = newId();
      if (!this.#sendFrame({ type: "user.message", id, audio: { data_b64, mime } })) return;
      const bubble = this.#bubble("user", "Voice note…");
      bubble.classList.add("pending");
      bubble.dataset.id = id;
      this.#pending.push(bubble);
      this.#scroll(true);
      this.#settle();
    }

    // --- display ---------------------------------------------------------------------------

    #canSend() {
      return this.#live && this.#ws !== null && this.#ws.readyState === WebSocket.OPEN;
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
      input.disabled = !live && this.state !== "reconnecting";
      send.disabled = !live || input.value.trim() === "";
      stop.disabled = !(live && this.#busy());
      mic.disabled = !live && !this.#recording;
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

    /** The one button that starts afresh, labelled ``label``; hidden when null. */
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
        const messages = this.#mode === "full" ? Math.floor(this.#interactions / FULL_MODE_COST) : this.#interactions;
        parts.push(`${messages} ${messages === 1 ? "message" : "messages"} left`);
      }
      if (this.#deadline !== null) {
        parts.push(`${clock((this.#deadline - performance.now()) / 1000)} left`);
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

    #note(text, error = false) {
      const note = document.createElement("div");
      note.className = error ? "note error" : "note";
      note.textContent = text;
      this.#els.log.append(note);
      this.#scroll();
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
  }

  window.customElements.define("rapport-chat", RapportChat);
})();
