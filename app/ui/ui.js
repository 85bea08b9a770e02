"use strict";
/*
 * The live page of one state, GET /ui/{tenant}/{fsa}: the state as a tree, updated as changes
 * arrive on the change feed; each change attributed and its diff a click away; a key's history;
 * time travel; slices and their summaries. Everything comes from the service's API, with the key
 * entered in the page (kept in sessionStorage, sent as Authorization: Bearer).
 *
 * The feed is read with fetch() rather than EventSource, which cannot send the key: the stream is
 * parsed here, and resumed with Last-Event-ID (the last version seen) after a break.
 *
 * Text from the state is data, never markup: it reaches the page through textContent and
 * attributes only (the page's Content Security Policy forbids HTML sinks altogether).
 */

const KEY_STORAGE = "sms-api-key";
const RECENT_CHANGES = 50; // changes read from the log when the page opens
const MAX_FEED_ITEMS = 200; // changes the list keeps
const RETRY_MS = 2000; // before reconnecting the feed, until the service says otherwise
const HISTORY_LIMIT = 100;
const PREVIEW_CHARS = 400; // of a value shown in one line
const OPEN_DEPTH = 1; // tree levels shown open until the user folds or unfolds them

const [tenant, fsa] = location.pathname.split("/").slice(2, 4).map(decodeURIComponent);
const statePath = `/state/${encodeURIComponent(tenant)}/${encodeURIComponent(fsa)}`;
const $ = (id) => document.getElementById(id);
const keyOrder = new Intl.Collator(undefined, { numeric: true }).compare; // T2 before T10

const view = {
  latest: 0, // the newest version known
  shown: null, // the version shown, or null: the latest, following changes
  fresh: new Set(), // paths changed since the tree was last drawn
  open: new Map(), // node id -> unfolded, where the user chose
  slice: null, // {spec, k} of the slice shown
  inspecting: null, // {kind: "change", version} or {kind: "history", path}
  inspection: 0, // counts inspector requests: only the last one's answer is shown
};

// ------------------------------------------------------------------ exact numbers

/** A number whose JSON text a double cannot hold exactly (a 64-bit id, 1.50): shown as sent. */
class ExactNumber {
  constructor(text) {
    this.text = text;
  }
}

/** JSON.parse that keeps numbers exact: the service sends exact decimals. */
function parseJson(text) {
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && context?.source !== undefined && String(value) !== context.source
      ? new ExactNumber(context.source)
      : value,
  );
}

function kind(value) {
  if (value === null) return "null";
  if (value instanceof ExactNumber) return "number";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

function jsonText(value) {
  switch (kind(value)) {
    case "array":
      return `[${value.map(jsonText).join(", ")}]`;
    case "object":
      return `{${Object.entries(value)
        .map(([key, item]) => `${JSON.stringify(key)}: ${jsonText(item)}`)
        .join(", ")}}`;
    default:
      return value instanceof ExactNumber ? value.text : JSON.stringify(value);
  }
}

function preview(value) {
  const text = jsonText(value);
  return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text;
}

// ------------------------------------------------------------------ paths

/** The dotted path of keys, as the API reads it (\. and \\ escaped); null if a key is empty. */
function formatPath(keys) {
  if (keys.some((key) => key === "")) return null;
  return keys.map((key) => key.replaceAll("\\", "\\\\").replaceAll(".", "\\.")).join(".");
}

function parsePath(path) {
  const keys = [""];
  for (let i = 0; i < path.length; i++) {
    if (path[i] === "\\") keys[keys.length - 1] += path[++i] ?? "";
    else if (path[i] === ".") keys.push("");
    else keys[keys.length - 1] += path[i];
  }
  return keys;
}

/** Whether a change of `changed` changes what `path` holds (one contains the other). */
function touches(changed, path) {
  const [a, b] = [parsePath(changed), parsePath(path)];
  return a.slice(0, b.length).every((key, i) => key === b[i]);
}

// ------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail ?? `the service answered ${status}`);
    this.status = status;
    this.problem = problem;
  }

  get title() {
    if (this.status === 404) return "Not found (or the key does not name this tenant)";
    return this.problem?.title ?? "Request failed";
  }
}

