// fwledger tracker dashboard: polls this tracker's read-only JSON and redraws in place.
// Every string from the inventory or the ledger goes into the page as a text node (el() below):
// this file never assigns HTML, so a device id such as "<img onerror=...>" shows as those characters.
"use strict";

(function () {
  const body = document.body;
  const POLL_MS = Math.max(500, Number(body.dataset.pollMs) || 1500);

  // el("td", {className: "x", title: "t"}, "text", childNode, ...): children are text or nodes
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "hidden") node.hidden = Boolean(value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function text(id, value) {
    const node = document.getElementById(id);
    if (node) node.textContent = value === null || value === undefined ? "-" : String(value);
  }

  function badge(label, kind, title) {
    return el("span", {className: "badge " + kind, title: title || null}, label);
  }

  function when(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    const d = new Date(Number(seconds) * 1000);
    return isNaN(d.getTime()) ? "-" : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function deviceHref(id) {
    return "/dashboard/devices/" + encodeURIComponent(String(id));
  }

  async function getJSON(path) {
    const resp = await fetch(path, {cache: "no-store", headers: {"Accept": "application/json"}});
    const data = await resp.json().catch(() => null);
    if (resp.status === 401) {  // no session (or it expired): log in again, then come back here
      location.assign("/dashboard/login?next=" + encodeURIComponent(location.pathname));
    }
    if (!resp.ok) {
      const err = new Error((data && data.error && data.error.message) || ("HTTP " + resp.status));
      err.status = resp.status;
      err.code = data && data.error && data.error.code;
      throw err;
    }
    return data;
  }

  function connected(ok, message) {
    const node = document.getElementById("conn");
    node.textContent = ok ? "live" : "tracker unreachable: " + message;
    node.className = "conn " + (ok ? "ok" : "bad");
    if (ok) text("updated", new Date().toLocaleTimeString());
  }

  // poll forever, one request set at a time (no pile-up when the tracker is slow)
  function poll(step) {
    const tick = async () => {
      try {
        await step();
        connected(true);
      } catch (err) {
        connected(false, err.message || String(err));
      }
      setTimeout(tick, POLL_MS);
    };
    tick();
  }

  // ------------------------------------------------------------------ the fleet page

  const STATUS = {
    up_to_date: ["up to date", "ok"], outdated: ["outdated", "warn"], at_risk: ["at risk", "bad"],
    failed: ["failed", "bad"], unreachable: ["unreachable", "muted"], unknown_versions: ["unknown version", "muted"],
    unassessed: ["not assessed", "muted"], update_needed: ["update needed", "warn"],
    safe_mode: ["safe mode", "bad"], no_firmware: ["no firmware", "warn"], unverified: ["unverified", "warn"], in_trial: ["in trial", "warn"],
    concerned: ["concerned", "warn"],
  };

  // C11.3.g: "concerned by release X (reported by server S)", one line per report
  function concernedText(e) {
    return "concerned by " + e.product + " " + e.version + " (reported by server " + e.server + "): " +
      String(e.state).replace(/_/g, " ");
  }

  // an admission's labels (name=value) as badges, or "-"
  function labelBadges(labels) {
    const items = Object.entries(labels || {}).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0));
    return items.length ? items.map(([k, v]) => el("span", {className: "badge label", dataset: {label: k}}, k + "=" + v))
      : "-";
  }

  function lastResultCell(last) {
    if (!last) return el("td", {className: "muted"}, "-");
    if (last.ok) return el("td", {}, badge("ok", "ok"));
    return el("td", {}, badge("failed", "bad"), " ", el("code", {className: "error-code"}, last.code || "error"),
      last.message ? el("span", {className: "note"}, " " + last.message) : null);
  }

  function renderOverview(o) {
    text("ledger-block", o.ledger_block);
    text("tracker-address", o.tracker);
    for (const card of document.querySelectorAll("[data-count]")) {
      const value = o.counts[card.dataset.count];
      card.querySelector(".n").textContent = value === undefined ? "-" : String(value);
    }
    const rows = o.devices.map((d) => el("tr", {dataset: {device: d.device_id}},
      el("td", {}, el("a", {href: deviceHref(d.device_id), className: "device-link"}, d.device_id)),
      el("td", {}, d.hardware),
      el("td", {}, d.location || "-"),
      el("td", {className: "labels"}, labelBadges(d.labels)),
      el("td", {className: "status"}, d.status.filter((s) => STATUS[s]).map((s) => badge(STATUS[s][0], STATUS[s][1],
        s === "concerned" ? (d.concerned || []).map(concernedText).join("\n") : undefined))),
      el("td", {}, d.components.map((c) => el("div", {className: "component"},
        el("span", {className: "product"}, c.product), " ", el("span", {className: "version"}, c.version || "none"),
        c.state && c.state !== "confirmed" ? el("span", {className: "state"}, " (" + c.state.replace("_", " ")
          + (c.trial ? " " + c.trial : "") + ")") : null,
        c.needs === "safe_mode" ? el("span", {className: "needs"}, " (safe mode: needs an update)") : null,
        c.slot ? el("span", {className: "slot"}, " [" + c.slot + "]") : null))),
      el("td", {}, d.readiness),
      lastResultCell(d.last_result),
      el("td", {}, when(d.last_seen))));
    const tbody = document.querySelector("#devices tbody");
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {colspan: 9, className: "empty"},
      "no devices have reported yet"))]));
    text("devices-more", o.shown < o.counts.devices ? "showing " + o.shown + " of " + o.counts.devices : "");
    const adm = o.admission || {mode: "-", counts: {}, pending: []};
    text("admission", "admission " + adm.mode + ": " + (adm.counts.admitted || 0) + " admitted, " +
      (adm.counts.decommissioned || 0) + " decommissioned, " + (adm.counts.rejected || 0) +
      " rejected; accept or reject with fwledger fleet accept|reject DEVICE");
    const pending = adm.pending.map((p) => el("tr", {dataset: {pending: p.device_id}},
      el("td", {}, p.device_id), el("td", {}, el("code", {}, p.address)), el("td", {}, p.hardware),
      el("td", {}, String(p.requests)), el("td", {}, when(p.first_seen))));
    document.querySelector("#pending tbody").replaceChildren(...(pending.length ? pending
      : [el("tr", {}, el("td", {colspan: 5, className: "empty"}, "no device is waiting"))]));
  }

  function renderChains(r) {
    const lines = r.lines.map((line) => {
      const releases = line.releases.slice().reverse().map((rel) => el("li", {
        className: "release" + (rel.head ? " head" : "") + (rel.revoked || rel.flagged ? " dead" : ""),
        dataset: {version: rel.version, hash: rel.header_hash}},
        el("span", {className: "version"}, rel.version),
        el("code", {className: "hash", title: rel.header_hash}, rel.short_hash),
        el("span", {className: "block"}, "block " + rel.block),
        rel.head ? badge("head", "ok", "the newest release of this line") : null,
        rel.revoked ? badge("revoked", "bad", rel.revoke_reason || "revoked") : null,
        rel.vulnerable ? badge("vulnerable", "bad", rel.vulnerable_note || "vulnerable") : null,
        rel.flagged ? badge("flagged", "bad", rel.flag_reason || "failed the full node's checks") : null,
        el("span", {className: "note"}, rel.devices + (rel.devices === 1 ? " device" : " devices"))));
      return el("article", {className: "line", dataset: {line: line.vendor + "/" + line.product}},
        el("h3", {}, line.vendor + " / " + line.product), el("ol", {className: "chain"}, releases));
    });
    document.getElementById("chains").replaceChildren(...(lines.length ? lines
      : [el("p", {className: "empty"}, "no releases on the ledger yet")]));
  }

  // how a wave reads (the tracker says so: rollout.wave_status); kinds of its badge
  const WAVE_KIND = {open: "warn", done: "ok", waiting: "muted", empty: "muted", halted: "bad", cancelled: "bad"};

  function waveStatus(ro, w) {
    if (w.status) return String(w.status);
    if (!Number(w.devices)) return "empty";
    const open = w.open !== undefined ? Boolean(w.open) : Number(w.wave) <= Number(ro.open_wave);
    return open ? "open" : "waiting";
  }

  function scheduleText(s) {
    const parts = [];
    if (s && s.start) parts.push("starts " + s.start);
    if (s && s.windows && s.windows.length) parts.push("windows " + s.windows.join(", ") + " UTC");
    return parts.length ? parts.join("; ") : "any time";
  }

  function rolloutNotes(ro, state) {
    const notes = [];
    if (ro.target) notes.push(el("p", {className: "target note"}, "target: " + (ro.target.describe || ro.target.kind)));
    if (ro.schedule) notes.push(el("p", {className: "schedule note"}, "schedule: " + scheduleText(ro.schedule)));
    if (state === "halted" && ro.halt) {
      const codes = Object.entries(ro.halt.codes || {}).map(([c, n]) => c + " \u00d7" + n).join(", ");
      notes.push(el("div", {className: "halt"}, "halted: " + ro.halt.message + (codes ? " (codes: " + codes + ")" : ""),
        el("br", {}), "to resume: ", el("code", {}, ro.halt.resume)));
    }
    if (ro.cancelled) {
      const c = ro.cancelled;
      notes.push(el("div", {className: "cancelled"},
        "cancelled by " + c.by + (c.reason ? ": " + c.reason : "") + " (" + when(c.at) + ")"));
    }
    return notes;
  }

  function renderRollouts(r) {
    const list = r.rollouts || [];
    const num = (v) => (v === null || v === undefined || v === "" ? "-" : String(v));
    const items = list.map((ro) => {
      const state = String(ro.state);
      const kind = state === "completed" ? "ok" : state === "halted" || state === "cancelled" ? "bad" : "warn";
      const waves = (ro.waves || []).map((w) => {
        // progress is reported (succeeded or failed) over the devices the wave holds
        const status = waveStatus(ro, w);
        const total = Number(w.devices) || 0;
        const done = w.reported !== undefined ? Number(w.reported) : Number(w.succeeded || 0) + Number(w.failed || 0);
        return el("tr", {dataset: {wave: w.wave, status: status}, className: status === "open" ? "open" : null},
          el("td", {}, String(w.wave), " ", badge(status, WAVE_KIND[status] || "muted")),
          el("td", {}, Math.round(Number(w.share) * 100) + "%"),
          el("td", {}, num(w.devices)), el("td", {}, num(w.needed)), el("td", {}, num(w.commanded)),
          el("td", {className: "succeeded"}, num(w.succeeded)), el("td", {className: "failed"}, num(w.failed)),
          el("td", {className: "progress"}, ...(total
            ? [el("progress", {max: total, value: Math.min(done, total)}), el("span", {}, done + "/" + total)]
            : ["-"])));
      });
      return el("article", {className: "rollout", dataset: {rollout: ro.id, state: state}},
        el("h3", {}, "#" + ro.id + " " + (ro.product || "(release not indexed yet)") + " \u2192 " + (ro.to_version || "?")
          + " ", badge(state, kind)),
        el("code", {className: "hash", title: ro.header_hash}, ro.header_hash),
        ...rolloutNotes(ro, state),
        el("table", {className: "waves"},
          el("thead", {}, el("tr", {}, ["wave", "share", "devices", "needing it", "commanded", "succeeded", "failed",
            "progress"].map((h) => el("th", {}, h)))),
          el("tbody", {}, waves)));
    });
    const note = r.available ? "no rollouts" : "no rollouts (this tracker does not run rollouts yet)";
    document.getElementById("rollouts").replaceChildren(...(items.length ? items
      : [el("p", {className: "empty"}, note)]));
  }

  function fleetPage() {
    poll(async () => {
      const [overview, chains, rollouts] = await Promise.all([
        getJSON("/v1/dashboard/overview"), getJSON("/v1/dashboard/releases"), getJSON("/v1/dashboard/rollouts")]);
      renderOverview(overview);
      renderChains(chains);
      renderRollouts(rollouts);
    });
  }

  // ------------------------------------------------------------------ the device page

  function pairs(id, entries) {
    document.getElementById(id).replaceChildren(...entries.flatMap(([k, v, cls]) =>
      [el("dt", {}, k), el("dd", {className: cls || null, dataset: {field: k}}, v === null || v === undefined ? "-" : v)]));
  }

  function renderDevice(d) {
    document.getElementById("missing").hidden = true;
    const a = d.assessment;
    const verdict = !a ? badge("not assessed", "muted") : [a.outdated ? badge("outdated", "warn") : badge("up to date", "ok"),
      a.at_risk ? badge("at risk", "bad") : null, a.unknown ? badge("unknown version", "muted") : null];
    pairs("summary", [["verdict", el("span", {}, verdict)], ["readiness", d.readiness], ["hardware", d.hardware],
      ["location", d.location], ["labels", el("span", {}, labelBadges(d.labels))],
      ["address", el("code", {}, d.address)], ["heartbeats", String(d.heartbeats)],
      ["first seen", when(d.first_seen)], ["last seen", when(d.last_seen)],
      ["add-on boards", Object.entries(d.addons || {}).map(([b, ps]) => b + ": " + ps.join(", ")).join("; ") || "-"]]);
    const comps = Object.entries(d.components || {}).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0));
    document.querySelector("#components tbody").replaceChildren(...comps.map(([product, c]) =>
      el("tr", {dataset: {product: product}}, el("td", {}, product), el("td", {}, c.vendor),
        el("td", {className: "version"}, c.version), el("td", {className: "slot"}, c.slot || "-"))));
    const last = d.last_result;
    pairs("last-result", !last ? [["result", "none reported"]] : [
      ["result", last.ok ? badge("ok", "ok") : badge("failed", "bad")],
      ["error code", last.code, "error-code"], ["message", last.message], ["component", last.component],
      ["version", last.version], ["at", last.at === null || last.at === undefined ? null : when(last.at)]]);
    const reasons = a ? (a.reasons || []) : [];
    const findings = a ? (a.findings || []) : [];
    document.getElementById("assessment").replaceChildren(
      el("p", {}, a ? "at ledger block " + a.block : "not assessed yet"),
      el("ul", {}, reasons.map((r) => el("li", {}, typeof r === "string" ? r : JSON.stringify(r)))),
      el("ul", {}, findings.map((f) => el("li", {}, badge(f.kind, "muted"), " " + f.product + " " + f.installed +
        (f.newest ? " (newest " + f.newest + ")" : "") + (f.detail ? ": " + f.detail : "")))));
    document.querySelector("#needs tbody").replaceChildren(...(d.update_needed || []).map((n) => el("tr", {},
      el("td", {}, n.product), el("td", {}, n.from_version), el("td", {}, n.to_version),
      el("td", {}, el("code", {title: n.header_hash}, String(n.header_hash).slice(0, 12) + "\u2026")),
      el("td", {}, n.cause), el("td", {}, when(n.since)))));
    document.querySelector("#concerned tbody").replaceChildren(...(d.concerned || []).map((e) => el("tr",
      {dataset: {release: e.header_hash}}, el("td", {}, e.product), el("td", {}, e.version),
      el("td", {}, el("code", {title: e.header_hash}, String(e.header_hash).slice(0, 12) + "\u2026")),
      el("td", {}, el("code", {className: "server"}, e.server)), el("td", {}, e.reported_version),
      el("td", {className: "state"}, badge(String(e.state).replace(/_/g, " "), e.state === "updated" ? "ok" : "warn")),
      el("td", {}, when(e.at)))));
    renderHistory(d.history || {entries: [], rollouts: []});
    document.querySelector("#log tbody").replaceChildren(...(d.log || []).map((e) => el("tr", {dataset: {kind: e.kind}},
      el("td", {}, String(e.id)), el("td", {}, when(e.at)), el("td", {className: "kind"}, e.kind),
      el("td", {}, el("code", {className: "detail"}, JSON.stringify(e.detail))))));
  }

  const EVENT_KIND = {installed: "ok", trial_confirmed: "ok", failed: "bad", rolled_back: "bad",
    results_refused: "bad", decommissioned: "bad", command_expired: "warn", update_needed: "warn",
    unknown_version: "warn", heartbeats: "muted"};

  function renderHistory(h) {
    const dash = (v) => (v === null || v === undefined ? "-" : String(v));
    text("history-note", (h.complete ? "whole history" : "newest entries (older ones pruned or not read)") +
      ", newest first; downloads are in the firmware server's log (fwledger server downloads --device ID)");
    document.querySelector("#rollout-standing tbody").replaceChildren(...(h.rollouts || []).map((r) =>
      el("tr", {dataset: {rollout: r.rollout}}, el("td", {}, "#" + r.rollout + " (" + r.rollout_state + ")"),
        el("td", {}, r.product), el("td", {}, r.to_version), el("td", {}, String(r.wave)),
        el("td", {className: "state"}, r.state), el("td", {}, el("code", {className: "error-code"}, dash(r.code))))));
    const rows = (h.entries || []).map((e) => el("tr", {dataset: {event: e.event}},
      el("td", {}, when(e.at) + (e.until && e.until !== e.at ? " – " + when(e.until) : "")),
      el("td", {}, badge(e.event.replace(/_/g, " "), EVENT_KIND[e.event] || "muted")),
      el("td", {}, dash(e.product)), el("td", {}, dash(e.from_version)), el("td", {}, dash(e.to_version)),
      el("td", {}, e.rollout === null || e.rollout === undefined ? "-" : "#" + e.rollout),
      el("td", {}, el("code", {className: "error-code"}, dash(e.code))),
      el("td", {className: "what"}, e.detail)));
    document.querySelector("#history tbody").replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", {colspan: 8, className: "empty"}, "no history yet"))]));
  }

  function devicePage() {
    const prefix = "/dashboard/devices/";
    let id = location.pathname.startsWith(prefix) ? location.pathname.slice(prefix.length) : "";
    try { id = decodeURIComponent(id); } catch (e) { /* keep it raw */ }
    text("device-id", id);
    document.title = "fwledger device " + id;
    poll(async () => {
      try {
        renderDevice(await getJSON("/v1/dashboard/devices/" + encodeURIComponent(id)));
      } catch (err) {
        if (err.status !== 404) throw err;
        const missing = document.getElementById("missing");
        missing.textContent = "No device " + id + " in this tracker's inventory.";
        missing.hidden = false;
      }
    });
  }

  // ------------------------------------------------------------------ the login page

  // The token arrives in the address's fragment (never sent to a server, never in a Referer):
  // it goes into the form, leaves the address bar and the history, and the form is posted.
  function loginPage() {
    const form = document.getElementById("login");
    const params = new URLSearchParams(location.search);
    if (params.get("next")) form.elements.next.value = params.get("next");
    document.getElementById("login-failed").hidden = !params.get("failed");
    const token = location.hash.slice(1).trim();
    if (!token) return;
    history.replaceState(null, "", location.pathname + location.search);
    form.elements.token.value = token;
    form.submit();
  }

  if (body.dataset.page === "fleet") fleetPage();
  else if (body.dataset.page === "device") devicePage();
  else if (body.dataset.page === "login") loginPage();
})();
