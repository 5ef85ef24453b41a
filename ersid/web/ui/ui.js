// Ersid's key browser: folders of keys split at "/", a page of entries at
// a time through /_keys; a value shown as text, pretty JSON or hex, never
// as HTML (only textContent); edits and deletes as compare-and-set with
// the ETag the page loaded; the open folder and key followed live.

const PAGE = 100;
// Past every key that starts with a folder, whatever follows its "/":
// /_keys lists in code point order, and a key has at most 255 bytes.
const PAST = "\u{10FFFF}".repeat(64);
const TOKEN = "ersid-token";

const $ = (id) => document.getElementById(id);
const state = {
  folder: "",
  cursor: null,
  key: null,
  etag: null,
  creating: false,
  bytes: null,
  text: null,
  // Bumped by every navigation: answers for an earlier one are dropped.
  generation: 0,
  token: sessionStorage.getItem(TOKEN),
};
let follower = null;

class Refused extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) {
    askToken(await reason(response));
    throw new Refused("a token is needed");
  }
  return response;
}

async function reason(response) {
  try {
    const body = await response.json();
    return body.message || body.error || response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

const keyPath = (key) => `/${encodeURIComponent(key)}`;

// Folders

async function children(prefix, after) {
  const entries = [];
  let cursor = after;
  let revision = null;
  for (;;) {
    const query = new URLSearchParams({ prefix, limit: String(PAGE) });
    if (cursor !== null) query.set("after", cursor);
    const response = await api(`/_keys?${query}`);
    if (!response.ok) throw new Error(await reason(response));
    const page = await response.json();
    revision ??= page.revision;
    $("filtered").hidden = page.filtered !== true;
    let skipped = false;
    for (const key of page.keys) {
      const slash = key.indexOf("/", prefix.length);
      if (slash === -1) {
        entries.push({ name: key, folder: false });
        cursor = key;
      } else {
        const folder = key.slice(0, slash + 1);
        entries.push({ name: folder, folder: true });
        cursor = folder + PAST;
        skipped = true;
      }
      if (entries.length === PAGE) return { entries, cursor, revision };
      if (skipped) break;
    }
    if (!skipped && page.next === null) return { entries, cursor: null, revision };
  }
}

function entry({ name, folder }) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  // Named from the folder: the prefix up to its last "/" when filtering.
  const base = state.folder.slice(0, state.folder.lastIndexOf("/") + 1);
  button.textContent = name.slice(base.length) || name;
  button.title = name;
  item.className = folder ? "folder" : "key";
  item.dataset.name = name;
  if (name === state.key) item.classList.add("open");
  button.addEventListener(
    "click",
    guard(() => (folder ? openFolder(name) : openKey(name))),
  );
  item.append(button);
  return item;
}

// The folder's next page; or its first pages, at least C{shown} entries
// of them: the revision the first reflects. Null if the page has moved on.
async function showPage(append, shown = 0) {
  const generation = state.generation;
  const folder = state.folder;
  let { entries, cursor, revision } = await children(folder, append ? state.cursor : null);
  while (cursor !== null && entries.length < shown) {
    const next = await children(folder, cursor);
    entries = entries.concat(next.entries);
    cursor = next.cursor;
  }
  if (generation !== state.generation) return null;
  const list = $("entries");
  if (!append) {
    list.replaceChildren();
    if (state.folder) {
      const up = entry({ name: parent(state.folder), folder: true });
      up.firstChild.textContent = "..";
      list.append(up);
    }
  }
  list.append(...entries.map(entry));
  state.cursor = cursor;
  $("more").hidden = cursor === null;
  return revision;
}

function parent(folder) {
  const slash = folder.slice(0, -1).lastIndexOf("/");
  return slash === -1 ? "" : folder.slice(0, slash + 1);
}

function located(path) {
  history.replaceState(null, "", `#${encodeURIComponent(path)}`);
}

async function openFolder(prefix) {
  const generation = ++state.generation;
  state.folder = prefix;
  $("folder").textContent = prefix || "All keys";
  $("path").value = prefix;
  located(prefix);
  if (follower) follower.stop();
  // Followed from the listing's revision: nothing after it is missed.
  const revision = await showPage(false);
  if (generation === state.generation) follow(prefix, revision);
}

// The folder listed again and followed, retried until it can be, unless
// the page has moved on meanwhile.
async function relist(prefix) {
  for (let delay = 1000; ; delay = Math.min(delay * 2, 30000)) {
    const before = state.generation;
    try {
      await openFolder(prefix);
      return;
    } catch (error) {
      if (error instanceof Refused || state.generation !== before + 1) return;
    }
    live(false, "disconnected: reconnecting…");
    const after = state.generation;
    await new Promise((resolve) => setTimeout(resolve, delay));
    if (state.generation !== after) return;
  }
}

// Values

function decoded(bytes) {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    return null;
  }
}