function authorized(headers = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

/** fetch with the key; a 401 asks for a key and tries again. */
async function request(url, init = {}) {
  for (;;) {
    const response = await fetch(url, { ...init, headers: authorized(init.headers) });
    if (response.status !== 401) return response;
    await askForKey(await problemOf(response));
  }
}

async function problemOf(response) {
  try {
    return parseJson(await response.text());
  } catch {
    return null;
  }
}

/** GET a route of this state; its JSON, or an ApiError. */
async function api(route, init = {}) {
  const response = await request(statePath + route, init);
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  return parseJson(await response.text());
}

/** {version, content} of GET /state's answer, in the default contract or SMS_COMPAT=v2's. */
function stateOf(body) {
  if (!("lineage_version" in body)) return { version: Number(body.version), content: body.state };
  const { lineage_version: version, ...content } = body; // v2: the members themselves
  return { version: Number(version), content };
}

// ------------------------------------------------------------------ the key

const keyDialog = $("key-dialog");
let keyWanted = null; // what requests waiting for a key wait on
let keyGiven = null;

function askForKey(problem) {
  if (!keyWanted) {
    keyWanted = new Promise((resolve) => {
      keyGiven = resolve;
    });
    const refused = sessionStorage.getItem(KEY_STORAGE) !== null;
    $("key-reason").textContent = refused
      ? `The key was refused (${problem?.detail ?? "unauthorized"}). Enter another.`
      : "This service needs an API key to read this state.";
    setStatus("key", "needs a key");
    openKeyDialog();
  }
  return keyWanted;
}

function openKeyDialog() {
  $("key-input").value = "";
  if (!keyDialog.open) keyDialog.showModal();
}

$("key-form").addEventListener("submit", () => {
  const key = $("key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  if (keyGiven) {
    keyGiven();
    keyWanted = keyGiven = null;
  } else {
    start(); // a key changed by choice: read everything with it
  }
});

$("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  keyDialog.close();
  if (!keyWanted) start();
});

$("key-button").addEventListener("click", () => {
  $("key-reason").textContent = "The key this page sends (in this tab only).";
  openKeyDialog();
});

keyDialog.addEventListener("cancel", () => {
  if (keyWanted) showNotice("A key is needed to read this state: click “API key”.");
});

// ------------------------------------------------------------------ small helpers

function el(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function timeEl(iso) {
  const time = el("time", "time");
  const when = new Date(iso);
  time.dateTime = iso;
  time.title = iso;
  const today = when.toDateString() === new Date().toDateString();
  time.textContent = today ? when.toLocaleTimeString() : when.toLocaleString();
  return time;
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

function showNotice(text) {
  const notice = $("notice");
  notice.textContent = text;
  notice.hidden = false;
}

function clearNotice() {
  $("notice").hidden = true;
}

function describe(error) {
  return error instanceof ApiError ? `${error.title}: ${error.message}` : String(error.message ?? error);
}

/**
 * A task that, called while it runs, runs once more afterwards (never twice at once). Its promise
 * tells whether it succeeded; a failure is shown in the notice.
 */
function coalesced(task) {
  let running = null;
  let again = false;
  return () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await task();
        } while (again);
        return true;
      } catch (error) {
        showNotice(describe(error));
        return false;
      } finally {
        running = null;
      }
    })();
    return running;
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ the tree

/**
 * One node of a JSON tree. `keys` are the object keys from the root (null below an array: paths
 * do not address array elements); `id` names the node for its folding.
 */
function treeNode(label, value, keys, id, depth, marks) {
  const path = keys && formatPath(keys);
  const name = path
    ? el("button", "key", label)
    : el("span", typeof label === "number" ? "key index" : "key", String(label));
  if (path) {
    name.type = "button";
    name.title = `History of ${path}`;
    name.addEventListener("click", (event) => {
      event.preventDefault(); // not a fold of the branch
      showHistory(path);
    });
  }
  const container = kind(value) === "object" || kind(value) === "array";
  const node = el(container ? "details" : "div", container ? "node branch" : "node leaf");
  if (path) node.dataset.path = path;
  if (path && marks.changed.has(path)) node.classList.add("changed");
  else if (path && marks.within.has(path)) node.classList.add("changed-within");
  if (!container) {
    node.append(name, el("span", `value ${kind(value)}`, preview(value)));
    return node;
  }
  const size = Array.isArray(value) ? value.length : Object.keys(value).length;
  const summary = el("summary");
  summary.append(name, el("span", "count", Array.isArray(value) ? `[${size}]` : `{${size}}`));
  node.append(summary);
  let filled = false;
  const fill = () => {
    if (filled) return;
    filled = true; // children are drawn when first unfolded: a large state stays quick to draw
    const children = el("div", "children");
    const entries = Array.isArray(value) ? value.map((item, i) => [i, item]) : sortedEntries(value);
    for (const [key, item] of entries) {
      const childKeys = keys && !Array.isArray(value) ? [...keys, key] : null;
      children.append(treeNode(key, item, childKeys, `${id}/${JSON.stringify(key)}`, depth + 1, marks));
    }
    if (!entries.length) children.append(el("div", "empty-branch", Array.isArray(value) ? "empty array" : "empty object"));
    node.append(children);
  };
  node.open = view.open.get(id) ?? depth < OPEN_DEPTH;
  if (node.open) fill();
  node.addEventListener("toggle", () => {
    view.open.set(id, node.open);
    if (node.open) fill();
  });
  return node;
}

