// The search page: the query and k live in the URL (?q=...&k=...), so a search can be shared and
// reloaded; results come from /api/search. Every text the user or the server supplies is set as
// textContent or as an encoded URL, never as HTML. window.tbpsTiming holds the last search's own
// timing (performance.now(), from Enter to the grid drawn), which benchmarks/bench_ui.py reads.
"use strict";

const $ = (id) => document.getElementById(id);
let current = 0;  // the latest search: an older one's answer arriving late is dropped

function imagePath(route, path) {
  return `/${route}/` + path.split("/").map(encodeURIComponent).join("/");
}

function figure(hit) {
  const fig = document.createElement("figure");
  fig.dataset.path = hit.path;
  const link = document.createElement("a");
  link.href = imagePath("image", hit.path);
  link.target = "_blank";
  const img = document.createElement("img");
  img.src = imagePath("thumb", hit.path);
  img.alt = hit.path;
  img.title = hit.path;
  link.append(img);
  const caption = document.createElement("figcaption");
  const rank = document.createElement("span");
  rank.className = "rank";
  rank.textContent = `#${hit.rank}`;
  const person = hit.person_id >= 0 ? `person ${hit.person_id}` : "person unknown";
  caption.append(rank, ` ${hit.score.toFixed(4)} · ${person}`);
  fig.append(link, caption);
  return fig;
}

function showError(message) {
  $("grid").replaceChildren();
  $("status").textContent = "";
  $("error").textContent = message;
  $("error").hidden = false;
}

async function answer(text, k) {
  let response;
  try {
    response = await fetch("/api/search?" + new URLSearchParams({ text, k }));
  } catch (e) {
    return { error: "the search page's own server (tbps ui) is not reachable" };
  }
  const body = await response.json().catch(() => ({ error: `the search page answered ${response.status}` }));
  return response.ok ? { hits: body[0].hits } : { error: body.error || `error ${response.status}` };
}

async function search(text, k) {
  const id = ++current;
  const start = performance.now();
  document.body.dataset.state = "searching";
  $("status").textContent = "searching…";
  const result = await answer(text, k);
  if (id !== current) return;
  const answered = performance.now();
  if (result.error) {
    showError(result.error);
  } else {
    $("error").hidden = true;
    const figures = result.hits.map(figure);
    $("grid").replaceChildren(...figures);
    // drawn: every thumbnail decoded (a broken one counts as done), then the next frame
    await Promise.all(figures.map((f) => f.querySelector("img").decode().catch(() => {})));
    await new Promise((resolve) => requestAnimationFrame(resolve));
    if (id !== current) return;
    $("status").textContent = `top ${result.hits.length} in ${Math.round(performance.now() - start)} ms`;
  }
  window.tbpsTiming = { id, text, k, hits: result.hits ? result.hits.length : 0, error: result.error || null,
                        answered_ms: answered - start, drawn_ms: performance.now() - start };
  document.body.dataset.state = result.error ? "error" : "done";
  document.body.dataset.searches = String(id);
}

function fromURL() {
  const params = new URLSearchParams(location.search);
  if (!params.has("q")) return;
  $("q").value = params.get("q");
  $("k").value = params.get("k") || "10";
  search($("q").value, $("k").value);
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams({ q: $("q").value, k: $("k").value });
  if (location.search !== "?" + params) history.pushState(null, "", "?" + params);
  search($("q").value, $("k").value);
});
for (const example of document.querySelectorAll(".example")) {
  example.addEventListener("click", () => {
    $("q").value = example.textContent;
    $("search").requestSubmit();
  });
}
window.addEventListener("popstate", fromURL);
fromURL();
