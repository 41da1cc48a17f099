// llmsched live status page: polls the API every second and redraws. No framework, no
// build step. Every value is set with textContent, never parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 5000;
  const KEY_STORE = "llmsched.adminKey";
  const ACTIONS_SHOWN = 15;
  const STATE_ORDER = ["ACTIVE", "STARTING", "DRAINING", "SLEEP_1", "SLEEP_2", "FAILED",
                       "LOST", "UNLOADED"];

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "title") node.title = value;
      else if (name === "width") node.style.width = value;  // CSSOM: allowed by the CSP
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmt = {
    num(v, digits = 0) {
      return v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits);
    },
    pct(v) {
      return v === null || v === undefined ? "–" : `${(100 * v).toFixed(0)}%`;
    },
    secs(v) {
      if (v === null || v === undefined) return "–";
      return v < 1 ? `${(1000 * v).toFixed(0)} ms` : `${v.toFixed(2)} s`;
    },
    age(v) {
      if (v === null || v === undefined) return "–";
      return v < 10 ? `${v.toFixed(1)} s` : `${v.toFixed(0)} s`;
    },
    time(epoch) {
      return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "–";
    },
  };

  // -- the admin key: typed by the operator, kept for this tab only -----------------------
  function adminKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch (_err) {
      return "";
    }
  }

  function setAdminKey(value) {
    try {
      if (value) sessionStorage.setItem(KEY_STORE, value);
      else sessionStorage.removeItem(KEY_STORE);
    } catch (_err) {
      // storage disabled: the key lives until the page is closed
    }
    memoryKey = value;
    showKeyState();
  }

  let memoryKey = adminKey();

  function showKeyState() {
    $("key-state").textContent = memoryKey ? "key set for this tab" : "no key";
  }

  // -- fetching ----------------------------------------------------------------------------
  async function getJSON(path, headers) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const r = await fetch(path, { headers: headers || {}, cache: "no-store",
                                    signal: abort.signal });
      let body = null;
      try {
        body = await r.json();
      } catch (_err) {
        body = null;
      }
      return { status: r.status, body };
    } finally {
      clearTimeout(timer);
    }
  }

  function showError(body, text) {
    const old = body.querySelector(":scope > .poll-error");
    if (old) old.remove();
    body.prepend(el("p", { class: "error poll-error", "data-state": "error" }, text));
  }

  function errorText(reply) {
    const e = reply.body && reply.body.error;
    return e ? `${reply.status} ${e.code || ""}: ${e.message || ""}` : `HTTP ${reply.status}`;
  }

  // -- pools -------------------------------------------------------------------------------
  function memberState(m) {
    if (!m.available) return ["down", m.excluded || "unavailable"];
    if (m.asleep) return ["asleep", m.excluded || "asleep"];
    if (m.excluded) return ["excluded", m.excluded];
    const guard = m.greybox && m.greybox.guard;
    if (guard) return ["guarded", guard];
    if (m.scrape_error && m.stale) return ["scrape error", m.scrape_error];
    if (m.stale) return ["stale", m.scrape_error || "no fresh metrics: scores 0"];
    if (m.scrape_error) return ["ok", `last scrape failed: ${m.scrape_error}`];
    return ["ok", ""];
  }

  function renderPool(pool) {
    const answers = Object.values(pool.selections || {}).reduce((a, b) => a + b, 0);
    const ident = `${pool.name}:${pool.partition}`;
    const notSelected = ["none", "fallback", "busy"]
      .filter((k) => pool.selections && pool.selections[k])
      .map((k) => `${k} ${pool.selections[k]}`).join(", ");
    const meta = el("p", { class: "meta" },
      `mode ${pool.mode || "–"} · source ${pool.source || "–"} · engine ${pool.engine_type}`,
      ` · ${pool.member_count} members · membership ${fmt.age(pool.snapshot_age_s)} old`,
      ` · ${answers} answers (${pool.selections_scope})`, notSelected ? ` · ${notSelected}` : "",
      pool.pool_fallback ? el("span", { class: "warn" }, " · pool_fallback on") : "");
    const error = pool.source_error
      ? el("p", { class: "error", "data-col": "source-error" }, `membership: ${pool.source_error}`)
      : null;
    const greybox = pool.members.some((m) => m.greybox);
    const head = el("tr", {},
      ["Member", "State", "Score", greybox ? "Predicted TTFT" : null, "In flight", "Waiting",
       "Running", "KV", "Metrics age", "Share", "Why left out / error"]
        .filter((h) => h !== null).map((h) => el("th", {}, h)));
    const rows = pool.members.map((m) => {
      const [state, why] = memberState(m);
      const share = answers ? m.selections / answers : 0;
      const g = m.greybox || {};
      return el("tr", { "data-member": m.key, "data-state": state },
        el("td", { class: "key" }, m.key),
        el("td", { "data-col": "state", class: `state ${state.replace(" ", "-")}` }, state),
        el("td", { class: "num", "data-col": "score" }, fmt.num(m.score, 3)),
        greybox ? el("td", { class: "num", "data-col": "predicted" },
                     `${fmt.secs(g.predicted_ttft_s)}${g.trusted ? "" : " (learning)"}`) : null,
        el("td", { class: "num", "data-col": "inflight" }, m.inflight),
        el("td", { class: "num" }, fmt.num(m.metrics.waiting_queue)),
        el("td", { class: "num" }, fmt.num(m.metrics.running_req)),
        el("td", { class: "num" }, fmt.pct(m.metrics.cache_usage)),
        el("td", { class: "num" }, fmt.age(m.metrics_age_s)),
        el("td", { class: "share", "data-col": "share" },
           el("span", { class: "bar", width: `${(100 * share).toFixed(1)}%` }),
           el("span", { class: "label" }, `${(100 * share).toFixed(1)}% (${m.selections})`)),
        el("td", { class: "why", "data-col": "why" }, why));
    });
    return el("article", { class: "pool", "data-pool": ident },
      el("h3", {}, ident), meta, error,
      el("table", {}, el("thead", {}, head), el("tbody", {}, rows)));
  }

  function renderPools(reply) {
    const body = $("pools-body");
    if (reply.status !== 200) {
      showError(body, `GET /pools/status: ${errorText(reply)} (last known state below)`);
      return false;
    }
    const pools = [...reply.body.pools].sort((a, b) =>
      `${a.partition}/${a.name}`.localeCompare(`${b.partition}/${b.name}`));
    body.replaceChildren(...(pools.length ? pools.map(renderPool)
      : [el("p", { class: "muted" }, "No pools configured or registered.")]));
    return true;
  }

  // -- aliases and actions -------------------------------------------------------------------
  function stateCounts(instances) {
    const counts = {};
    for (const i of instances) counts[i.state] = (counts[i.state] || 0) + 1;
    return Object.keys(counts)
      .sort((a, b) => STATE_ORDER.indexOf(a) - STATE_ORDER.indexOf(b))
      .map((s) => el("span", { class: `chip ${s}`, "data-count": s }, `${s} ${counts[s]}`));
  }

  function renderAlias(model) {
    const head = el("tr", {}, ["Instance", "Worker", "State", "In flight", "Capacity",
                               "TTFT avg", "E2E avg", "URL"].map((h) => el("th", {}, h)));
    const rows = model.instances.map((i) => el("tr", { "data-instance": i.instance },
      el("td", { class: "key" }, i.instance),
      el("td", {}, i.worker_id),
      el("td", { "data-col": "state", class: `state ${i.state}` }, i.state),
      el("td", { class: "num" }, i.inflight),
      el("td", { class: "num" }, i.capacity),
      el("td", { class: "num" }, fmt.secs(i.ttft_avg)),
      el("td", { class: "num" }, fmt.secs(i.e2e_avg)),
      el("td", { class: "muted" }, i.url || "")));
    return el("article", { class: "alias", "data-alias": model.alias },
      el("h3", {}, model.alias, el("span", { class: "muted" }, ` ${model.model_name || ""}`)),
      el("p", { class: "meta" },
         "load ", el("strong", { "data-col": "load" },
                     model.load === null || model.load === undefined ? "–" : fmt.pct(model.load)),
         ` · ${model.inflight} in flight / capacity ${model.capacity} · `, stateCounts(model.instances)),
      model.instances.length
        ? el("table", {}, el("thead", {}, head), el("tbody", {}, rows))
        : el("p", { class: "muted" }, "No instances."));
  }

  function renderActions(actions) {
    if (!actions.length) return el("p", { class: "muted" }, "No autoscaler action yet.");
    const head = el("tr", {}, ["Time", "Alias", "Action", "Instance", "Result", "Load",
                               "Reason"].map((h) => el("th", {}, h)));
    const rows = actions.slice(0, ACTIONS_SHOWN).map((a) => el("tr",
      { "data-action": a.kind, class: a.ok ? "" : "failed" },
      el("td", {}, fmt.time(a.at)),
      el("td", {}, a.alias),
      el("td", {}, a.level ? `${a.kind} (level ${a.level})` : a.kind),
      el("td", { class: "key" }, a.instance || "–"),
      el("td", { class: a.ok ? "ok" : "error" }, a.ok ? "ok" : `failed: ${a.error || ""}`),
      el("td", { class: "num" }, fmt.num(a.load, 2)),
      el("td", { class: "why" }, a.reason)));
    return el("table", {}, el("thead", {}, head), el("tbody", {}, rows));
  }

  function renderAdmin(reply) {
    const body = $("aliases-body");
    const actions = $("actions-body");
    if (reply.status === 401) {
      const ask = el("p", { class: "warn", "data-state": "needs-key" },
        "The admin API needs the admin key (LLMSCHED_ADMIN_KEY): type it in the field above.");
      body.replaceChildren(ask);
      actions.replaceChildren(ask.cloneNode(true));
      return true;  // the API answered: the page is live
    }
    if (reply.status !== 200) {
      showError(body, `GET /admin/status: ${errorText(reply)} (last known state below)`);
      return false;
    }
    const s = reply.body;
    const workers = el("p", { class: "meta" },
      `workers: ${s.workers.active} active, ${s.workers.lost} lost`);
    body.replaceChildren(workers, ...(s.models.length ? s.models.map(renderAlias)
      : [el("p", { class: "muted" }, "No model alias registered.")]));
    actions.replaceChildren(renderActions(s.actions));
    return true;
  }

  // -- the loop ------------------------------------------------------------------------------
  let polls = 0;

  async function poll() {
    const started = Date.now();
    const key = memoryKey;
    const [pools, admin] = await Promise.allSettled([
      getJSON("pools/status"),
      getJSON("admin/status", key ? { Authorization: `Bearer ${key}` } : {}),
    ]);
    let ok = true;
    for (const [result, render] of [[pools, renderPools], [admin, renderAdmin]]) {
      if (result.status === "fulfilled") ok = render(result.value) && ok;
      else ok = false;
    }
    const conn = $("conn");
    if (ok) {
      polls += 1;
      document.body.dataset.polls = String(polls);
      conn.textContent = "live";
      conn.dataset.state = "live";
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } else {
      const failed = [pools, admin].find((r) => r.status === "rejected");
      conn.textContent = failed ? `unreachable: ${failed.reason}` : "partly failing";
      conn.dataset.state = "error";
    }
    setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
  }

  function start() {
    showKeyState();
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("admin-key");
      setAdminKey(input.value.trim());
      input.value = "";
    });
    $("key-forget").addEventListener("click", () => setAdminKey(""));
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