function sortedEntries(object) {
  return Object.entries(object).sort(([a], [b]) => keyOrder(a, b));
}

/** The paths changed, and the paths of the branches holding them. */
function changeMarks(paths) {
  const within = new Set();
  for (const path of paths) {
    const keys = parsePath(path);
    for (let n = 1; n < keys.length; n++) within.add(formatPath(keys.slice(0, n)));
  }
  return { changed: new Set(paths), within };
}

function drawTree(target, content, scope, marks, emptyText) {
  const entries = sortedEntries(content ?? {});
  if (!entries.length) {
    target.replaceChildren(el("p", "empty", emptyText));
    return;
  }
  target.replaceChildren(
    ...entries.map(([key, value]) => treeNode(key, value, [key], `${scope}/${JSON.stringify(key)}`, 0, marks)),
  );
  markSelected();
}

const refreshTree = coalesced(async () => {
  const at = view.shown;
  const changed = view.fresh;
  view.fresh = new Set();
  // the latest revalidates its ETag; an old version never changes and may come from the cache
  const body = await api(at === null ? "" : `?version=${at}`, at === null ? { cache: "no-cache" } : {});
  if (at !== view.shown) return; // the slider moved on: the next round reads where it is now
  const { version, content } = stateOf(body);
  if (at === null) noteLatest(version);
  const empty = at === null ? "The state is empty." : `The state was empty at version ${at}.`;
  drawTree($("tree"), content, "state", changeMarks(at === null ? changed : []), empty);
  clearNotice();
});

// ------------------------------------------------------------------ time travel

const slider = $("version-slider");

function noteLatest(version) {
  if (version <= view.latest) return;
  view.latest = version;
  $("current-version").textContent = String(version);
  slider.max = String(version);
  if (view.shown === null) slider.value = String(version);
  showTravel();
}

function showTravel() {
  const past = view.shown !== null;
  $("version-label").textContent = past ? `v${view.shown} of ${view.latest}` : `v${view.latest} · latest`;
  $("latest-button").disabled = !past;
  const banner = $("past-banner");
  banner.hidden = !past;
  banner.textContent = past ? `The state as it was at version ${view.shown}. New changes still arrive in the feed.` : "";
  $("tree").classList.toggle("past", past);
}

function travelTo(version) {
  view.shown = version >= view.latest ? null : version;
  slider.value = String(Math.min(version, view.latest));
  showTravel();
  refreshTree();
}

slider.addEventListener("input", () => travelTo(Number(slider.value)));
$("latest-button").addEventListener("click", () => travelTo(view.latest));

// ------------------------------------------------------------------ the change feed

function changeItem(change, fresh) {
  const item = el("li", fresh ? "change fresh" : "change");
  item.dataset.version = String(change.version);
  const button = el("button", "change-button");
  button.type = "button";
  const head = el("div", "change-head");
  head.append(el("span", "ver", `v${change.version}`), el("span", "actor", change.actor ?? "anonymous"));
  if (change.lineage_id) head.append(el("span", "lineage", change.lineage_id));
  head.append(timeEl(change.created_at));
  const paths = change.paths ?? [];
  const more = paths.length > 3 ? ` +${paths.length - 3} more` : "";
  button.append(head, el("div", "paths", paths.slice(0, 3).join("  ") + more));
  button.addEventListener("click", () => showChange(change));
  item.append(button);
  return item;
}

function addChange(change, fresh) {
  const feed = $("feed");
  feed.querySelector(".empty")?.remove();
  feed.prepend(changeItem(change, fresh));
  while (feed.children.length > MAX_FEED_ITEMS) feed.lastElementChild.remove();
}

async function loadRecentChanges(latest) {
  const feed = $("feed");
  feed.replaceChildren();
  if (latest === 0) {
    feed.append(el("li", "empty", "No changes yet."));
    return;
  }
  const since = Math.max(0, latest - RECENT_CHANGES);
  const body = await api(`/deltas?since=${since}&limit=${latest - since}`);
  for (const change of body.deltas) addChange(change, false);
}