function hex(bytes) {
  const lines = [];
  for (let at = 0; at < Math.min(bytes.length, 4096); at += 16) {
    const row = Array.from(bytes.subarray(at, at + 16), (b) => b.toString(16).padStart(2, "0"));
    lines.push(`${at.toString(16).padStart(8, "0")}  ${row.join(" ")}`);
  }
  if (bytes.length > 4096) lines.push(`… ${bytes.length - 4096} more bytes: download them`);
  return lines.join("\n");
}

function shown(type, bytes) {
  const text = decoded(bytes);
  if (text !== null && /^(application|text)\/([\w.+-]+\+)?json\b/i.test(type)) {
    try {
      return { text: JSON.stringify(JSON.parse(text), null, 2), editable: text, kind: "json" };
    } catch {
      // Stored as JSON, but not: shown as the text it is.
    }
  }
  // Text unless it holds control characters other than tab, CR, LF;
  // editable unless a CR, which a text area would turn into LF.
  if (text !== null && !/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text)) {
    return { text, editable: text.includes("\r") ? null : text, kind: "text" };
  }
  return { text: hex(bytes), editable: null, kind: "binary" };
}

function hideNotes() {
  for (const id of ["conflict", "error", "changed"]) $(id).hidden = true;
}

// A handler whose failures are shown, not lost.
function guard(handler) {
  return async (...args) => {
    try {
      await handler(...args);
    } catch (error) {
      if (!(error instanceof Refused)) showError(error.message);
    }
  };
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

// Show a key: "shown", "missing" (404) or "refused" (another error, shown).
async function openKey(key) {
  const generation = ++state.generation;
  const response = await api(keyPath(key));
  if (generation !== state.generation) return "refused";
  hideNotes();
  $("value").hidden = false;
  state.creating = false;
  if (!response.ok) {
    state.key = null;
    $("key").textContent = key;
    for (const id of ["type", "size", "version", "expires", "view"]) $(id).textContent = "";
    $("download").hidden = true;
    $("edit").hidden = true;
    const missing = response.status === 404;
    showError(missing ? "There is no such key (any more)." : await reason(response));
    return missing ? "missing" : "refused";
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  const type = response.headers.get("Content-Type") || "application/octet-stream";
  const value = shown(type, bytes);
  state.key = key;
  state.bytes = bytes;
  state.text = value.editable;
  state.etag = response.headers.get("ETag");
  located(key);
  $("key").textContent = key;
  $("type").textContent = type;
  $("size").textContent = `${bytes.length} bytes`;
  $("version").textContent = state.etag;
  const expires = response.headers.get("Ersid-Expires");
  $("expires").textContent = expires
    ? `${new Date(Number(expires) * 1000).toISOString()} (${response.headers.get("Ersid-TTL")} s left)`
    : "never";
  const view = $("view");
  view.textContent = value.text;
  view.dataset.kind = value.kind;
  const download = $("download");
  if (download.href) URL.revokeObjectURL(download.href);
  download.href = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  download.download = key.slice(key.lastIndexOf("/") + 1) || "value";
  download.hidden = false;
  $("edit").hidden = false;
  $("edit-key").value = key;
  $("edit-key").readOnly = true;
  $("edit-value").value = value.editable ?? "";
  $("edit-value").disabled = value.editable === null;
  $("edit-type").value = type;
  $("edit-ttl").value = response.headers.get("Ersid-TTL") || "";
  $("delete").hidden = false;
  for (const item of $("entries").children) {
    item.classList.toggle("open", item.dataset.name === key);
  }
  const folder = key.slice(0, key.lastIndexOf("/") + 1);
  if (folder !== state.folder) {
    await openFolder(folder);
    located(key);
  }
  return "shown";
}

function newKey() {
  hideNotes();
  state.creating = true;
  state.key = null;
  state.bytes = null;
  state.text = null;
  $("value").hidden = false;
  $("edit").hidden = false;
  $("key").textContent = "New key";
  for (const id of ["type", "size", "version", "expires", "view"]) $(id).textContent = "";
  $("download").hidden = true;
  $("edit-key").readOnly = false;
  $("edit-key").value = state.folder;
  $("edit-value").disabled = false;
  $("edit-value").value = "";
  $("edit-type").value = "text/plain; charset=utf-8";
  $("edit-ttl").value = "";
  $("delete").hidden = true;
  $("edit-key").focus();
}

function conflict(message) {
  $("conflict-text").textContent = message;
  $("conflict").hidden = false;
}

async function save(event) {
  event.preventDefault();
  hideNotes();
  const key = state.creating ? $("edit-key").value : state.key;
  if (!key) return;
  const headers = { "Content-Type": $("edit-type").value || "application/octet-stream" };
  headers[state.creating ? "If-None-Match" : "If-Match"] = state.creating ? "*" : state.etag;
  const ttl = $("edit-ttl").value.trim();
  if (ttl) headers["Ersid-TTL"] = ttl;
  // The bytes loaded, unless the text was edited: a binary value, or one
  // a text area cannot hold as it is, is written back byte for byte.
  const text = $("edit-value").value;
  const edited = state.creating || (state.text !== null && text !== state.text);
  const body = edited ? text : state.bytes;
  const response = await api(keyPath(key), { method: "PUT", headers, body });
  if (response.status === 412) {
    conflict(
      state.creating
        ? "A key of that name exists already: nothing was written."
        : "Someone else changed or deleted this key since it was loaded: your edit was not saved.",
    );
    return;
  }
  if (!response.ok) {
    showError(await reason(response));
    return;
  }
  await openKey(key);
  await showPage(false, $("entries").children.length - 1);
}

async function remove() {
  hideNotes();
  const response = await api(keyPath(state.key), {
    method: "DELETE",
    headers: { "If-Match": state.etag },
  });
  if (response.status === 412 || response.status === 404) {
    conflict("Someone else changed or deleted this key since it was loaded: it was not deleted.");
    return;
  }
  if (!response.ok) {
    showError(await reason(response));
    return;
  }
  state.key = null;
  $("value").hidden = true;
  located(state.folder);
  await showPage(false, $("entries").children.length - 1);
}

// Live: the open folder's changes, through /_watch. EventSource without a
// token; with one, which EventSource cannot send, long polls.

function live(up, text) {
  $("live").textContent = text;
  $("live").classList.toggle("down", !up);
}

// The folder listed again after changes: at once, then at most twice a
// second however fast the changes come.
let refreshing = false;
let again = false;
async function refresh() {
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = true;
  try {
    do {
      again = false;
      await showPage(false, $("entries").children.length - 1);
      if (again) await new Promise((resolve) => setTimeout(resolve, 500));
    } while (again);
  } finally {
    refreshing = false;
  }
}

function changed(change) {
  if (change.key === state.key && `"${change.revision}"` !== state.etag) {
    $("changed").hidden = false;
  }
  refresh();
}

function follow(prefix, since) {
  if (follower) follower.stop();
  live(false, "connecting…");
  follower = state.token ? poll(prefix, since) : stream(prefix, since);
}

function stream(prefix, since) {
  const query = new URLSearchParams({ prefix, since: String(since) });
  const source = new EventSource(`/_watch?${query}`);
  source.addEventListener("open", () => live(true, "live"));
  source.addEventListener("error", () => {
    live(false, "disconnected: reconnecting…");
    // Refused (history gone, too many watchers): the browser gives up;
    // list the folder again and follow it from there.
    if (source.readyState === EventSource.CLOSED && follower?.source === source) {
      relist(prefix);
    }
  });
  for (const type of ["put", "delete", "expire"]) {
    source.addEventListener(type, (event) => changed(JSON.parse(event.data)));
  }
  source.addEventListener("compacted", () => relist(prefix));
  return { source, stop: () => source.close() };
}

function poll(prefix, from) {
  let stopped = false;
  const aborting = new AbortController();
  (async () => {
    let since = from;
    let first = true;
    while (!stopped) {
      // The first poll answers at once: then the page is known to follow.
      const wait = first ? "0" : "25";
      const query = new URLSearchParams({ prefix, since: String(since), wait });
      try {
        const response = await api(`/_watch?${query}`, { signal: aborting.signal });
        if (response.status === 410) {
          if (!stopped) relist(prefix);
          return;
        }
        if (!response.ok) throw new Error(await reason(response));
        const answer = await response.json();
        if (stopped) return;
        live(true, "live");
        answer.events.forEach(changed);
        since = answer.revision;
        first = false;
      } catch (error) {
        if (error instanceof Refused || stopped) return;
        live(false, "disconnected: reconnecting…");
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
  })();
  return {
    stop: () => {
      stopped = true;
      aborting.abort();
    },
  };
}

// Tokens: asked for when the server says one is needed, kept for the tab.

function askToken(message) {
  $("login").hidden = false;
  $("main").hidden = true;
  if (state.token) {
    $("login-error").textContent = message;
    $("login-error").hidden = false;
  }
  $("token").focus();
}

async function useToken(event) {
  event.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem(TOKEN, state.token);
  $("token").value = "";
  await start();
}

function forget() {
  sessionStorage.removeItem(TOKEN);
  state.token = null;
  location.reload();
}

async function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("forget").hidden = !state.token;
  let path = "";
  try {
    path = decodeURIComponent(location.hash.slice(1));
  } catch {
    // Not a folder or a key: the top.
  }
  await go(path);
}

// Show a folder; a key; or else the keys and folders that start with it.
async function go(path) {
  hideNotes();
  try {
    if (!path || path.endsWith("/")) {
      $("value").hidden = true;
      await openFolder(path);
    } else if ((await openKey(path)) === "missing") {
      $("value").hidden = true;
      hideNotes();
      await openFolder(path);
    }
  } catch (error) {
    if (!(error instanceof Refused)) showError(error.message);
  }
}

function jump(event) {
  event.preventDefault();
  go($("path").value);
}

$("jump").addEventListener("submit", jump);
$("login").addEventListener("submit", useToken);
$("forget").addEventListener("click", forget);
$("more").addEventListener(
  "click",
  guard(() => showPage(true)),
);
$("new").addEventListener("click", newKey);
$("edit").addEventListener("submit", guard(save));
$("delete").addEventListener("click", guard(remove));
$("reload").addEventListener(
  "click",
  guard(() => openKey(state.creating ? $("edit-key").value : state.key)),
);
$("reload-changed").addEventListener(
  "click",
  guard(() => openKey(state.key)),
);
window.addEventListener("hashchange", start);
start();
