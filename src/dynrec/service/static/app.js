// dynrec "try it" page: plain JavaScript talking to the service's JSON API (same origin).
// A known user's events go to the store (POST /v1/events) and everything is re-read from the
// API, so the page shows exactly what any other client would get. An anonymous session keeps its
// history in the page and asks POST /v1/recommendations with it.
"use strict";

(() => {
  const K = 10; // recommendations shown
  const HISTORY_SHOWN = 50;
  const HISTORY_READ = 500; // read further back than shown: titles for the explanations' items
  const USERS_LISTED = 1000; // the picker's users (the API's most)
  const $ = (id) => document.getElementById(id);

  const titles = new Map(); // item_id -> title, from every response that carried one
  const state = {
    mode: null, // "user" | "anon" | null
    userId: null,
    anonHistory: [], // [{item_id, timestamp}], most recent last
    token: 0, // the latest refresh; older responses are dropped
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---- plumbing ---------------------------------------------------------------------------------

  function detail(data, text) {
    // FastAPI errors: {"detail": "..."} or {"detail": [{"loc": [...], "msg": "..."}]}
    if (data && data.detail !== undefined) {
      if (typeof data.detail === "string") return data.detail;
      if (Array.isArray(data.detail)) {
        return data.detail
          .map((d) => (d && d.msg ? `${(d.loc || []).join(".")}: ${d.msg}` : JSON.stringify(d)))
          .join("; ");
      }
      return JSON.stringify(data.detail);
    }
    return (text || "").slice(0, 300) || "no details";
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const key = $("api-key").value.trim();
    if (key && method !== "GET") headers["X-API-Key"] = key;
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, `${method} ${path}: the service did not answer (${e.message})`);
    }
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, `${method} ${path} failed (${resp.status}): ${detail(data, text)}`);
    }
    return data;
  }

  const errors = [];
  function showError(message) {
    errors.push(message);
    const box = $("error");
    box.replaceChildren();
    const list = document.createElement("ul");
    for (const m of errors.slice(-3)) {
      const li = document.createElement("li");
      li.textContent = m;
      list.append(li);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "dismiss";
    close.textContent = "Dismiss";
    close.addEventListener("click", clearErrors);
    box.append(list, close);
    box.hidden = false;
  }

  function clearErrors() {
    errors.length = 0;
    $("error").hidden = true;
    $("error").replaceChildren();
  }

  function remember(items) {
    for (const it of items || []) {
      if (it && it.item_id !== undefined && it.title) titles.set(String(it.item_id), it.title);
    }
  }

  // An item as people read it: its title, else its id alone (ids like "item138" need no prefix).
  function label(itemId) {
    return titles.get(String(itemId)) || String(itemId);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-") || k.startsWith("aria-") || k === "type" || k === "title") {
        node.setAttribute(k, v);
      } else node[k] = v;
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  function when(ts) {
    if (ts === null || ts === undefined) return "";
    const d = new Date(Number(ts) * 1000);
    return Number.isNaN(d.getTime()) ? String(ts) : d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  // ---- rendering --------------------------------------------------------------------------------

  // Title and id; an item without a title shows its id once (as the title).
  function itemHead(itemId, title) {
    if (!title) return [el("span", { class: "title", text: String(itemId) })];
    return [el("span", { class: "title", text: title }), el("span", { class: "id", text: `#${itemId}` })];
  }

  // The popular fallback ranks by events per item: its scores are counts, shown as such.
  function scoreCell(score, fallback) {
    if (fallback === "popular") {
      const n = Math.round(Number(score));
      return el("span", {
        class: "score",
        title: "popular fallback: the item's number of events",
        text: `${n.toLocaleString("en")} ${n === 1 ? "event" : "events"}`,
      });
    }
    return el("span", { class: "score", title: "model score", text: Number(score).toFixed(3) });
  }

  function renderRecs(res) {
    const list = $("recs");
    remember(res.items);
    const rows = res.items.map((it, i) => {
      const pick = el(
        "button",
        {
          type: "button",
          class: "pick",
          "data-testid": "rec-pick",
          "aria-label": `Pick ${it.title || it.item_id} (rank ${i + 1})`,
        },
        ...itemHead(it.item_id, it.title),
      );
      pick.addEventListener("click", () => pickItem(it.item_id));
      // "because of" names the history items that raised the score. A negative contribution
      // (a model whose history item pulls this item down, e.g. a negative similarity or factor
      // product) is the opposite of a reason: left out here; the API still returns it.
      let why = null;
      const reasons = (Array.isArray(it.explanation) ? it.explanation : []).filter((e) => Number(e.weight) > 0);
      if (reasons.length) {
        const parts = reasons.slice(0, 3).map((e) => `${label(e.item_id)} (${Number(e.weight).toFixed(2)})`);
        why = el("p", { class: "why", "data-testid": "rec-why", text: `because of ${parts.join(" · ")}` });
      }
      return el(
        "li",
        { class: "item", "data-testid": "rec-item", "data-item-id": String(it.item_id) },
        pick,
        scoreCell(it.score, res.fallback),
        why,
      );
    });
    list.replaceChildren(...rows);
    const notes = [];
    if (res.fallback === "popular") {
      notes.push("No usable history yet: showing the most popular items (by number of events).");
    } else if (res.fallback) notes.push(`No usable history yet: showing the "${res.fallback}" fallback.`);
    if (!res.items.length) notes.push("No recommendations.");
    notes.push(`model version ${res.model_version}`);
    $("recs-note").textContent = notes.join(" ");
    list.dataset.fallback = res.fallback || "";
    list.dataset.generation = String(Number(list.dataset.generation || "0") + 1);
  }

  function renderHistory(entries, total) {
    // entries: most recent last (as the API gives them); shown most recent first
    remember(entries);
    entries = entries.slice(-HISTORY_SHOWN);
    const rows = entries
      .slice()
      .reverse()
      .map((h) =>
        el(
          "li",
          { class: "item", "data-testid": "history-item", "data-item-id": String(h.item_id) },
          ...itemHead(h.item_id, h.title || titles.get(String(h.item_id))),
          el("span", { class: "meta", text: [h.event_type, when(h.timestamp)].filter(Boolean).join(" · ") }),
        ),
      );
    $("history").replaceChildren(...rows);
    $("history-count").textContent =
      total > entries.length ? `(latest ${entries.length} of ${total} events)` : `(${plural(total, "event")})`;
    if (!entries.length) $("history").replaceChildren(el("li", { class: "note", text: "No events yet." }));
  }

  const BASIS = {
    categories: "categories from the item metadata",
    clusters: "clusters of the model's item vectors",
    items: "individual items",
  };

  function profile(name, testid, p) {
    const cats = (p && p.categories) || [];
    const bars = cats.map(([cat, share]) => {
      const bar = el("span", { class: "bar", "aria-hidden": "true" });
      bar.style.setProperty("--share", `${Math.max(0, Math.min(1, Number(share))) * 100}%`);
      // halves rounded up, as dynrec.online.interests.percent rounds for `dynrec profile`
      const pct = Math.round(Number(share) * 100);
      return el(
        "li",
        { "data-testid": "interest-category", "data-category": String(cat), "data-share": String(share) },
        el("span", { class: "name", title: String(cat), text: String(cat) }),
        bar,
        el("span", { class: "pct", text: `${pct}%` }),
      );
    });
    const items = ((p && p.items) || []).map((id) =>
      el("li", { class: "chip", "data-item-id": String(id), text: label(id) }),
    );
    return el(
      "div",
      { class: "profile", "data-testid": testid },
      el("h3", { text: name }),
      bars.length ? el("ul", { class: "bars" }, ...bars) : el("p", { class: "note", text: "nothing yet" }),
      items.length ? el("p", { class: "hint", text: "points the model to:" }) : null,
      items.length ? el("ul", { class: "chips" }, ...items) : null,
    );
  }

  function sides(shift) {
    const side = (names) => (names && names.length ? names.join(", ") : "?");
    return `${side(shift.from)} → ${side(shift.to)}`;
  }

  function renderInterests(interests, lastShift, emptyNote) {
    const box = $("interests");
    const empty = !interests || !(interests.long_term.categories.length || interests.long_term.items.length);
    if (empty) {
      const note = emptyNote || "No interests yet: this user has no events.";
      box.replaceChildren(el("p", { class: "note", "data-testid": "interests-empty", text: note }));
      return;
    }
    const parts = [
      el("p", { class: "hint", text: `by ${BASIS[interests.basis] || interests.basis}` }),
      el(
        "div",
        { class: "profiles" },
        profile("Short term (latest events)", "interests-short", interests.short_term),
        profile("Long term (whole history)", "interests-long", interests.long_term),
      ),
    ];
    if (lastShift) {
      parts.push(
        el("p", {
          class: "hint",
          "data-testid": "last-shift",
          text: `Last interest shift: ${sides(lastShift)} (${when(lastShift.when)})`,
        }),
      );
    }
    box.replaceChildren(...parts); // (replaceChildren would print a null child as the text "null")
  }

  // The shift a click completed: shown until the next click or another user.
  function showShift(shift) {
    const box = $("shift-note");
    box.textContent = shift ? `Interests shifted: ${sides(shift)}` : "";
    box.hidden = !shift;
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function renderSession() {
    const s = $("session");
    const hint = $("recs-hint");
    if (state.mode === "user") {
      s.textContent = `Browsing as user ${state.userId}: clicks are stored as events.`;
      hint.textContent = "Click an item to record a view by this user; the lists update from the stored event.";
    } else if (state.mode === "anon") {
      s.textContent = `Anonymous session: ${plural(state.anonHistory.length, "item")} kept in this page only.`;
      hint.textContent = "Click an item to add it to this session's history; the list updates from it.";
    } else {
      s.textContent = "No user selected.";
      hint.textContent = "Pick a user or start an anonymous session.";
    }
  }

  // ---- actions ----------------------------------------------------------------------------------

  async function refresh() {
    const my = ++state.token;
    const recs = $("recs");
    recs.setAttribute("aria-busy", "true");
    renderSession();
    try {
      if (state.mode === "user") {
        const enc = encodeURIComponent(state.userId);
        const [user, res] = await Promise.allSettled([
          api("GET", `/v1/users/${enc}?limit=${HISTORY_READ}`).catch((e) => {
            if (e.status === 404) return null; // no events yet: a new user
            throw e;
          }),
          api("GET", `/v1/users/${enc}/recommendations?k=${K}&explain=true`),
        ]);
        if (my !== state.token) return;
        if (res.status === "fulfilled") remember(res.value.items); // titles for the interests' items
        if (user.status === "fulfilled") {
          const u = user.value;
          renderHistory(u ? u.history : [], u ? u.n_events : 0);
          renderInterests(u ? u.interests : null, u ? u.last_shift : null);
        } else showError(user.reason.message);
        if (res.status === "fulfilled") renderRecs(res.value);
        else showError(res.reason.message);
      } else if (state.mode === "anon") {
        const hist = state.anonHistory.map((h) => h.item_id);
        const res = await api("POST", "/v1/recommendations", {
          history: hist,
          k: K,
          exclude_seen: true,
          explain: true,
        });
        if (my !== state.token) return;
        // the session's interests, computed by the service as for a stored user
        const interests = await api("POST", "/v1/interests", { history: hist });
        if (my !== state.token) return;
        renderHistory(
          state.anonHistory.map((h) => ({ ...h, event_type: "view", title: titles.get(h.item_id) })),
          state.anonHistory.length,
        );
        renderInterests(interests, null, "No interests yet: click items to build this session's history.");
        renderRecs(res);
      }
    } catch (e) {
      if (my === state.token) showError(e.message);
    } finally {
      if (my === state.token) recs.setAttribute("aria-busy", "false");
    }
  }

  async function pickItem(itemId) {
    itemId = String(itemId);
    if (state.mode === "anon") {
      state.anonHistory.push({ item_id: itemId, timestamp: Date.now() / 1000 });
      await refresh();
      return;
    }
    if (state.mode !== "user") {
      showError("Pick a user or start an anonymous session first, then click an item.");
      return;
    }
    try {
      const res = await api("POST", "/v1/events", {
        events: [
          { user_id: state.userId, item_id: itemId, timestamp: Date.now() / 1000, event_type: "view" },
        ],
      });
      if (res && res.unknown_items) {
        showError(`Item ${itemId} is not in the model's catalogue: the event is stored but cannot change scores.`);
      }
      const shifted = ((res && res.shifts) || []).filter((s) => s.user_id === state.userId);
      showShift(shifted.length ? shifted[shifted.length - 1] : null);
    } catch (e) {
      showError(e.message);
      return;
    }
    await refresh();
  }

  function selectUser(userId) {
    userId = (userId || "").trim();
    if (!userId) {
      showError("Type a user id or pick one from the list.");
      return;
    }
    clearErrors();
    showShift(null);
    state.mode = "user";
    state.userId = userId;
    $("user-id").value = userId;
    const url = new URL(window.location.href);
    url.searchParams.set("user", userId);
    window.history.replaceState(null, "", url);
    refresh();
  }

  function startAnonymous() {
    clearErrors();
    showShift(null);
    state.mode = "anon";
    state.userId = null;
    state.anonHistory = [];
    $("user-select").value = "";
    $("user-id").value = "";
    const url = new URL(window.location.href);
    url.searchParams.delete("user");
    window.history.replaceState(null, "", url);
    refresh();
  }

  async function search(query) {
    const list = $("search-results");
    try {
      const res = await api("GET", `/v1/items?query=${encodeURIComponent(query)}&limit=20`);
      remember(res.items);
      const rows = res.items.map((it) => {
        const add = el(
          "button",
          { type: "button", class: "pick", "aria-label": `Pick ${it.title || it.item_id}` },
          ...itemHead(it.item_id, it.title),
        );
        add.addEventListener("click", () => pickItem(it.item_id));
        return el("li", { class: "item", "data-testid": "search-item", "data-item-id": String(it.item_id) }, add);
      });
      list.replaceChildren(...rows);
      if (!rows.length) list.replaceChildren(el("li", { class: "note", text: `No item matches "${query}".` }));
    } catch (e) {
      showError(e.message);
    }
  }

  async function loadUsers() {
    try {
      const res = await api("GET", `/v1/users?limit=${USERS_LISTED}`);
      const select = $("user-select");
      // numeric ids in numeric order (1, 2, 10, not 1, 10, 2); others alphabetically
      const order = new Intl.Collator("en", { numeric: true }).compare;
      const users = res.users.map(String).sort(order);
      for (const u of users) select.append(el("option", { value: u, text: u }));
      select.dataset.loaded = "true";
    } catch (e) {
      showError(e.message);
    }
  }

  async function loadHealth() {
    try {
      const h = await api("GET", "/healthz");
      $("health").textContent = `model ${h.model} · version ${h.model_version} · ${h.store} store`;
    } catch (e) {
      $("health").textContent = "service unavailable";
      showError(e.message);
    }
  }

  function init() {
    $("user-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      selectUser($("user-id").value || $("user-select").value);
    });
    $("user-select").addEventListener("change", () => {
      if ($("user-select").value) selectUser($("user-select").value);
    });
    $("anon-start").addEventListener("click", startAnonymous);
    $("key-form").addEventListener("submit", (ev) => ev.preventDefault()); // Enter in the key field: nothing to send
    $("search-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      search($("search-query").value.trim());
    });
    loadHealth();
    loadUsers();
    const wanted = new URL(window.location.href).searchParams.get("user");
    if (wanted) selectUser(wanted);
    document.body.dataset.ready = "true";
  }

  init();
})();