function onChange(change) {
  addChange(change, true);
  noteLatest(change.version);
  for (const path of change.paths ?? []) view.fresh.add(path);
  if (view.shown === null) refreshTree();
  if (view.slice) readSlice();
  const inspecting = view.inspecting;
  if (inspecting?.kind === "history" && (change.paths ?? []).some((path) => touches(path, inspecting.path))) {
    showHistory(inspecting.path, true);
  }
}

/** The events of a text/event-stream body, as the SSE spec parses them. */
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "";
  let data = [];
  let id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // a trailing "\r" may be the first half of "\r\n": keep it until what follows arrives
      const end = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
      const lines = buffer.slice(0, end).split(/\r\n|\r|\n/);
      buffer = lines.pop() + buffer.slice(end);
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield { type: type || "message", data: data.join("\n"), id };
          type = "";
          data = [];
          continue;
        }
        const colon = line.indexOf(":");
        if (colon === 0) continue; // a comment: the keep-alive
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = text;
        else if (field === "data") data.push(text);
        else if (field === "id" && !text.includes("\0")) id = text;
        else if (field === "retry" && /^\d+$/.test(text)) yield { type: "retry", retry: Number(text) };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

let following = null; // the AbortController of the feed being read

/** Reads the state's feed after `version`, live, reconnecting after a break where it left off. */
async function follow(version) {
  following?.abort();
  const control = new AbortController();
  following = control;
  let lastEventId = String(version);
  let retryMs = RETRY_MS;
  while (!control.signal.aborted) {
    setStatus("connecting", "connecting");
    try {
      const response = await request(`${statePath}/events`, {
        headers: { Accept: "text/event-stream", "Last-Event-ID": lastEventId },
        signal: control.signal,
      });
      if (!response.ok) throw new ApiError(response.status, await problemOf(response));
      setStatus("live", "live");
      for await (const event of serverSentEvents(response.body)) {
        if (event.type === "retry") retryMs = event.retry;
        else if (event.type === "change") {
          lastEventId = event.id;
          onChange(parseJson(event.data));
        }
        // `shutdown`: the service stops; the stream ends and is resumed from lastEventId
      }
    } catch (error) {
      if (control.signal.aborted) return;
      if (error instanceof ApiError && error.problem?.type?.endsWith(":invalid-event-id")) {
        start(); // the state is behind what this page saw (restored elsewhere): read it afresh
        return;
      }
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
        setStatus("stopped", "stopped");
        showNotice(describe(error));
        return;
      }
    }
    if (control.signal.aborted) return;
    setStatus("reconnecting", "reconnecting");
    await sleep(retryMs);
  }
}

// ------------------------------------------------------------------ the inspector

/** Begins showing `title`; keeps what is shown until the answer comes when `again` (a refresh). */
function inspect(title, again) {
  const token = ++view.inspection;
  $("inspector-title").textContent = title;
  const target = $("inspector");
  if (!again) target.replaceChildren(el("p", "empty", "Reading…"));
  // draws only if no later inspection began meanwhile
  return (...nodes) => {
    if (token === view.inspection) target.replaceChildren(...nodes);
  };
}

function markSelected() {
  for (const node of document.querySelectorAll(".selected")) node.classList.remove("selected");
  const inspecting = view.inspecting;
  if (inspecting?.kind === "history") {
    for (const node of document.querySelectorAll("#tree .node[data-path], #slice .node[data-path]")) {
      if (node.dataset.path === inspecting.path) node.classList.add("selected");
    }
  } else if (inspecting?.kind === "change") {
    document.querySelector(`#feed .change[data-version="${inspecting.version}"]`)?.classList.add("selected");
  }
}

function fact(label, value) {
  const row = el("div", "fact");
  row.append(el("span", "fact-label", label), value instanceof Node ? value : el("span", "fact-value", value));
  return row;
}

function opList(ops, pathOf) {
  const list = el("ol", "ops");
  for (const op of ops) {
    const item = el("li");
    item.append(el("span", `op op-${op.op}`, op.op), el("code", "op-path", pathOf(op)));
    if ("from" in op) item.append(el("span", "op-from", `from ${op.from}`));
    if ("value" in op) item.append(el("span", `value ${kind(op.value)}`, preview(op.value)));
    list.append(item);
  }
  if (!ops.length) list.append(el("li", "empty", "nothing"));
  return list;
}

