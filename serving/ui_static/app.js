// The search page. A query is a description ({q}), a gallery item ({like}: a crop clicked) or an
// image file ({image}: dropped or chosen); with k and the filters (cameras, since, until) it lives
// in the URL (?q=...&k=...&camera=...&since=...&until=..., or ?like=INDEX&...), so a search can be
// shared and reloaded; an uploaded file is the one query no URL can hold. Results come from
// /api/search and POST /api/search/image. window.tbpsTiming holds the last search's own timing
// (performance.now(), from Enter to the grid drawn), which benchmarks/bench_ui.py reads.
"use strict";

const $ = (id) => document.getElementById(id);
let current = 0;     // the latest search: an older one's answer arriving late is dropped
let query = null;    // what the grid shows; a change of filter runs it again
let maxImageBytes = 16 << 20;  // /api/options says
let csrf = "";       // the session's token, sent with every POST (with logins: /api/options says)

function chosenCameras() {
  return [...document.querySelectorAll("#cameras input:checked")].map((box) => box.value);
}

function addCamera(name, checked) {
  const box = document.createElement("input");
  box.type = "checkbox";
  box.value = name;
  box.checked = checked;
  box.addEventListener("change", () => rerun());
  const label = document.createElement("label");
  label.append(box, ` ${name}`);
  $("cameras").append(label);
  $("cameras").hidden = false;
}

function setCameras(names) {  // a URL may name a camera the gallery file does not (added since)
  const known = new Set([...document.querySelectorAll("#cameras input")].map((box) => box.value));
  for (const name of names) if (!known.has(name)) addCamera(name, false);
  for (const box of document.querySelectorAll("#cameras input")) box.checked = names.includes(box.value);
}

// k and the filters, as the page's URL and the API both spell them
function settings() {
  const params = new URLSearchParams({ k: $("k").value });
  for (const camera of chosenCameras()) params.append("camera", camera);
  for (const bound of ["since", "until"]) if ($(bound).value.trim()) params.set(bound, $(bound).value.trim());
  return params;
}

function queryParams(q, kind) {  // kind: "page" (q=) or "api" (text=)
  const params = settings();
  if (q.q !== undefined) params.set(kind === "page" ? "q" : "text", q.q);
  if (q.like !== undefined) params.set("like", String(q.like));
  return params;
}

function showError(message) {
  $("grid").replaceChildren();
  $("status").textContent = "";
  $("error").textContent = message;
  $("error").hidden = false;
}

async function answer(q) {
  let response;
  try {
    response = q.image
      ? await fetch("/api/search/image?" + settings(), {
        method: "POST", body: q.image,
        headers: { "Content-Type": q.image.type || "application/octet-stream", "X-CSRF-Token": csrf } })
      : await fetch("/api/search?" + queryParams(q, "api"));
  } catch (e) {
    return { error: "the search page's own server (tbps ui) is not reachable" };
  }
  const body = await response.json().catch(() => ({ error: `the search page answered ${response.status}` }));
  return response.ok ? { hits: body[0].hits, exact: body[0].exact } : { error: body.error || `error ${response.status}` };
}

function describe(q) {
  if (q.like !== undefined) return `more like gallery item #${q.like}: `;
  return q.image ? `more like ${q.image.name || "the image"}: ` : "";
}

async function search(q) {
  const id = ++current;
  const start = performance.now();
  query = q;
  document.body.dataset.state = "searching";
  $("status").textContent = "searching…";
  const result = q.image && q.image.size > maxImageBytes
    ? { error: `${q.image.name} is ${(q.image.size / 2 ** 20).toFixed(1)} MB: images of at most ` +
               `${maxImageBytes / 2 ** 20} MB are searched` }
    : await answer(q);
  if (id !== current) return;
  const answered = performance.now();
  if (result.error) {
    showError(result.error);
  } else {
    $("error").hidden = true;
    const figures = result.hits.map((hit) => tile(hit, (h) => run({ like: h.index })));
    $("grid").replaceChildren(...figures);
    // drawn: every thumbnail decoded (a broken one counts as done), then the next frame
    await Promise.all(figures.map((f) => f.querySelector("img").decode().catch(() => {})));
    await new Promise((resolve) => requestAnimationFrame(resolve));
    if (id !== current) return;
    $("status").textContent = `${describe(q)}top ${result.hits.length} in ${Math.round(performance.now() - start)} ms`
      + (result.exact === false ? " (two-stage: may miss some of the exact top-k)" : "");
  }
  window.tbpsTiming = { id, text: q.q ?? null, k: $("k").value, hits: result.hits ? result.hits.length : 0,
                        error: result.error || null, answered_ms: answered - start,
                        drawn_ms: performance.now() - start };
  document.body.dataset.state = result.error ? "error" : "done";
  document.body.dataset.searches = String(id);
}

function run(q) {  // a new search, recorded in the URL (an image: only its k and filters)
  const params = q.image ? settings() : queryParams(q, "page");
  if (location.search !== "?" + params) history.pushState(null, "", "?" + params);
  search(q);
}

function rerun() {  // the filters changed: the same query under them
  if (query) run(query);
  else if ($("q").value.trim()) run({ q: $("q").value });
}

function fromURL() {  // whether the URL held a query (and its search started)
  const params = new URLSearchParams(location.search);
  $("k").value = params.get("k") || "10";
  setCameras(params.getAll("camera"));
  for (const bound of ["since", "until"]) $(bound).value = params.get(bound) || "";
  if (params.has("q")) {
    $("q").value = params.get("q");
    search({ q: params.get("q") });
  } else if (params.has("like")) {
    search({ like: params.get("like") });
  }
  return params.has("q") || params.has("like");
}

function clear() {
  query = null;
  $("grid").replaceChildren();
  $("status").textContent = "";
  $("error").hidden = true;
}

function searchImage(file) {
  if (file) run({ image: file });
  $("image").value = "";  // so that choosing the same file again searches again
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  run({ q: $("q").value });
});
$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  rerun();
});
for (const example of document.querySelectorAll(".example")) {
  example.addEventListener("click", () => {
    $("q").value = example.textContent;
    $("search").requestSubmit();
  });
}
$("image").addEventListener("change", () => searchImage($("image").files[0]));
document.addEventListener("dragover", (event) => {
  event.preventDefault();  // without it the browser would open the file instead of dropping it here
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dragging");
  const file = event.dataTransfer && event.dataTransfer.files[0];
  if (file) searchImage(file);
  else showError("drop an image file (a JPEG, PNG, ...) to search by it");
});
// back to a URL with no query (or an uploaded image's, which no URL brings back): an empty grid
window.addEventListener("popstate", () => fromURL() || clear());

function showUser(user, role) {  // with logins: who is searching, and the way out
  $("user").textContent = `${user} (${role}) `;
  const out = document.createElement("button");
  out.type = "button";
  out.id = "logout";
  out.textContent = "Log out";
  out.addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": csrf } }).catch(() => {});
    location.assign("/login");
  });
  $("user").append(out);
  $("user").hidden = false;
}

fetch("/api/options").then((r) => {
  if (r.status === 401) location.assign("/login");  // the session ended (idle, or the page restarted)
  return r.json();
}).then((options) => {
  maxImageBytes = options.max_image_bytes;
  for (const name of options.cameras) addCamera(name, false);
  if (options.user) {
    csrf = options.csrf;
    showUser(options.user, options.role);
  }
}).catch(() => {}).finally(() => {  // without the options: no camera choices, the URL still filters
  fromURL();
  document.body.dataset.ready = "true";  // what is typed from now on is not overwritten by the URL's k
});
