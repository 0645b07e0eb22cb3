// The search page of `vr serve`: one fetch helper per endpoint, then the page logic.
// Plain ES module, no build step. With a token server, open the page as /?token=TOKEN.

const params = new URLSearchParams(location.search);
const token = params.get("token");

/** `url` with ?token= added (for <img>/<video> sources, which cannot send headers). */
export function withToken(url) {
  if (!token) return url;
  const u = new URL(url, location.href);
  u.searchParams.set("token", token);
  return u.pathname + u.search;
}

async function getJSON(path, query) {
  const url = new URL(path, location.href);
  for (const [k, v] of Object.entries(query || {})) url.searchParams.set(k, v);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(url.pathname + url.search, { headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

/** The JSON API (cf. clip-retrieval's clip-service.js). */
export const api = {
  search: (q, k) => getJSON("api/search", { q, k }),
  localize: (id, q, top = 3, g = null) =>
    getJSON("api/localize", g == null ? { id, q, top } : { id, q, top, g }),
  info: () => getJSON("api/info"),
};

const $ = (id) => document.getElementById(id);
const fmt = (s) => `${Number(s).toFixed(1)} s`;
const baseName = (p) => p.split(/[\\/]/).pop();
let current = null; // {hit, query, localized}

function setStatus(text) {
  $("status").textContent = text;
}

function hitElement(hit, query) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "hit";
  button.dataset.video = String(hit.id);
  button.dataset.start = String(hit.moment[0]);
  button.dataset.end = String(hit.moment[1]);
  button.setAttribute("aria-pressed", "false");
  const name = baseName(hit.video);
  button.setAttribute(
    "aria-label",
    `Result ${hit.rank}: ${name}, score ${hit.score.toFixed(3)}, ` +
      `moment ${fmt(hit.moment[0])} to ${fmt(hit.moment[1])}. Play it.`,
  );
  const img = document.createElement("img");
  img.src = withToken(hit.thumbnail);
  img.alt = `Frame of ${name} at ${fmt(hit.thumbnail_time)}`;
  img.loading = "lazy";
  const meta = document.createElement("span");
  meta.className = "meta";
  const title = document.createElement("span");
  title.className = "name";
  title.textContent = `${hit.rank}. ${name}`;
  const detail = document.createElement("span");
  detail.className = "detail";
  detail.textContent = `score ${hit.score.toFixed(3)} · ${fmt(hit.moment[0])}–${fmt(hit.moment[1])}`;
  meta.append(title, detail);
  button.append(img, meta);
  button.addEventListener("click", () => openHit(hit, query, button));
  li.append(button);
  return li;
}

async function runSearch(q, k, push) {
  q = q.trim();
  if (!q) return;
  if (push) {
    const next = new URL(location.href);
    next.searchParams.set("q", q);
    next.searchParams.set("k", k);
    history.pushState({ q, k }, "", next);
  }
  document.title = `${q} — vr`;
  setStatus("Searching…");
  $("hits").replaceChildren();
  try {
    const result = await api.search(q, k);
    const items = result.results.map((hit) =>
      hitElement({ ...hit, generation: result.generation }, result.query),
    );
    $("hits").replaceChildren(...items);
    setStatus(
      items.length
        ? `${items.length} results for “${result.query}” in ${result.took_ms.toFixed(0)} ms`
        : "No results (the index is empty).",
    );
  } catch (err) {
    setStatus(`Error: ${err.message}`);
  }
}

function seekTo(video, t) {
  if (video.readyState >= 1) video.currentTime = t;
  else video.addEventListener("loadedmetadata", () => (video.currentTime = t), { once: true });
}

function openHit(hit, query, button) {
  for (const b of document.querySelectorAll(".hit[aria-pressed=true]")) {
    b.setAttribute("aria-pressed", "false");
  }
  button.setAttribute("aria-pressed", "true");
  const [start, end] = hit.moment;
  current = { hit, query, stopAt: end };
  $("player").hidden = false;
  $("player-title").textContent = `${baseName(hit.video)} — “${query}”`;
  $("moment-info").textContent = `Best moment ${fmt(start)}–${fmt(end)}; localizing…`;
  const video = $("video");
  // the media fragment starts playback at the moment (and stops at its end) ...
  video.src = `${withToken(hit.media)}#t=${start},${end}`;
  // ... and an explicit seek covers browsers that ignore it
  video.addEventListener(
    "loadedmetadata",
    () => {
      if (video.currentTime < start || video.currentTime > end) video.currentTime = start;
      video.play().catch(() => {}); // autoplay may be refused; the controls remain
    },
    { once: true },
  );
  video.addEventListener(
    "error",
    () => {
      if (current?.hit !== hit) return;
      $("moment-info").textContent =
        "The video could not be loaded (if the index was updated since this search, search again).";
    },
    { once: true },
  );
  drawTimeline(null, hit);
  $("player").scrollIntoView({ block: "nearest" });
  api
    .localize(hit.id, query, 3, hit.generation)
    .then((loc) => {
      if (current?.hit !== hit) return;
      drawTimeline(loc, hit);
      const best = loc.moments[0];
      $("moment-info").textContent = best
        ? `Localized (${loc.method}): best ${fmt(best.start)}–${fmt(best.end)}; ` +
          "click a band to jump there."
        : "No moment found.";
    })
    .catch((err) => ($("moment-info").textContent = `Localize failed: ${err.message}`));
}

function drawTimeline(loc, hit) {
  const video = $("video");
  const duration = loc?.duration || Math.max(hit.moment[1], video.duration || 0) || 1;
  const bands = $("bands");
  bands.replaceChildren();
  const line = $("saliency");
  if (loc && loc.saliency.length) {
    const s = loc.saliency;
    const lo = Math.min(...s);
    const hi = Math.max(...s);
    const y = (v) => 95 - (hi > lo ? ((v - lo) / (hi - lo)) * 90 : 45);
    const pts = [];
    s.forEach((v, i) => {
      const x0 = ((i * loc.clip_len) / duration) * 1000;
      const x1 = (Math.min((i + 1) * loc.clip_len, duration) / duration) * 1000;
      pts.push(`${x0.toFixed(1)},${y(v).toFixed(1)}`, `${x1.toFixed(1)},${y(v).toFixed(1)}`);
    });
    line.setAttribute("points", pts.join(" "));
  } else {
    line.setAttribute("points", "");
  }
  const moments = loc ? loc.moments : [{ ...hit.moment, score: hit.score }];
  moments.forEach((m, i) => {
    const band = document.createElement("button");
    band.type = "button";
    band.className = "band";
    band.style.left = `${(m.start / duration) * 100}%`;
    band.style.width = `${((m.end - m.start) / duration) * 100}%`;
    // one lane per moment (best on top), so overlapping windows stay clickable
    band.style.top = `${(i / moments.length) * 100}%`;
    band.style.height = `${100 / moments.length}%`;
    band.textContent = String(i + 1);
    band.setAttribute(
      "aria-label",
      `Moment ${i + 1}: ${fmt(m.start)} to ${fmt(m.end)}, score ${m.score.toFixed(3)}. Jump there.`,
    );
    band.addEventListener("click", () => {
      current.stopAt = m.end;
      seekTo(video, m.start);
      video.play().catch(() => {});
    });
    bands.append(band);
  });
}

function init() {
  const video = $("video");
  video.addEventListener("timeupdate", () => {
    const d = video.duration || 1;
    const x = ((video.currentTime / d) * 1000).toFixed(1);
    $("playhead").setAttribute("x1", x);
    $("playhead").setAttribute("x2", x);
    if (current?.stopAt != null && video.currentTime >= current.stopAt) {
      current.stopAt = null; // stop once at the end of the moment; playing on is allowed
      video.pause();
    }
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    runSearch($("q").value, $("k").value, true);
  });
  window.addEventListener("popstate", () => fromURL());
  fromURL();
}

function fromURL() {
  const p = new URLSearchParams(location.search);
  const q = p.get("q") || "";
  const k = p.get("k");
  if (k && [...$("k").options].some((o) => o.value === k)) $("k").value = k;
  $("q").value = q;
  if (q) runSearch(q, $("k").value, false);
}

init();