async function showChange(change) {
  view.inspecting = { kind: "change", version: change.version };
  markSelected();
  const draw = inspect(`Change v${change.version}`, false);
  const facts = el("div", "facts");
  facts.append(fact("actor", change.actor ?? "anonymous"), fact("lineage", change.lineage_id ?? "—"));
  if (change.trace_id) facts.append(fact("trace", change.trace_id));
  facts.append(fact("delta id", change.delta_id), fact("at", timeEl(change.created_at)));
  for (const [name, value] of Object.entries(change.meta ?? {})) facts.append(fact(name, preview(value)));
  const travel = el("button", "ghost", `Show the state at v${change.version}`);
  travel.type = "button";
  travel.addEventListener("click", () => travelTo(change.version));
  const parts = [facts, el("h3", "", "Delta"), opList(change.ops ?? [], (op) => formatPath(op.path) ?? "")];
  try {
    const diff = await api(`/diff?from=${change.version - 1}&to=${change.version}`);
    const title = `Diff v${diff.from} → v${diff.to} (RFC 6902)`;
    draw(...parts, el("h3", "", title), opList(diff.patch, (op) => op.path), travel);
  } catch (error) {
    draw(...parts, el("p", "error", describe(error)), travel);
  }
}

async function showHistory(path, again = false) {
  view.inspecting = { kind: "history", path };
  markSelected();
  const draw = inspect(`History of ${path}`, again);
  let body;
  try {
    body = await api(`/history?path=${encodeURIComponent(path)}&limit=${HISTORY_LIMIT}`);
  } catch (error) {
    draw(el("p", "error", describe(error)));
    return;
  }
  const list = el("ol", "history");
  for (const change of body.changes) {
    const button = el("button", "history-button");
    button.type = "button";
    button.title = `Show the state at v${change.version}`;
    button.addEventListener("click", () => travelTo(change.version));
    const head = el("div", "change-head");
    head.append(el("span", "ver", `v${change.version}`), el("span", "actor", change.actor ?? "anonymous"));
    if (change.lineage_id) head.append(el("span", "lineage", change.lineage_id));
    head.append(timeEl(change.created_at));
    const step = el("div", "step");
    if (change.path !== path) step.append(el("code", "op-path", change.path));
    step.append(
      "old" in change ? el("span", `value ${kind(change.old)}`, preview(change.old)) : el("span", "absent", "(none)"),
      el("span", "arrow", "→"),
      "new" in change ? el("span", `value ${kind(change.new)}`, preview(change.new)) : el("span", "absent", "(removed)"),
    );
    button.append(head, step);
    const item = el("li");
    item.append(button);
    list.append(item);
  }
  if (!body.changes.length) list.append(el("li", "empty", "No change to this path."));
  draw(list);
}

// ------------------------------------------------------------------ slices

const readSlice = coalesced(async () => {
  const { spec, k } = view.slice;
  const target = $("slice");
  let body;
  try {
    body = await api(`/slice?slice=${encodeURIComponent(spec)}&k=${k}`);
  } catch (error) {
    target.replaceChildren(el("p", "error", describe(error)));
    return;
  }
  if (spec !== view.slice.spec || k !== view.slice.k) return; // another slice was asked for
  const facts = el("div", "slice-facts");
  facts.append(
    el("span", "ver", `v${body.version}`),
    el("span", "", `${body.total} matched${body.truncated ? `, first ${k} per spec` : ""}`),
  );
  if (body.cached) facts.append(el("span", "badge", "cached summary"));
  const tree = el("div", "tree slice-tree");
  drawTree(tree, body.slice, `slice ${spec}`, changeMarks([]), "Nothing matched.");
  target.replaceChildren(facts, el("h3", "", "Summary"), el("pre", "summary", body.summary), el("h3", "", "Slice"), tree);
  markSelected();
});

$("slice-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const spec = $("slice-spec").value.trim();
  if (!spec) return;
  view.slice = { spec, k: Math.max(1, Number($("slice-k").value) || 5) };
  readSlice();
});

// ------------------------------------------------------------------ start

/** Reads the state and its recent changes, then follows the feed from the version read. */
async function start() {
  following?.abort();
  view.latest = 0;
  view.shown = null;
  view.fresh = new Set();
  $("current-version").textContent = "0";
  slider.max = slider.value = "0";
  showTravel();
  clearNotice();
  if (!(await refreshTree())) {
    setStatus("stopped", "stopped");
    return;
  }
  try {
    await loadRecentChanges(view.latest);
  } catch (error) {
    showNotice(describe(error));
    return;
  }
  follow(view.latest);
}

$("tenant").textContent = tenant;
$("fsa").textContent = fsa;
document.title = `${tenant}/${fsa} · State Memory`;
showTravel();
start();
