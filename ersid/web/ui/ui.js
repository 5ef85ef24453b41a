// Ersid's key browser: folders of keys split at "/", a page of entries at
// a time through /_keys; a value shown as text, pretty JSON or hex, never
// as HTML (only textContent); edits and deletes as compare-and-set with
// the ETag the page loaded; the open folder and key followed live.

const PAGE = 100;
// Past every key that starts with a folder: /_keys lists in code point order.
const LAST = "\u{10FFFF}";
const TOKEN = "ersid-token";

const $ = (id) => document.getElementById(id);
const state = {
  folder: "",
  cursor: null,
  key: null,
  etag: null,
  creating: false,
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
        cursor = folder + LAST;
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
  button.addEventListener("click", () => (folder ? openFolder(name) : openKey(name)));
  item.append(button);
  return item;
}

// The folder's first page, or its next; the revision the first reflects.
async function showPage(append) {
  const { entries, cursor, revision } = await children(
    state.folder,
    append ? state.cursor : null,
  );
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
  const slash = folder.lastIndexOf("/", folder.length - 2);
  return slash === -1 ? "" : folder.slice(0, slash + 1);
}

async function openFolder(prefix) {
  state.folder = prefix;
  $("folder").textContent = prefix || "All keys";
  $("path").value = prefix;
  // Followed from the listing's revision: nothing after it is missed.
  follow(prefix, await showPage(false));
}

// Values

function decoded(bytes) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
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
  // Text unless it holds control characters other than tab, CR, LF.
  if (text !== null && !/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text)) {
    return { text, editable: text, kind: "text" };
  }
  return { text: hex(bytes), editable: null, kind: "binary" };
}

function hideNotes() {
  for (const id of ["conflict", "error", "changed"]) $(id).hidden = true;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

// The key shown, if it exists: false if not.
async function openKey(key) {
  const response = await api(keyPath(key));
  hideNotes();
  $("value").hidden = false;
  state.creating = false;
  if (response.status === 404) {
    state.key = null;
    $("key").textContent = key;
    $("view").textContent = "";
    $("download").hidden = true;
    showError("There is no such key (any more).");
    return false;
  }
  if (!response.ok) {
    showError(await reason(response));
    return false;
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  const type = response.headers.get("Content-Type") || "application/octet-stream";
  const value = shown(type, bytes);
  state.key = key;
  state.etag = response.headers.get("ETag");
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
  if (!key.startsWith(state.folder) || key.indexOf("/", state.folder.length) !== -1) {
    await openFolder(key.slice(0, key.lastIndexOf("/") + 1));
  }
  return true;
}

function newKey() {
  hideNotes();
  state.creating = true;
  state.key = null;
  $("value").hidden = false;
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
  const response = await api(keyPath(key), { method: "PUT", headers, body: $("edit-value").value });
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
  await showPage(false);
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
  await showPage(false);
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
      await showPage(false);
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
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(() => follower?.source === source && openFolder(prefix), 1000);
    }
  });
  for (const type of ["put", "delete", "expire"]) {
    source.addEventListener(type, (event) => changed(JSON.parse(event.data)));
  }
  source.addEventListener("compacted", () => openFolder(prefix));
  return { source, stop: () => source.close() };
}

function poll(prefix, from) {
  let stopped = false;
  (async () => {
    let since = from;
    let first = true;
    while (!stopped) {
      // The first poll answers at once: then the page is known to follow.
      const wait = first ? "0" : "25";
      const query = new URLSearchParams({ prefix, since: String(since), wait });
      try {
        const response = await api(`/_watch?${query}`);
        if (response.status === 410) {
          if (!stopped) await openFolder(prefix);
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
        if (error instanceof Refused) return;
        live(false, "disconnected: reconnecting…");
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
  })();
  return {
    stop: () => {
      stopped = true;
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
  try {
    // A folder; a key; or else the keys and folders that start with it.
    if (!path || path.endsWith("/")) {
      await openFolder(path);
    } else if (!(await openKey(path))) {
      $("value").hidden = true;
      await openFolder(path);
    }
  } catch (error) {
    if (!(error instanceof Refused)) showError(error.message);
  }
}

function jump(event) {
  event.preventDefault();
  const path = $("path").value;
  location.hash = encodeURIComponent(path);
}

$("jump").addEventListener("submit", jump);
$("login").addEventListener("submit", useToken);
$("forget").addEventListener("click", forget);
$("more").addEventListener("click", () => showPage(true));
$("new").addEventListener("click", newKey);
$("edit").addEventListener("submit", save);
$("delete").addEventListener("click", remove);
$("reload").addEventListener("click", () => openKey(state.key ?? $("key").textContent));
$("reload-changed").addEventListener("click", () => openKey(state.key));
window.addEventListener("hashchange", start);
start();
