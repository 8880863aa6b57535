/*
 * The playground at /: an operator picks a persona and a mode and talks to it through the
 * chat widget. Signed in to the dashboard, the browser session is the credential (its CSRF
 * token on the mint, which is a write); otherwise an API key, which stays in this tab
 * (sessionStorage) and goes only to this Rapport server (relative URLs). The widget itself
 * never sees either: its sessionSource mints here.
 */
(() => {
  "use strict";

  const KEY_STORE = "rapport.apiKey";
  const $ = (id) => document.getElementById(id);
  const els = {
    key: $("api-key"),
    load: $("load"),
    persona: $("persona"),
    mode: $("mode"),
    userId: $("user-id"),
    start: $("start"),
    error: $("error"),
    hint: $("hint"),
    area: $("chat-area"),
    keyRow: $("key-row"),
    signedIn: $("signed-in"),
  };
  let signin = null; // the dashboard sign-in (GET /api/auth/session), when there is one
  const allowedModes = new Map(); // persona id -> the modes it allows

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch {
      return ""; // storage blocked: the key lives in the field only
    }
  }

  function storeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch {
      /* storage blocked */
    }
  }

  function showError(text) {
    els.error.textContent = text || "";
  }

  /** A problem+json answer, said in one line. */
  async function describe(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    return describeProblem(response.status, body);
  }

  function describeProblem(status, body) {
    if (body && typeof body === "object") {
      const detail = body.detail || body.title || "";
      const code = body.code ? ` (${body.code})` : "";
      if (detail || code) return `${status ? `${status}: ` : ""}${detail}${code}`;
    }
    return status ? `Rapport answered HTTP ${status}.` : "Rapport could not be reached.";
  }

  function key() {
    return els.key.value.trim();
  }

  /** How a request proves who calls: the sign-in's cookie (sent by the browser) with its
   * CSRF token, or the key. */
  function credentials() {
    if (signin) return { headers: { "X-CSRF-Token": signin.csrf_token }, credentials: "same-origin" };
    return { headers: { "X-Api-Key": key() }, credentials: "omit" };
  }

  async function findSignIn() {
    try {
      const response = await fetch("/api/auth/session", {
        headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
      });
      if (!response.ok) {
        await response.text(); // read to the end: an unread body keeps its request open
        return;
      }
      signin = await response.json();
    } catch {
      return;
    }
    els.keyRow.hidden = true;
    els.signedIn.hidden = false;
    els.signedIn.textContent = `Signed in to the dashboard as ${signin.user}: no API key needed.`;
    loadPersonas();
  }

  async function loadPersonas() {
    showError("");
    if (!signin && !key()) {
      showError("Enter an API key first.");
      els.key.focus();
      return;
    }
    els.load.disabled = true;
    els.hint.textContent = "Loading personas…";
    try {
      const auth = credentials();
      const response = await fetch("/api/personas?limit=200", {
        headers: { ...auth.headers, Accept: "application/json" },
        credentials: auth.credentials,
        cache: "no-store",
      });
      if (!response.ok) {
        showError(`Could not load personas: ${await describe(response)}`);
        els.hint.textContent = "";
        return;
      }
      const page = await response.json();
      const items = Array.isArray(page.items) ? page.items : [];
      allowedModes.clear();
      const options = items.map((persona) => {
        const option = document.createElement("option");
        option.value = persona.id;
        option.textContent = persona.name;
        const modes = persona.publishSettings && persona.publishSettings.allowedModes;
        if (Array.isArray(modes)) allowedModes.set(persona.id, modes);
        return option;
      });
      if (options.length === 0) {
        const none = document.createElement("option");
        none.value = "";
        none.textContent = "Default persona";
        options.push(none);
      }
      els.persona.replaceChildren(...options);
      const chosen = items.find((persona) => persona.isDefault) || items[0];
      if (chosen) els.persona.value = chosen.id;
      fitModes();
      els.hint.textContent = `${items.length} ${items.length === 1 ? "persona" : "personas"} loaded.`;
    } catch (error) {
      showError(`Could not load personas: ${error && error.message ? error.message : error}`);
      els.hint.textContent = "";
    } finally {
      els.load.disabled = false;
    }
  }

  /** Offer only the modes the chosen persona allows. */
  function fitModes() {
    const modes = allowedModes.get(els.persona.value);
    for (const option of els.mode.options) {
      option.disabled = Array.isArray(modes) && !modes.includes(option.value);
    }
    if (els.mode.selectedOptions[0] && els.mode.selectedOptions[0].disabled) {
      const first = [...els.mode.options].find((option) => !option.disabled);
      if (first) els.mode.value = first.value;
    }
  }

  function startSession() {
    showError("");
    const auth = credentials();
    const userId = els.userId.value.trim();
    if (!signin && !key()) {
      showError("Enter an API key first.");
      els.key.focus();
      return;
    }
    if (!userId) {
      showError("Enter an end user id.");
      els.userId.focus();
      return;
    }
    const old = document.getElementById("chat");
    if (old) {
      if (typeof old.end === "function") old.end();
      old.remove();
    }
    const mode = els.mode.value;
    const body = { user_id: userId, mode };
    if (els.persona.value) body.persona_id = els.persona.value;
    const chat = document.createElement("rapport-chat");
    chat.id = "chat";
    chat.setAttribute("mode", mode);
    chat.sessionSource = () =>
      fetch("/api/sessions", {
        method: "POST",
        headers: { ...auth.headers, "Content-Type": "application/json", Accept: "application/json" },
        credentials: auth.credentials,
        cache: "no-store",
        body: JSON.stringify(body),
      });
    chat.addEventListener("rapport-error", (event) => {
      const { status, problem } = event.detail || {};
      showError(`Could not start the session: ${describeProblem(status, problem)}`);
    });
    els.area.replaceChildren(chat);
    if (typeof chat.start === "function") {
      chat.start();
    } else {
      showError("The chat widget did not load (/widget.js).");
    }
  }

  els.key.value = storedKey();
  els.key.addEventListener("input", () => storeKey(key()));
  els.key.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      loadPersonas();
    }
  });
  els.load.addEventListener("click", loadPersonas);
  els.persona.addEventListener("change", fitModes);
  els.start.addEventListener("click", startSession);
  findSignIn().then(() => {
    if (!signin && key()) loadPersonas();
  });
})();
