/*
 * The operator dashboard at /dashboard (issue 23): a page per hash (#keys, #knowledge,
 * #personas, #live, #usage, #settings, #audit), each built from the same /api/ routes an
 * integration uses, with the browser session (the __Host-rapport_session cookie) instead of a
 * key. Every write carries the sign-in's CSRF token in X-CSRF-Token; the token lives in this
 * page's memory only. Nothing here is trusted for access: the server checks every role.
 * Text from the server is only ever set as textContent, never parsed as HTML.
 */
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const viewEl = $("view");
  const statusEl = $("status");
  const nav = $("nav");
  const who = $("who");
  const PAGE_SIZE = 20;

  const state = { me: null, choices: null, people: new Map() };

  // ---- building the page ------------------------------------------------------------------

  /** An element: h("button", {class: "primary", onclick: f}, "Save"). */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "class") el.className = value;
      else if (name === "value") el.value = value; // a textarea's text is no attribute
      else if (name in el && name !== "list" && typeof value !== "string") el[name] = value;
      else el.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function say(text) {
    statusEl.textContent = text || "";
  }

  function errorBox() {
    return h("p", { class: "error", role: "alert" });
  }

  /** A labelled field: label + control, tied by id. */
  let fieldCount = 0;
  function field(labelText, control, hint) {
    const id = control.id || `f${++fieldCount}`;
    control.id = id;
    const parts = [h("label", { for: id }, labelText), control];
    if (hint) {
      const hintId = `${id}-hint`;
      control.setAttribute("aria-describedby", hintId);
      parts.push(h("span", { id: hintId, class: "muted" }, hint));
    }
    return h("div", { class: "field" }, parts);
  }

  function table(caption, headers, rows) {
    const head = h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)));
    const t = h("table", {}, h("caption", { class: "sr-only" }, caption), h("thead", {}, head),
      h("tbody", {}, rows));
    // A wide table scrolls inside its own box on a narrow screen; the box takes focus so a
    // keyboard can scroll it (WCAG 2.1.1).
    return h("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": caption }, t);
  }

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function badge(text) {
    return h("span", { class: `badge ${text}` }, text);
  }

  const canWrite = () => state.me && state.me.role !== "viewer";
  const isOwner = () => state.me && state.me.role === "owner";

  // ---- talking to the server --------------------------------------------------------------

  function describe(status, body) {
    if (body && typeof body === "object") {
      const text = body.detail || body.title || body.message || "";
      const code = body.code ? ` (${body.code})` : "";
      if (text || code) return `${text}${code}`;
    }
    return status ? `The server answered HTTP ${status}.` : "The server could not be reached.";
  }

  class ApiError extends Error {
    constructor(status, body) {
      super(describe(status, body));
      this.status = status;
      this.body = body;
    }
  }

  /** One call to Rapport with the browser session; JSON in, JSON (or null) out. */
  async function api(method, path, body, extra) {
    const headers = { Accept: "application/json" };
    if (method !== "GET" && state.me) headers["X-CSRF-Token"] = state.me.csrf_token;
    let payload;
    if (body instanceof FormData) payload = body;
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: payload, credentials: "same-origin", cache: "no-store",
        ...(extra || {}),
      });
    } catch (error) {
      throw new ApiError(0, { detail: String(error && error.message ? error.message : error) });
    }
    let data = null;
    if (response.status !== 204) {
      try {
        data = await response.json();
      } catch {
        data = null;
      }
    }
    if (response.status === 401 && path !== "/api/auth/login") {
      signedOut("Your session ended; sign in again.");
      throw new ApiError(401, data);
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  /** A click handler that disables its button meanwhile and reports a failure in `box`. */
  function action(box, work) {
    return async (event) => {
      const button = event && event.currentTarget;
      if (event && event.type === "submit") event.preventDefault();
      if (box) box.textContent = "";
      if (button && button.tagName === "BUTTON") button.disabled = true;
      try {
        await work(event);
      } catch (error) {
        if (box) box.textContent = error.message;
        else say(error.message);
      } finally {
        if (button && button.tagName === "BUTTON" && button.isConnected) button.disabled = false;
      }
    };
  }

  /** A modal question. fields: [{name, label, type, autocomplete}]; resolves to the values,
   * or null when cancelled. The dialog keeps focus inside it and Escape cancels. */
  function ask({ title, text, fields = [], confirm = "Confirm", danger = false }) {
    return new Promise((resolve) => {
      const inputs = fields.map((f) => h("input", {
        type: f.type || "text", name: f.name, required: true,
        autocomplete: f.autocomplete || "off",
      }));
      const titleId = `dlg${++fieldCount}`;
      const cancel = h("button", { type: "button" }, "Cancel");
      const ok = h("button", { type: "submit", class: danger ? "danger" : "primary" }, confirm);
      const form = h("form", {}, h("h2", { id: titleId }, title), text ? h("p", {}, text) : null,
        inputs.map((input, i) => field(fields[i].label, input)), h("div", { class: "actions" }, ok, cancel));
      const dialog = h("dialog", { "aria-labelledby": titleId }, form);
      let answer = null;
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        answer = Object.fromEntries(inputs.map((input) => [input.name, input.value]));
        dialog.close();
      });
      cancel.addEventListener("click", () => dialog.close());
      dialog.addEventListener("close", () => {
        dialog.remove();
        resolve(answer);
      });
      document.body.append(dialog);
      dialog.showModal();
      (inputs[0] || ok).focus();
    });
  }

  // ---- who is signed in -------------------------------------------------------------------

  function signedOut(message) {
    state.me = null;
    nav.hidden = true;
    who.hidden = true;
    renderSignIn(message);
  }

  function signedInAs(me) {
    state.me = me;
    state.people = new Map([[`user:${me.user_id}`, `${me.user} (you)`]]);
    $("who-name").textContent = `${me.user} · ${me.role}`;
    nav.hidden = false;
    who.hidden = false;
  }

  async function currentSession() {
    const response = await fetch("/api/auth/session", {
      headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
    });
    if (response.ok) return response.json();
    await response.text(); // read to the end: an unread body keeps its request open
    return null;
  }

  /** "user:<id>", "key:primary", "cli": said in words. */
  function actorName(actor) {
    if (!actor) return "";
    if (state.people.has(actor)) return state.people.get(actor);
    if (actor === "cli") return "the CLI";
    if (actor.startsWith("key:")) return `API key (${actor.slice(4)})`;
    return actor;
  }

  async function learnPeople() {
    if (!isOwner()) return;
    try {
      const users = await api("GET", "/api/account/users");
      for (const user of users.items) {
        if (user.id !== state.me.user_id) state.people.set(`user:${user.id}`, user.email);
      }
    } catch {
      /* names stay ids */
    }
  }

  // ---- pages ------------------------------------------------------------------------------

  function page(title, ...children) {
    const heading = h("h1", { tabindex: "-1" }, title);
    viewEl.replaceChildren(heading, ...children);
    document.title = `${title} · Rapport dashboard`;
    return heading;
  }

  function renderSignIn(message) {
    const email = h("input", { type: "email", name: "email", autocomplete: "username", required: true });
    const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
    const box = errorBox();
    if (message) box.textContent = message;
    const form = h("form", { class: "card", "aria-labelledby": "signin-title" },
      h("h2", { id: "signin-title" }, "Sign in"),
      field("Email", email), field("Password", password),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")), box);
    form.addEventListener("submit", action(box, async () => {
      const me = await api("POST", "/api/auth/login", { email: email.value, password: password.value });
      password.value = "";
      signedInAs(me);
      if (!location.hash || location.hash === "#signin") location.hash = "#keys";
      else route();
    }));
    page("Rapport dashboard", form);
    email.focus();
  }

  function renderSetPassword() {
    const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
    const password = h("input", { type: "password", autocomplete: "new-password", required: true, minlength: "8", maxlength: "128" });
    const again = h("input", { type: "password", autocomplete: "new-password", required: true });
    const box = errorBox();
    const form = h("form", { class: "card" },
      field("New password", password, "8 to 128 characters; a very common password is refused."),
      field("The same password again", again),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Set password")), box);
    form.addEventListener("submit", action(box, async () => {
      if (password.value !== again.value) throw new Error("The two passwords differ.");
      await api("POST", "/api/auth/set-password", { token, password: password.value });
      // The token is spent: keep it out of history, then offer the sign-in.
      history.replaceState(null, "", "/dashboard");
      form.replaceWith(h("div", { class: "card" }, h("p", {}, "Your password is set."),
        h("a", { href: "/dashboard" }, "Sign in")));
      say("Password set.");
    }));
    page("Set your password", token ? form
      : h("p", { class: "error", role: "alert" }, "This link has no token; ask for a new one."));
    password.focus();
  }

  // -- API keys --

  async function renderKeys() {
    const heading = page("API keys", h("p", { class: "muted" },
      "A key authenticates your backend with Rapport. A new key is shown once, here, and never again."));
    const fresh = h("div");
    const box = errorBox();
    const list = await api("GET", "/api/account/api-keys");
    const bySlot = new Map(list.items.map((item) => [item.slot, item]));
    const cards = ["primary", "secondary"].map((slot) => keyCard(slot, bySlot.get(slot), box, fresh));
    viewEl.append(fresh, box, ...cards);
    return heading;
  }

  function showNewKey(fresh, made) {
    const value = h("input", { type: "text", readonly: true, class: "secret", value: made.key });
    const copy = h("button", { type: "button", onclick: async () => {
      value.select();
      try {
        await navigator.clipboard.writeText(made.key);
        say("Key copied.");
      } catch {
        say("Select the key and copy it.");
      }
    } }, "Copy");
    const done = h("button", { type: "button", class: "primary", onclick: () => {
      fresh.replaceChildren();
      route();
    } }, "I have saved it");
    fresh.replaceChildren(h("section", { class: "card newkey", "aria-labelledby": "newkey-title" },
      h("h2", { id: "newkey-title" }, `New ${made.slot.slot} key`),
      h("p", {}, "Copy it now: Rapport keeps only its hash and will not show it again."),
      field("Key", value), h("div", { class: "actions" }, copy, done)));
    value.focus();
    value.select();
  }

  function keyCard(slot, item, box, fresh) {
    const title = `${slot === "primary" ? "Primary" : "Secondary"} key`;
    const titleId = `slot-${slot}`;
    const card = h("section", { class: "card", "aria-labelledby": titleId }, h("h2", { id: titleId }, title));
    const password = async (confirmText) => {
      const answer = await ask({
        title: confirmText, text: "Enter your password again to continue.", confirm: confirmText,
        fields: [{ name: "password", label: "Your password", type: "password", autocomplete: "current-password" }],
      });
      return answer && answer.password;
    };
    if (!item) {
      card.append(h("p", { class: "muted" }, "This slot holds no key."));
      if (canWrite()) {
        const label = h("input", { type: "text", maxlength: "64" });
        card.append(field("Label", label), h("div", { class: "actions" }, h("button", {
          type: "button", class: "primary", onclick: action(box, async () => {
            const pw = await password(`Create ${slot} key`);
            if (!pw) return;
            showNewKey(fresh, await api("POST", "/api/account/api-keys", { slot, label: label.value, password: pw }));
          }),
        }, `Create ${slot} key`)));
      }
      return card;
    }
    card.append(h("dl", { class: "facts" },
      h("dt", {}, "Label"), h("dd", {}, item.label || "—"),
      h("dt", {}, "Key"), h("dd", { class: "secret" }, item.hint),
      h("dt", {}, "Status"), h("dd", {}, badge(item.disabled ? "disabled" : "active")),
      h("dt", {}, "Created"), h("dd", {}, `${when(item.created_at)}${item.created_by ? ` by ${actorName(item.created_by)}` : ""}`),
      h("dt", {}, "Last used"), h("dd", {}, item.last_used ? when(item.last_used) : "Never")));
    if (!canWrite()) return card;
    const path = `/api/account/api-keys/${slot}`;
    card.append(h("div", { class: "actions" },
      h("button", { type: "button", onclick: action(box, async () => {
        const answer = await ask({ title: `Rename the ${slot} key`, confirm: "Rename", fields: [{ name: "label", label: "Label" }] });
        if (!answer) return;
        await api("PATCH", path, { label: answer.label });
        say(`The ${slot} key is renamed.`);
        await route();
      }), "aria-label": `Rename the ${slot} key` }, "Rename"),
      h("button", { type: "button", "aria-label": `${item.disabled ? "Enable" : "Disable"} the ${slot} key`, onclick: action(box, async () => {
        await api("PATCH", path, { disabled: !item.disabled });
        say(`The ${slot} key is ${item.disabled ? "enabled" : "disabled"}.`);
        await route();
      }) }, item.disabled ? "Enable" : "Disable"),
      h("button", { type: "button", onclick: action(box, async () => {
        const pw = await password(`Regenerate the ${slot} key`);
        if (!pw) return;
        showNewKey(fresh, await api("POST", `${path}/regenerate`, { password: pw }));
      }), "aria-label": `Regenerate the ${slot} key` }, "Regenerate"),
      h("button", { type: "button", class: "danger", "aria-label": `Delete the ${slot} key`, onclick: action(box, async () => {
        const sure = await ask({
          title: `Delete the ${slot} key?`, danger: true, confirm: "Delete key",
          text: "Every integration using this key stops working at once, and the live sessions it started end.",
        });
        if (!sure) return;
        await api("DELETE", path);
        say(`The ${slot} key is deleted.`);
        await route();
      }) }, "Delete")));
    return card;
  }

  // -- knowledge --

  const docQuery = { search: "", status: "", sort_by: "created_at", sort_dir: "desc", offset: 0 };

  async function personasActive() {
    const personas = await api("GET", "/api/personas?limit=200");
    const byDoc = new Map();
    await Promise.all(personas.items.map(async (persona) => {
      const active = await api("GET", `/api/personas/${persona.id}/knowledge`);
      for (const eid of active.external_ids || []) {
        if (!byDoc.has(eid)) byDoc.set(eid, []);
        byDoc.get(eid).push(persona.name);
      }
    }));
    return { personas: personas.items, byDoc };
  }

  function docsPath(extra) {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE), ...extra });
    for (const [name, value] of [...params]) if (!value) params.delete(name);
    return `/api/knowledge/docs?${params}`;
  }

  async function renderKnowledge() {
    const box = errorBox();
    const heading = page("Knowledge", box);
    const [docs, staged, active] = await Promise.all([
      api("GET", docsPath({ ...docQuery, offset: String(docQuery.offset) })),
      api("GET", docsPath({ status: "staged", limit: "1" })),
      personasActive(),
    ]);
    const choices = state.choices;

    // Filters: applied on submit, so typing does not reload the table under the keyboard.
    const search = h("input", { type: "search", value: docQuery.search });
    const status = h("select", {}, h("option", { value: "" }, "All"),
      choices.document_statuses.map((s) => h("option", { value: s, selected: s === docQuery.status }, s)));
    const sort = h("select", {}, choices.document_sorts.map((s) => h("option", { value: s, selected: s === docQuery.sort_by }, s.replaceAll("_", " "))));
    const dir = h("select", {}, h("option", { value: "desc", selected: docQuery.sort_dir === "desc" }, "descending"),
      h("option", { value: "asc", selected: docQuery.sort_dir === "asc" }, "ascending"));
    const filters = h("form", { class: "card row", role: "search", "aria-label": "Documents" },
      field("Search", search), field("Status", status), field("Sort by", sort), field("Order", dir),
      h("button", { type: "submit" }, "Apply"));
    filters.addEventListener("submit", (event) => {
      event.preventDefault();
      Object.assign(docQuery, { search: search.value.trim(), status: status.value, sort_by: sort.value, sort_dir: dir.value, offset: 0 });
      route();
    });

    const tools = h("div", { class: "card" });
    if (canWrite()) {
      const process = h("button", { type: "button", class: "primary", disabled: staged.total_count === 0,
        onclick: action(box, async () => {
          const done = await api("POST", "/api/knowledge/docs/process");
          say(`${done.queued} staged ${done.queued === 1 ? "document" : "documents"} queued for processing.`);
          await route();
        }) }, `Process staged (${staged.total_count})`);
      const file = h("input", { type: "file", accept: ".txt,.md,.html,.htm,.pdf,.docx" });
      const label = h("input", { type: "text", maxlength: "256" });
      const progress = h("progress", { max: "100", value: "0", hidden: true, "aria-label": "Upload progress" });
      const upload = h("form", { class: "row" }, field("File", file), field("Label (optional)", label),
        h("button", { type: "submit" }, "Upload"), progress);
      upload.addEventListener("submit", action(box, async () => {
        if (!file.files.length) throw new Error("Choose a file first.");
        const form = new FormData();
        form.append("file", file.files[0]);
        if (label.value.trim()) form.append("label", label.value.trim());
        progress.hidden = false;
        await uploadWithProgress("/api/knowledge/files", form, progress);
        say(`${file.files[0].name} uploaded; it is being processed.`);
        await route();
      }));
      tools.append(h("h2", {}, "Add knowledge"), upload,
        h("p", { class: "muted" }, "Documents sent in batches stay staged until you process them."),
        h("div", { class: "actions" }, process));
    }

    const rows = docs.items.map((doc) => docRow(doc, active.byDoc.get(doc.external_id) || [], box));
    const from = docs.total_count ? docQuery.offset + 1 : 0;
    const to = docQuery.offset + docs.items.length;
    const pager = h("div", { class: "actions" },
      h("button", { type: "button", disabled: docQuery.offset === 0, onclick: () => {
        docQuery.offset = Math.max(0, docQuery.offset - PAGE_SIZE);
        route();
      } }, "Previous page"),
      h("span", {}, `${from}–${to} of ${docs.total_count}`),
      h("button", { type: "button", disabled: to >= docs.total_count, onclick: () => {
        docQuery.offset += PAGE_SIZE;
        route();
      } }, "Next page"));
    viewEl.append(tools, filters, h("section", { class: "card", "aria-label": "Documents" },
      docs.items.length ? table("Documents", ["Document", "Status", "Units", "Active for", "Created", "Actions"], rows)
        : h("p", {}, "No documents match."), pager));
    return heading;
  }

  function uploadWithProgress(path, form, progress) {
    // fetch() reports no upload progress; XMLHttpRequest does.
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("POST", path);
      request.setRequestHeader("X-CSRF-Token", state.me.csrf_token);
      request.setRequestHeader("Accept", "application/json");
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) progress.value = Math.round((event.loaded / event.total) * 100);
      });
      request.addEventListener("load", () => {
        let body = null;
        try {
          body = JSON.parse(request.responseText);
        } catch {
          body = null;
        }
        if (request.status >= 200 && request.status < 300) resolve(body);
        else reject(new ApiError(request.status, body));
      });
      request.addEventListener("error", () => reject(new ApiError(0, null)));
      request.send(form);
    });
  }

  function docRow(doc, personaNames, box) {
    const name = doc.label || doc.original_file_name || doc.external_id;
    const path = `/api/knowledge/docs/by-external-id/${encodeURIComponent(doc.external_id)}`;
    const statusCell = h("td", {}, badge(doc.processing_status));
    if (doc.processing_status === "failed") {
      statusCell.append(h("div", { class: "error" }, doc.error_message || "Processing failed."));
      if (canWrite()) {
        statusCell.append(h("button", { type: "button", onclick: action(box, async () => {
          await api("POST", `${path}/retry`);
          say(`${name} is queued again.`);
          await route();
        }), "aria-label": `Retry ${name}` }, "Retry"));
      }
    }
    const units = doc.knowledge_units ?? doc.estimated_knowledge_units;
    const actions = h("td", {});
    if (canWrite()) {
      actions.append(h("div", { class: "actions" },
        h("button", { type: "button", "aria-label": `Rename ${name}`, onclick: action(box, async () => {
          const answer = await ask({ title: `Rename ${name}`, confirm: "Save", fields: [{ name: "label", label: "Label" }] });
          if (!answer) return;
          await api("PATCH", path, { label: answer.label });
          say(`Renamed to ${answer.label}.`);
          await route();
        }) }, "Rename"),
        h("button", { type: "button", class: "danger", "aria-label": `Delete ${name}`, onclick: action(box, async () => {
          const sure = await ask({ title: `Delete ${name}?`, text: "Its chunks go too, and no persona can cite it any more.", confirm: "Delete", danger: true });
          if (!sure) return;
          await api("DELETE", path);
          say(`${name} is deleted.`);
          await route();
        }) }, "Delete")));
    }
    return h("tr", {},
      h("td", {}, h("div", {}, name), h("div", { class: "muted" }, doc.external_id)),
      statusCell,
      h("td", { class: "num" }, units === null || units === undefined ? "" : String(units)),
      h("td", {}, personaNames.length ? personaNames.join(", ") : "—"),
      h("td", {}, when(doc.created_at)),
      actions);
  }

  // -- personas --

  async function renderPersonas(chosenId) {
    const box = errorBox();
    const heading = page("Personas", box);
    const personas = (await api("GET", "/api/personas?limit=200")).items;
    const chosen = personas.find((p) => p.id === chosenId) || null;
    const list = h("ul", { class: "plist" }, personas.map((p) => h("li", {}, h("a", {
      href: `#personas/${p.id}`, "aria-current": p.id === chosenId ? "true" : null,
    }, p.isDefault ? `${p.name} (default)` : p.name))));
    const section = h("section", { class: "card", "aria-label": "All personas" }, list);
    if (canWrite()) {
      const name = h("input", { type: "text", required: true, maxlength: "100" });
      const create = h("form", { class: "row" }, field("New persona's name", name), h("button", { type: "submit" }, "Create persona"));
      create.addEventListener("submit", action(box, async () => {
        const made = await api("POST", "/api/personas", { name: name.value.trim() });
        go(`#personas/${made.id}`, `${made.name} is created.`);
      }));
      section.append(create);
    }
    viewEl.append(section);
    if (chosen) viewEl.append(...await personaEditor(chosen, box));
    else if (personas.length) viewEl.append(h("p", { class: "muted" }, "Choose a persona to edit it."));
    return heading;
  }

  function numberOrNull(input) {
    return input.value.trim() === "" ? null : Number(input.value);
  }

  function jsonOf(textarea, what) {
    try {
      return textarea.value.trim() ? JSON.parse(textarea.value) : {};
    } catch {
      throw new Error(`${what} must be a JSON object.`);
    }
  }

  async function personaEditor(persona, box) {
    const c = state.choices;
    const select = (values, current, blank) => h("select", {},
      blank ? h("option", { value: "" }, blank) : null,
      values.map((v) => h("option", { value: v, selected: v === current }, v)));
    const checks = (values, current, legend) => {
      const boxes = values.map((v) => h("input", { type: "checkbox", value: v, checked: current.includes(v) }));
      return { boxes, set: h("fieldset", {}, h("legend", {}, legend),
        boxes.map((b, i) => h("label", { class: "check" }, b, values[i]))) };
    };
    const f = {
      name: h("input", { type: "text", value: persona.name, required: true }),
      description: h("textarea", { value: persona.description }),
      systemPrompt: h("textarea", { value: persona.systemPrompt }),
      imageUrl: h("input", { type: "text", value: persona.imageUrl || "" }),
      age: h("input", { type: "number", min: "1", max: "120", value: persona.age ?? "" }),
      gender: select(c.genders, persona.gender, "Not set"),
      zodiac: select(c.zodiac_signs, persona.zodiac, "Not set"),
      sociality: select(c.socialities, persona.sociality),
      interactions: h("input", { type: "number", min: "1", value: persona.publishSettings.sessionInteractionLimit ?? "" }),
      seconds: h("input", { type: "number", min: "1", value: persona.publishSettings.sessionDurationLimitSeconds ?? "" }),
      timeZone: h("input", { type: "text", value: persona.publishSettings.availability ? persona.publishSettings.availability.timeZone : "", placeholder: "Europe/Paris" }),
      headers: h("textarea", { value: JSON.stringify(persona.headers, null, 2) }),
      configuration: h("textarea", { value: JSON.stringify(persona.configuration, null, 2) }),
    };
    const archetypes = checks(c.archetypes, persona.archetypes, "Archetypes");
    const modes = checks(c.modes, persona.publishSettings.allowedModes, "Allowed modes");
    const temperament = Object.fromEntries(c.temperaments.map((t) => [t, h("input", {
      type: "number", min: "0", step: "0.05", value: String(persona.temperament[t]) })]));

    // Availability windows: rows of day, start, end.
    const windowRows = h("div");
    const addWindow = (w) => {
      const day = select(c.days, w ? w.day : "mon");
      const start = h("input", { type: "time", value: w ? w.start : "09:00" });
      const end = h("input", { type: "time", value: w ? w.end : "17:00" });
      const row = h("div", { class: "row" }, field("Day", day), field("From", start), field("To", end),
        h("button", { type: "button", onclick: () => row.remove() }, "Remove window"));
      row.window = () => ({ day: day.value, start: start.value, end: end.value });
      windowRows.append(row);
      return day;
    };
    for (const w of persona.publishSettings.availability ? persona.publishSettings.availability.windows : []) addWindow(w);

    const form = h("form", { class: "card", "aria-labelledby": "persona-title" },
      h("h2", { id: "persona-title" }, persona.isDefault ? `${persona.name} (default persona)` : persona.name),
      h("fieldset", {}, h("legend", {}, "Identity"), field("Name", f.name), field("Description", f.description),
        field("System prompt", f.systemPrompt), field("Portrait (image id or URL)", f.imageUrl)),
      h("fieldset", {}, h("legend", {}, "Traits"), h("div", { class: "grid" }, field("Age", f.age),
        field("Gender", f.gender), field("Zodiac", f.zodiac), field("Sociality", f.sociality)),
      archetypes.set,
      h("fieldset", {}, h("legend", {}, "Temperament (weights)"), h("div", { class: "grid" },
        c.temperaments.map((t) => field(t, temperament[t]))))),
      h("fieldset", {}, h("legend", {}, "Publish settings"),
        h("div", { class: "grid" }, field("Interactions per session", f.interactions, "Empty: no limit."),
          field("Session length (seconds)", f.seconds, "Empty: no limit.")),
        modes.set,
        h("fieldset", {}, h("legend", {}, "Availability"),
          field("Time zone", f.timeZone, "An IANA name; empty: always available."),
          windowRows,
          h("button", { type: "button", onclick: () => addWindow(null).focus() }, "Add a window"))),
      h("fieldset", {}, h("legend", {}, "Advanced"), field("Headers (JSON)", f.headers), field("Configuration (JSON)", f.configuration)),
      canWrite() ? h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save persona")) : null);

    form.addEventListener("submit", action(box, async () => {
      const zone = f.timeZone.value.trim();
      const body = {
        name: f.name.value.trim(),
        description: f.description.value,
        headers: jsonOf(f.headers, "Headers"),
        configuration: jsonOf(f.configuration, "Configuration"),
        image_url: f.imageUrl.value.trim() || null,
        age: numberOrNull(f.age),
        gender: f.gender.value || null,
        zodiac: f.zodiac.value || null,
        sociality: f.sociality.value,
        archetypes: archetypes.boxes.filter((b) => b.checked).map((b) => b.value),
        temperament: Object.fromEntries(c.temperaments.map((t) => [t, Number(temperament[t].value || 0)])),
        publish_settings: {
          session_interaction_limit: numberOrNull(f.interactions),
          session_duration_limit_seconds: numberOrNull(f.seconds),
          allowed_modes: modes.boxes.filter((b) => b.checked).map((b) => b.value),
          availability: zone ? { time_zone: zone, windows: [...windowRows.children].map((row) => row.window()) } : null,
        },
      };
      if (f.systemPrompt.value.trim()) body.system_prompt = f.systemPrompt.value;
      await api("PATCH", `/api/personas/${persona.id}`, body);
      say(`${body.name} is saved.`);
      await route();
    }));
    if (!canWrite()) for (const control of form.querySelectorAll("input, select, textarea, button")) control.disabled = true;

    const path = `/api/personas/${persona.id}`;
    const tools = h("section", { class: "card", "aria-label": "Persona actions" });
    const chatArea = h("div");
    const tryIt = h("button", { type: "button", class: "primary", onclick: action(box, () => openChat(chatArea, persona, box)) }, "Try it");
    tools.append(h("div", { class: "actions" }, tryIt,
      canWrite() && !persona.isDefault ? h("button", { type: "button", onclick: action(box, async () => {
        await api("PUT", "/api/personas/default", { persona_id: persona.id });
        say(`${persona.name} is now the default persona.`);
        await route();
      }) }, "Make default") : null,
      canWrite() ? h("button", { type: "button", onclick: action(box, async () => {
        await api("POST", `${path}/generate-image`);
        say("A portrait is generated.");
        await route();
      }) }, "Generate portrait") : null,
      canWrite() && !persona.isDefault ? h("button", { type: "button", class: "danger", onclick: action(box, async () => {
        const sure = await ask({ title: `Delete ${persona.name}?`, text: "Its media and knowledge activations go too.", confirm: "Delete persona", danger: true });
        if (!sure) return;
        await api("DELETE", path);
        go("#personas", `${persona.name} is deleted.`);
      }) }, "Delete persona") : null), chatArea);

    return [tools, form, await mediaSection(persona, box), await knowledgeSection(persona, box)];
  }

  /** The chat widget's script, fetched the first time "Try it" is pressed: most visits to
   * the dashboard never need its 38 kB. */
  let widgetLoaded = null;
  function loadWidget() {
    if (!widgetLoaded) {
      widgetLoaded = new Promise((resolve, reject) => {
        const script = h("script", { src: "/widget.js" });
        script.addEventListener("load", () => customElements.whenDefined("rapport-chat").then(resolve));
        script.addEventListener("error", () => {
          widgetLoaded = null;
          reject(new Error("The chat widget did not load (/widget.js)."));
        });
        document.head.append(script);
      });
    }
    return widgetLoaded;
  }

  async function openChat(area, persona, box) {
    await loadWidget();
    const old = area.querySelector("rapport-chat");
    if (old && typeof old.end === "function") old.end();
    const mode = persona.publishSettings.allowedModes.includes("chat") ? "chat" : persona.publishSettings.allowedModes[0];
    const chat = document.createElement("rapport-chat");
    chat.setAttribute("mode", mode);
    chat.setAttribute("aria-label", `Chat with ${persona.name}`);
    // The widget mints through the same route a backend uses, with this browser session:
    // no key is pasted or held in the page.
    chat.sessionSource = () => fetch("/api/sessions", {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": state.me.csrf_token },
      body: JSON.stringify({ user_id: `dashboard:${state.me.user_id}`, persona_id: persona.id, mode }),
    });
    chat.addEventListener("rapport-error", (event) => {
      const { status, problem } = event.detail || {};
      box.textContent = `The chat could not start: ${describe(status, problem)}`;
    });
    area.replaceChildren(h("h2", {}, `Chat with ${persona.name}`), chat);
    chat.start();
  }

  async function mediaSection(persona, box) {
    const media = await api("GET", `/api/personas/${persona.id}/media`);
    const section = h("section", { class: "card", "aria-labelledby": "media-title" }, h("h2", { id: "media-title" }, "Portrait and media"));
    const portrait = media.find((m) => persona.imageUrl && persona.imageUrl.startsWith(m.id));
    if (portrait) section.append(h("img", { class: "portrait", src: portrait.url, alt: `Portrait of ${persona.name}` }));
    section.append(media.length ? table("Media", ["Kind", "File", "Size", ""], media.map((m) => h("tr", {},
      h("td", {}, m.kind), h("td", {}, m.fileName || m.id), h("td", { class: "num" }, `${Math.ceil(m.sizeBytes / 1024)} KiB`),
      h("td", {}, canWrite() ? h("button", { type: "button", "aria-label": `Delete ${m.fileName || m.id}`, onclick: action(box, async () => {
        await api("DELETE", `/api/personas/${persona.id}/media/${m.id}`);
        say("The media file is deleted.");
        await route();
      }) }, "Delete") : null))))
      : h("p", { class: "muted" }, "No media yet."));
    if (canWrite()) {
      const file = h("input", { type: "file", accept: "image/*,audio/*,video/*" });
      const upload = h("form", { class: "row" }, field("Add an image, a voice sample or a video", file), h("button", { type: "submit" }, "Upload"));
      upload.addEventListener("submit", action(box, async () => {
        if (!file.files.length) throw new Error("Choose a file first.");
        const form = new FormData();
        form.append("file", file.files[0]);
        await api("POST", `/api/personas/${persona.id}/media`, form);
        say(`${file.files[0].name} is added.`);
        await route();
      }));
      section.append(upload);
    }
    return section;
  }

  async function knowledgeSection(persona, box) {
    const [active, docs] = await Promise.all([
      api("GET", `/api/personas/${persona.id}/knowledge`),
      api("GET", "/api/knowledge/docs?limit=100&sort_by=label&sort_dir=asc"),
    ]);
    const on = new Set(active.external_ids);
    const boxes = docs.items.map((d) => h("input", { type: "checkbox", value: d.external_id, checked: on.has(d.external_id), disabled: !canWrite() }));
    const form = h("form", { class: "card", "aria-labelledby": "pk-title" }, h("h2", { id: "pk-title" }, "Knowledge this persona uses"),
      docs.items.length ? h("fieldset", {}, h("legend", {}, "Active documents"),
        docs.items.map((d, i) => h("div", {}, h("label", { class: "check" }, boxes[i], d.label || d.original_file_name || d.external_id))))
        : h("p", { class: "muted" }, "No documents yet."),
      docs.total_count > docs.items.length ? h("p", { class: "muted" }, `The first ${docs.items.length} of ${docs.total_count} documents, by label.`) : null,
      canWrite() && docs.items.length ? h("div", { class: "actions" }, h("button", { type: "submit" }, "Save knowledge")) : null);
    form.addEventListener("submit", action(box, async () => {
      // Documents past the first page keep their state: only the shown ones change.
      const shown = new Set(docs.items.map((d) => d.external_id));
      const kept = active.external_ids.filter((eid) => !shown.has(eid));
      const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
      await api("PUT", `/api/personas/${persona.id}/knowledge`, { external_ids: [...kept, ...chosen] });
      say(`${persona.name} uses ${kept.length + chosen.length} documents.`);
      await route();
    }));
    return form;
  }

  // -- live --

  function age(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    return seconds < 120 ? `${seconds} s` : `${Math.round(seconds / 60)} min`;
  }

  async function renderLive() {
    const box = errorBox();
    const heading = page("Live sessions", box);
    const [sessions, personas] = await Promise.all([api("GET", "/api/sessions"), api("GET", "/api/personas?limit=200")]);
    const names = new Map(personas.items.map((p) => [p.id, p.name]));
    const cap = sessions.capacity;
    if (cap) {
      viewEl.append(h("section", { class: "card", "aria-label": "Capacity" }, h("dl", { class: "facts" },
        h("dt", {}, "This account"), h("dd", {}, `${cap.account_sessions} of ${cap.max_concurrent_sessions} sessions`),
        h("dt", {}, "This deployment"), h("dd", {}, `${cap.slots_held} of ${cap.max_sessions} slots held`),
        h("dt", {}, "Waiting room"), h("dd", {}, `${cap.waiting} of ${cap.waiting_room_size} places taken`))));
    }
    const rows = sessions.items.map((s) => h("tr", {},
      h("td", {}, h("span", { class: "secret" }, s.session_id.slice(0, 12)), h("div", { class: "muted" }, s.user_id)),
      h("td", {}, names.get(s.persona_id) || s.persona_id),
      h("td", {}, s.mode),
      h("td", {}, badge(s.status || "live")),
      h("td", {}, age(s.created_at)),
      h("td", {}, `${s.budget.interactions_left ?? "∞"} turns, ${s.budget.seconds_left ?? "∞"} s`),
      h("td", {}, canWrite() ? h("button", { type: "button", class: "danger", "aria-label": `End session ${s.session_id.slice(0, 12)}`,
        onclick: action(box, async () => {
          await api("DELETE", `/api/sessions/${s.session_id}`);
          say("The session is ended.");
          await route();
        }) }, "End") : null)));
    viewEl.append(h("section", { class: "card", "aria-label": "Sessions" },
      rows.length ? table("Sessions and the waiting room", ["Session", "Persona", "Mode", "Status", "Age", "Budget left", ""], rows)
        : h("p", {}, "No live session and nobody waiting."),
      h("div", { class: "actions" }, h("button", { type: "button", onclick: () => route() }, "Refresh"))));
    return heading;
  }

  // -- usage --

  function meter(labelText, used, limit) {
    const m = h("meter", { min: "0", max: String(limit || 1), value: String(used) });
    return field(`${labelText}: ${used} of ${limit}`, m);
  }

  async function renderUsage() {
    const heading = page("Usage");
    const usage = await api("GET", "/api/account/usage");
    const u = usage.usage;
    viewEl.append(h("section", { class: "card", "aria-labelledby": "units-title" }, h("h2", { id: "units-title" }, "Units"),
      meter("Knowledge units", u.knowledgeUnitsUsed, u.knowledgeUnitsLimit),
      meter("Storage units", u.storageUnitsUsed, u.storageUnitsLimit),
      h("p", {}, `Requests left: ${u.requestBalance}`)));
    const days = usage.turns_per_day || [];
    if (days.length) {
      const top = Math.max(1, ...days.map((d) => d.turns));
      const chart = h("div", { class: "chart", "aria-hidden": "true" }, days.map((d) => h("div", {
        class: "bar-col", title: `${d.date}: ${d.turns}`, style: null,
      })));
      // Heights through CSSOM: the page's CSP allows no inline style attributes.
      [...chart.children].forEach((bar, i) => { bar.style.height = `${(days[i].turns / top) * 100}%`; });
      const total = days.reduce((sum, d) => sum + d.turns, 0);
      viewEl.append(h("section", { class: "card", "aria-labelledby": "turns-title" },
        h("h2", { id: "turns-title" }, "Turns per day, last 30 days"),
        h("p", {}, `${total} turns in all; the busiest day had ${top === 1 && total === 0 ? 0 : top}.`), chart,
        h("details", {}, h("summary", {}, "As a table"),
          table("Turns per day", ["Day", "Turns"], days.map((d) => h("tr", {}, h("td", {}, d.date), h("td", { class: "num" }, String(d.turns))))))));
    }
    const closed = usage.sessions_closed || [];
    viewEl.append(h("section", { class: "card", "aria-labelledby": "closed-title" }, h("h2", { id: "closed-title" }, "Sessions closed, by code"),
      closed.length ? table("Sessions closed by code", ["Code", "Meaning", "Sessions"], closed.map((c) => h("tr", {},
        h("td", {}, String(c.code)), h("td", {}, state.choices.close_codes[c.code] || ""), h("td", { class: "num" }, String(c.count)))))
        : h("p", { class: "muted" }, "No session has closed in the last 30 days.")));
    return heading;
  }

  // -- settings --

  async function renderSettings() {
    const box = errorBox();
    const heading = page("Settings", box);
    const account = await api("GET", "/api/account");
    const origins = h("textarea", { value: account.plan.allowed_origins.join("\n"), disabled: !canWrite() });
    const originForm = h("form", { class: "card", "aria-labelledby": "origins-title" }, h("h2", { id: "origins-title" }, "Allowed origins"),
      field("Origins, one per line", origins, "The sites whose pages may open sessions; empty lets every site in."),
      canWrite() ? h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save origins")) : null);
    originForm.addEventListener("submit", action(box, async () => {
      const list = origins.value.split("\n").map((line) => line.trim()).filter(Boolean);
      await api("PATCH", "/api/account", { allowed_origins: list });
      say("Allowed origins saved.");
      await route();
    }));
    const plan = account.plan;
    viewEl.append(h("section", { class: "card", "aria-labelledby": "account-title" }, h("h2", { id: "account-title" }, "Account and plan"),
      h("dl", { class: "facts" }, h("dt", {}, "Account"), h("dd", {}, `${account.name} (${account.id})`),
        h("dt", {}, "Knowledge units"), h("dd", {}, String(plan.knowledge_units)),
        h("dt", {}, "Storage units"), h("dd", {}, String(plan.storage_units)),
        h("dt", {}, "Concurrent sessions"), h("dd", {}, String(plan.max_concurrent_sessions)),
        h("dt", {}, "Starting requests"), h("dd", {}, String(plan.initial_requests))),
      h("p", { class: "muted" }, "The plan is set by whoever runs this Rapport, with its command line.")), originForm);
    if (isOwner()) viewEl.append(await usersSection(box));
    viewEl.append(h("section", { class: "card", "aria-labelledby": "signins-title" }, h("h2", { id: "signins-title" }, "Your sign-ins"),
      h("p", {}, "Signed in somewhere you no longer use? End every session of yours, this one included."),
      h("button", { type: "button", onclick: action(box, async () => {
        await api("POST", "/api/auth/logout-everywhere");
        signedOut("You are signed out everywhere.");
      }) }, "Sign out everywhere")));
    return heading;
  }

  function showLink(box, user, link) {
    const value = h("input", { type: "text", readonly: true, value: link, class: "secret" });
    box.replaceChildren(h("h3", {}, `Set-password link for ${user.email}`),
      h("p", {}, "Pass it on yourself (Rapport sends no mail); it works once, for 24 hours."), field("Link", value));
    value.focus();
    value.select();
  }

  async function usersSection(box) {
    const users = (await api("GET", "/api/account/users")).items;
    const linkBox = h("div", { "aria-live": "polite" });
    const rows = users.map((user) => {
      const self = user.id === state.me.user_id;
      const role = h("select", { "aria-label": `Role of ${user.email}`, disabled: self },
        state.choices.roles.map((r) => h("option", { value: r, selected: r === user.role }, r)));
      return h("tr", {}, h("td", {}, user.email), h("td", {}, role), h("td", {}, badge(user.status)),
        h("td", {}, self ? h("span", { class: "muted" }, "you") : h("div", { class: "actions" },
          h("button", { type: "button", "aria-label": `Save role of ${user.email}`, onclick: action(box, async () => {
            await api("PATCH", `/api/account/users/${user.id}`, { role: role.value });
            say(`${user.email} is now ${role.value}.`);
            await route();
          }) }, "Save role"),
          h("button", { type: "button", "aria-label": `${user.status === "disabled" ? "Enable" : "Disable"} ${user.email}`, onclick: action(box, async () => {
            await api("PATCH", `/api/account/users/${user.id}`, { disabled: user.status !== "disabled" });
            say(`${user.email} is ${user.status === "disabled" ? "enabled" : "disabled"}.`);
            await route();
          }) }, user.status === "disabled" ? "Enable" : "Disable"),
          h("button", { type: "button", "aria-label": `New link for ${user.email}`, onclick: action(box, async () => {
            const made = await api("POST", `/api/account/users/${user.id}/reset`);
            showLink(linkBox, made.user, made.set_password_link);
          }) }, "New link"))));
    });
    const email = h("input", { type: "email", required: true, autocomplete: "off" });
    const role = h("select", {}, state.choices.roles.map((r) => h("option", { value: r, selected: r === "viewer" }, r)));
    const invite = h("form", { class: "row" }, field("Email", email), field("Role", role), h("button", { type: "submit" }, "Invite"));
    invite.addEventListener("submit", action(box, async () => {
      const made = await api("POST", "/api/account/users", { email: email.value.trim(), role: role.value });
      email.value = "";
      showLink(linkBox, made.user, made.set_password_link);
      say(`${made.user.email} is invited.`);
    }));
    return h("section", { class: "card", "aria-labelledby": "users-title" }, h("h2", { id: "users-title" }, "Users"),
      table("Dashboard users", ["Email", "Role", "Status", ""], rows), h("h3", {}, "Invite a user"), invite, linkBox);
  }

  // -- audit --

  async function renderAudit(before) {
    const heading = page("Audit log");
    await learnPeople();
    const query = new URLSearchParams({ limit: "50" });
    if (before) query.set("before", before);
    const entries = await api("GET", `/api/account/audit?${query}`);
    const rows = entries.items.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, actorName(e.actor)),
      h("td", {}, e.action), h("td", {}, e.target), h("td", {}, e.ip || "")));
    viewEl.append(h("section", { class: "card", "aria-label": "Entries" },
      rows.length ? table("Audit entries, newest first", ["When", "Who", "What", "Target", "IP"], rows)
        : h("p", {}, "No entries."),
      h("div", { class: "actions" },
        before ? h("a", { href: "#audit" }, "Newest") : null,
        entries.next_before ? h("a", { href: `#audit/${encodeURIComponent(entries.next_before)}` }, "Older entries") : null)));
    return heading;
  }

  // ---- routing ----------------------------------------------------------------------------

  const PAGES = {
    keys: renderKeys, knowledge: renderKnowledge, personas: renderPersonas, live: renderLive,
    usage: renderUsage, settings: renderSettings, audit: renderAudit,
  };

  /** Build the view the URL names; #view is aria-busy until it is whole. */
  async function route() {
    viewEl.setAttribute("aria-busy", "true");
    try {
      await build();
    } finally {
      viewEl.removeAttribute("aria-busy");
    }
  }

  async function build() {
    if (location.pathname.replace(/\/$/, "") === "/dashboard/set-password") {
      renderSetPassword();
      return;
    }
    if (!state.me) {
      const me = await currentSession();
      if (!me) {
        signedOut("");
        return;
      }
      signedInAs(me);
    }
    const [name, arg] = location.hash.slice(1).split("/");
    const render = PAGES[name] || renderKeys;
    for (const link of nav.querySelectorAll("a")) {
      const current = link.getAttribute("href") === `#${PAGES[name] ? name : "keys"}`;
      if (current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    try {
      if (!state.choices) state.choices = await api("GET", "/dashboard/choices.json");
      const heading = await render(arg ? decodeURIComponent(arg) : undefined);
      if (heading && document.activeElement === document.body) heading.focus();
    } catch (error) {
      if (error.status !== 401) viewEl.replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
    }
  }

  let carried = ""; // what go() says on the page it opens

  /** Open another page, saying `text` there (a page change clears what the last one said). */
  function go(hash, text) {
    carried = text;
    location.hash = hash;
  }

  window.addEventListener("hashchange", () => {
    say(carried);
    carried = "";
    route().then(() => {
      const heading = viewEl.querySelector("h1");
      if (heading) heading.focus();
    });
  });
  $("sign-out").addEventListener("click", action(null, async () => {
    await api("POST", "/api/auth/logout");
    signedOut("You are signed out.");
  }));
  route();
})();
