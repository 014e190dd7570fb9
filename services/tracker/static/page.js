// The jobs page: the org's jobs with live progress, a job's failed lines and activity, and the
// actions its state allows. No secret is in the page: the API key is typed in, kept in this
// tab's sessionStorage and sent as an Authorization header to this origin only (the tracker
// checks it and forwards the request to the api). Every value from a response is put into the
// page as text, never as markup.
"use strict";

const cfg = JSON.parse(document.getElementById("config").textContent);
const KEY = "woosync.apiKey";
const $ = (id) => document.getElementById(id);
const streams = new Map(); // job_id -> AbortController of its progress stream
const rows = new Map(); // job_id -> the job as last seen (summary, then status events)
const view = { cursors: [null], page: 0, selected: null, linesCursor: null, activityCursor: null };

function apiKey() { return sessionStorage.getItem(KEY); }

function say(text, isError) {
  $("message").textContent = text || "";
  $("message").className = isError ? "error" : "";
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }

async function call(path, options) {
  const init = Object.assign({ cache: "no-store" }, options || {});
  init.headers = { Authorization: "Bearer " + apiKey() };
  let response;
  try {
    response = await fetch(cfg.api + path, init);
  } catch (e) {
    return { status: 0, ok: false, body: { error: { message: "the tracker is unreachable" } } };
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) signOut("The API key was refused.");
  return { status: response.status, ok: response.ok, body };
}

function problem(result) {
  return result.body && result.body.error ? result.body.error.message : "HTTP " + result.status;
}

// --- progress ---------------------------------------------------------------------------------

// As the status computes them (shared/jobs.py); a summary from the list has no percent, and
// until every page is read the store's own total is the better denominator.
function totalOf(job) {
  return job.fetch_complete ? job.total : Math.max(job.total, job.store_total || 0);
}

function percentOf(job) {
  if (typeof job.percent === "number") return job.percent;
  const total = totalOf(job);
  if (total === 0 && job.fetch_complete) return 100;
  return total ? Math.round((10000 * (job.done + job.failed)) / total) / 100 : 0;
}

function progressCell(job) {
  const cell = el("td");
  const bar = el("div", null, "bar");
  const fill = el("div", null, "fill " + job.state);
  fill.style.width = percentOf(job) + "%";
  bar.append(fill);
  const counts = el("div",
    percentOf(job) + "% \u2014 " + job.done + " done, " + job.failed + " failed of " + totalOf(job)
    + (job.conflicts ? ", " + job.conflicts + " conflicts" : ""), "counts");
  cell.append(bar, counts);
  return cell;
}

function rateText(job) {
  return job.rate_per_s === null || job.rate_per_s === undefined ? "-" : job.rate_per_s + "/s";
}

function etaText(job) {
  return job.eta_s === null || job.eta_s === undefined ? "-" : job.eta_s + " s";
}

// Follow a job's SSE stream with fetch (EventSource cannot send a header). Reconnects with
// Last-Event-ID when the stream drops; stops at "complete", an "error" event or a refusal.
async function follow(jobId, onStatus) {
  if (streams.has(jobId)) return;
  const controller = new AbortController();
  streams.set(jobId, controller);
  let lastId = null;
  try {
    while (!controller.signal.aborted) {
      const headers = { Authorization: "Bearer " + apiKey(), Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      let response;
      try {
        response = await fetch(cfg.progress + encodeURIComponent(jobId),
          { headers, cache: "no-store", signal: controller.signal });
      } catch (e) {
        if (controller.signal.aborted) return;
        await pause(2000);
        continue;
      }
      if (response.status === 401) { signOut("The API key was refused."); return; }
      if (!response.ok) { await pause(5000); continue; }
      const ended = await readEvents(response.body, (event) => {
        if (event.id) lastId = event.id;
        if (event.type === "progress" || event.type === "complete") onStatus(JSON.parse(event.data));
        if (event.type === "error") { say(JSON.parse(event.data).error.message, true); return true; }
        return event.type === "complete";
      }).catch(() => false);
      if (ended) return;
      await pause(2000);
    }
  } finally {
    if (streams.get(jobId) === controller) streams.delete(jobId);
  }
}

// Parse text/event-stream; `handle` returns true to stop. True when stopped, false at the end.
async function readEvents(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { type: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value;
    // A line ends at CR, LF or CRLF; a CR at the very end may be half of a CRLF: wait for more.
    const lines = buffer.split(/\r\n|\n|\r(?!$)/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) {
          const stop = handle({ type: event.type, data: event.data.join("\n"), id: event.id });
          if (stop) { reader.cancel().catch(() => {}); return true; }
        }
        event = { type: "message", data: [], id: null };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event.type = text;
      else if (field === "data") event.data.push(text);
      else if (field === "id") event.id = text;
    }
  }
}

