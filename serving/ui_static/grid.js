// The grid's tiles: a hit's crop (a button: "more like this person") and its rank, score, person,
// camera and time. Every text a hit carries is set as textContent or an encoded URL, never as HTML.
"use strict";

function imagePath(route, path) {
  return `/${route}/` + path.split("/").map(encodeURIComponent).join("/");
}

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

// "2026-11-30T14:05:00.000Z" -> "2026-11-30 14:05:00 UTC": the hit's own ISO text stays in datetime
function whenTaken(iso) {
  const el = document.createElement("time");
  el.dateTime = iso;
  el.textContent = iso.replace("T", " ").replace(/(\.000)?Z$/, " UTC");
  return el;
}

function tile(hit, onLike) {
  const fig = document.createElement("figure");
  fig.dataset.path = hit.path;
  fig.dataset.index = String(hit.index);
  const crop = document.createElement("button");
  crop.type = "button";
  crop.className = "crop";
  crop.title = `more like this person (${hit.path})`;
  const img = document.createElement("img");
  img.src = imagePath("thumb", hit.path);
  img.alt = hit.path;
  crop.append(img);
  crop.addEventListener("click", () => onLike(hit));
  const caption = document.createElement("figcaption");
  const person = hit.person_id >= 0 ? `person ${hit.person_id}` : "person unknown";
  const full = document.createElement("a");
  full.href = imagePath("image", hit.path);
  full.target = "_blank";
  full.rel = "noopener";
  full.title = "the full image";
  full.textContent = "↗";
  const seen = span("seen", "");
  seen.append(span("camera", hit.camera || "camera unknown"), " · ",
              hit.time ? whenTaken(hit.time) : "time unknown");
  caption.append(span("rank", `#${hit.rank}`), ` ${hit.score.toFixed(4)} · ${person} `, full, seen);
  fig.append(crop, caption);
  return fig;
}