function pause(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function stopStreams() {
  for (const controller of streams.values()) controller.abort();
  streams.clear();
}

// --- actions ----------------------------------------------------------------------------------

// Which buttons a job gets: cfg.actions is the lifecycle's table of the states each action
// applies in; retry and replay are offered only when there is something for them to do.
function actionsFor(job) {
  return Object.keys(cfg.actions).filter((action) => {
    if (!cfg.actions[action].includes(job.state)) return false;
    if (action === "replay") return job.failed > 0;
    if (action === "retry") return job.failed > 0 || (!job.fetch_complete && cfg.refetch.includes(job.state));
    return true;
  });
}

function actionButtons(job) {
  const box = el("div", null, "actions");
  for (const action of actionsFor(job)) {
    const button = el("button", action);
    button.type = "button";
    button.dataset.action = action;
    button.addEventListener("click", (e) => { e.stopPropagation(); act(job.job_id, action); });
    box.append(button);
  }
  return box;
}

async function act(jobId, action) {
  if (action === "cancel" && !confirm("Cancel this job? Its open lines are not written.")) return;
  say(action + "\u2026");
  const result = await call("/jobs/" + encodeURIComponent(jobId) + "/" + action, { method: "POST" });
  if (result.ok) {
    const b = result.body;
    const extra = ["requeued", "replayed", "customers", "crawl_stopped"]
      .filter((k) => b[k] !== undefined).map((k) => k + " " + b[k]).join(", ");
    say(action + ": the job is " + b.state + (extra ? " (" + extra + ")" : ""));
  } else {
    say(action + " refused (" + result.status + "): " + problem(result), true);
  }
  await loadJobs();
  if (view.selected === jobId) await openJob(jobId);
}

// --- the list ---------------------------------------------------------------------------------

// The cells are replaced on each event but the buttons' cell stays, its buttons replaced only
// when the job's actions change: a button replaced between press and release loses the click.
function renderRow(tr, job) {
  const cells = [
    el("td", when(job.created_at)),
    el("td", job.store_url || ""),
    el("td").appendChild(el("span", job.state, "state " + job.state)).parentNode,
    progressCell(job),
    el("td", rateText(job)),
    el("td", etaText(job)),
  ];
  if (!tr.cells.length) tr.append(...cells, el("td"));
  else cells.forEach((cell, i) => tr.replaceChild(cell, tr.cells[i]));
  setButtons(tr.cells[6], job);
  tr.dataset.state = job.state;
}

function setButtons(container, job) {
  const wanted = actionsFor(job).join(" ");
  if (container.dataset.actions === wanted && container.dataset.job === job.job_id) return;
  container.dataset.actions = wanted;
  container.dataset.job = job.job_id;
  container.replaceChildren(actionButtons(job));
}

function update(jobId, status) {
  const job = Object.assign(rows.get(jobId) || {}, status);
  rows.set(jobId, job);
  const tr = document.querySelector('tr[data-job="' + CSS.escape(jobId) + '"]');
  if (tr) renderRow(tr, job);
  if (view.selected === jobId) renderDetailHead(job);
  if (cfg.live.includes(job.state)) follow(jobId, (s) => update(jobId, s));
}

async function loadJobs() {
  const params = new URLSearchParams({ limit: String(cfg.page_size) });
  const state = $("state").value;
  if (state) params.set("state", state);
  const cursor = view.cursors[view.page];
  if (cursor) params.set("cursor", cursor);
  const result = await call("/jobs?" + params);
  if (!result.ok) { if (result.status !== 401) say(problem(result), true); return; }
  stopStreams();
  rows.clear();
  const body = $("jobs").tBodies[0];
  body.replaceChildren();
  for (const job of result.body.items) {
    const tr = el("tr", null, "job");
    tr.dataset.job = job.job_id;
    if (job.job_id === view.selected) tr.classList.add("selected");
    tr.addEventListener("click", () => openJob(job.job_id));
    body.append(tr);
    update(job.job_id, job);
  }
  $("empty").hidden = result.body.items.length > 0;
  view.cursors[view.page + 1] = result.body.next_cursor;
  $("older").disabled = !result.body.next_cursor;
  $("newer").disabled = view.page === 0;
}

// --- one job ----------------------------------------------------------------------------------

function renderDetailHead(job) {
  $("detail-id").textContent = job.job_id;
  $("detail-summary").replaceChildren(
    el("span", job.state, "state " + job.state),
    document.createTextNode(" " + percentOf(job) + "% \u2014 " + job.done + " done, "
      + job.failed + " failed of " + totalOf(job) + (job.store_url ? " \u2014 " + job.store_url : "")),
  );
  $("detail-error").textContent = job.last_error || "";
  setButtons($("detail-actions"), job);
}

async function openJob(jobId) {
  view.selected = jobId;
  for (const tr of document.querySelectorAll("tr.job")) {
    tr.classList.toggle("selected", tr.dataset.job === jobId);
  }
  const status = await call("/jobs/" + encodeURIComponent(jobId));
  if (!status.ok) { say(problem(status), true); return; }
  $("detail").hidden = false;
  renderDetailHead(Object.assign(rows.get(jobId) || {}, status.body));
  // The tables are replaced once their first pages arrive, never emptied while waiting: a
  // second open of the same job (a click during an action's refresh) shows no blank tables.
  view.linesCursor = view.activityCursor = null;
  await Promise.all([moreLines(jobId, true), moreActivity(jobId, true)]);
}

async function moreLines(jobId, first = false) {
  // The lines route answers failed lines unless told another state.
  const params = new URLSearchParams({ limit: String(cfg.page_size) });
  if (view.linesCursor) params.set("cursor", view.linesCursor);
  const result = await call("/jobs/" + encodeURIComponent(jobId) + "/lines?" + params);
  if (!result.ok) { say(problem(result), true); return; }
  const rowsOf = result.body.items.map((line) => {
    const tr = el("tr", null, "line");
    tr.append(el("td", line.woo_id), el("td", line.attempts), el("td", line.retryable ? "yes" : "no"),
      el("td", line.last_error || "", "error"), el("td", when(line.updated_at)));
    return tr;
  });
  if (first) $("lines").tBodies[0].replaceChildren(...rowsOf);
  else $("lines").tBodies[0].append(...rowsOf);
  view.linesCursor = result.body.next_cursor;
  $("lines-more").hidden = !view.linesCursor;
  $("lines-empty").hidden = $("lines").tBodies[0].rows.length > 0;
}

async function moreActivity(jobId, first = false) {
  const params = new URLSearchParams({ limit: String(cfg.page_size) });
  if (view.activityCursor) params.set("cursor", view.activityCursor);
  const result = await call("/jobs/" + encodeURIComponent(jobId) + "/activity?" + params);
  if (!result.ok) { say(problem(result), true); return; }
  const items = result.body.items.map((entry) => {
    const li = el("li");
    li.append(el("span", when(entry.at) + " "), el("strong", entry.event),
      el("span", entry.by ? " by " + entry.by + " " : " "), el("code", JSON.stringify(entry.details)));
    return li;
  });
  if (first) $("activity").replaceChildren(...items);
  else $("activity").append(...items);
  view.activityCursor = result.body.next_cursor;
  $("activity-more").hidden = !view.activityCursor;
}

// --- the key ----------------------------------------------------------------------------------

function signOut(text) {
  sessionStorage.removeItem(KEY);
  stopStreams();
  $("main").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  say(text || "", Boolean(text));
}

function signedIn() {
  $("login").hidden = true;
  $("forget").hidden = false;
  $("main").hidden = false;
  view.cursors = [null];
  view.page = 0;
  loadJobs();
}

function start() {
  for (const state of cfg.states) $("state").append(el("option", state));
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    say("");
    signedIn();
  });
  $("forget").addEventListener("click", () => signOut(""));
  $("state").addEventListener("change", () => { view.cursors = [null]; view.page = 0; loadJobs(); });
  $("refresh").addEventListener("click", () => loadJobs());
  $("older").addEventListener("click", () => { view.page += 1; loadJobs(); });
  $("newer").addEventListener("click", () => { view.page = Math.max(view.page - 1, 0); loadJobs(); });
  $("lines-more").addEventListener("click", () => moreLines(view.selected));
  $("activity-more").addEventListener("click", () => moreActivity(view.selected));
  if (apiKey()) signedIn(); else signOut("");
}

start();
