// The search page of `vr serve`: one fetch helper per endpoint, then the page logic.
// Plain ES module, no build step. With a token server, open the page as /?token=TOKEN.
// Answers have the shapes of video_retrieval/schemas.py (the same as vr search --json).

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

async function postForm(path, form) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(new URL(path, location.href).pathname, { method: "POST", body: form, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

/** The JSON API (cf. clip-retrieval's clip-service.js). */
export const api = {
  search: (q, k) => getJSON("api/search", { q, k }),
  /** a query by example: an image (with text: both count), uploaded as multipart */
  searchImage: (image, q, k) => {
    const form = new FormData();
    form.append("image", image, image.name || "pasted image");
    if (q) form.append("q", q);
    form.append("k", String(k));
    return postForm("api/search", form);
  },
  /** more like this: an indexed video's stored vectors (itself left out) */
  like: (id, k, g = null) => getJSON("api/search", g == null ? { like: id, k } : { like: id, k, g }),
  /** the URL of a moment as a downloadable MP4 */
  clipURL: (id, start, end, g = null) => {
    const q = new URLSearchParams({ start: start.toFixed(3), end: end.toFixed(3) });
    if (g != null) q.set("g", g);
    return withToken(`media/${id}/clip?${q}`);
  },
  localize: (id, q, top = 3, g = null) =>
    getJSON("api/localize", g == null ? { id, q, top } : { id, q, top, g }),
  info: () => getJSON("api/info"),
};

const $ = (id) => document.getElementById(id);
const NBSP = "\u00a0";
const finite = (x) => typeof x === "number" && Number.isFinite(x);
const fmt = (s) => `${Number(s).toFixed(1)}${NBSP}s`;
const span = (a, b) => `${Number(a).toFixed(1)}–${Number(b).toFixed(1)}${NBSP}s`;
const baseName = (p) => p.split(/[\\/]/).pop();
/** a short clip that a caption describes as a whole is played whole, its moment marked */
const WHOLE_CLIP_S = 10;
/** the smallest span of the saliency scale, per unit: a flat curve is drawn flat */
const MIN_SPAN = { cosine: 0.2, logit: 4 };
const UNIT_NAME = { cosine: "query-clip cosine", logit: "saliency logit" };
let current = null; // {hit, query, loc, stopAt, mediaError}

function setStatus(text) {
  $("status").textContent = text;
}

function hitElement(hit, query) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "hit";
  button.dataset.video = String(hit.id);
  button.dataset.start = String(hit.moment.start);
  button.dataset.end = String(hit.moment.end);
  button.setAttribute("aria-pressed", "false");
  const name = baseName(hit.video);
  button.title = hit.video; // the full name on hover
  const length = finite(hit.duration) ? `, ${fmt(hit.duration)} long` : "";
  button.setAttribute(
    "aria-label",
    `Result ${hit.rank}: ${name}${length}, score ${hit.score.toFixed(3)}, ` +
      `best match ${span(hit.moment.start, hit.moment.end)}. Play it.`,
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
  const parts = [`score ${hit.score.toFixed(3)}`];
  if (finite(hit.duration)) parts.push(fmt(hit.duration));
  parts.push(`match ${span(hit.moment.start, hit.moment.end)}`);
  detail.textContent = parts.join(" · ");
  meta.append(title, detail);
  button.append(img, meta);
  button.addEventListener("click", () => openHit(hit, query, button));
  const like = document.createElement("button");
  like.type = "button";
  like.className = "like";
  like.dataset.like = String(hit.id);
  like.textContent = "More like this";
  like.setAttribute("aria-label", `More videos like ${name}`);
  like.addEventListener("click", () => runLike(hit.id, $("k").value, true, hit.generation));
  li.append(button, like);
  return li;
}

/** the image the next search uses (dropped, pasted or chosen), or null */
let queryImage = null;

function setQueryImage(file) {
  if (queryImage) URL.revokeObjectURL(queryImage.url);
  queryImage = file ? { file, url: URL.createObjectURL(file) } : null;
  $("query-image").hidden = !queryImage;
  $("query-image-preview").src = queryImage ? queryImage.url : "";
  $("query-image-name").textContent = queryImage ? file.name || "pasted image" : "";
  if (!file) $("image-file").value = "";
}

function imageOf(list) {
  return [...(list || [])].find((f) => f.type.startsWith("image/")) || null;
}

function showResults(result) {
  const items = result.results.map((hit) =>
    hitElement({ ...hit, generation: result.generation, query_kind: result.query_kind }, result.query),
  );
  $("hits").replaceChildren(...items);
  setStatus(
    items.length
      ? `${items.length} results for “${result.query}” in ${result.took_ms.toFixed(0)} ms ` +
          `(score: ${result.score_kind})`
      : "No results.",
  );
}

async function runImageSearch(text, k) {
  const image = queryImage.file;
  document.title = `${image.name || "image"} — vr`;
  $("about").hidden = true;
  setStatus("Searching with the image…");
  $("hits").replaceChildren();
  try {
    showResults(await api.searchImage(image, text.trim(), k));
  } catch (err) {
    setStatus(`Error: ${err.message}`);
  }
}

async function runLike(id, k, push, g = null) {
  if (push) {
    const next = new URL(location.href);
    next.searchParams.delete("q");
    next.searchParams.set("like", id);
    next.searchParams.set("k", k);
    history.pushState({ like: id, k }, "", next);
  }
  $("about").hidden = true;
  setStatus("Finding videos like it…");
  $("hits").replaceChildren();
  try {
    const result = await api.like(id, k, g);
    document.title = `${result.query} — vr`;
    showResults(result);
  } catch (err) {
    setStatus(`Error: ${err.message}`);
  }
}

async function runSearch(q, k, push) {
  const text = q.trim();
  if (!text) {
    setStatus("Type a sentence describing what happens in the video.");
    $("q").focus();
    return;
  }
  if (push) {
    const next = new URL(location.href);
    next.searchParams.delete("like");
    next.searchParams.set("q", text);
    next.searchParams.set("k", k);
    history.pushState({ q: text, k }, "", next);
  }
  document.title = `${text} — vr`;
  $("about").hidden = true;
  setStatus("Searching…");
  $("hits").replaceChildren();
  try {
    showResults(await api.search(text, k));
  } catch (err) {
    setStatus(`Error: ${err.message}`);
  }
}

function seekTo(video, t) {
  if (video.readyState >= 1) video.currentTime = t;
  else video.addEventListener("loadedmetadata", () => (video.currentTime = t), { once: true });
}

/** Where to play: the localized best moment when there is one, else the search's match; a
 * short clip whose moment covers most of it is played whole. */
function playRange(hit, loc, duration) {
  const best = loc && loc.moments.find((m) => finite(m.start) && finite(m.end) && m.end > m.start);
  const m = best || hit.moment;
  const whole = duration > 0 && (duration <= WHOLE_CLIP_S || (m.end - m.start) / duration >= 0.6);
  return whole ? { start: 0, stop: null, moment: m, whole } : { start: m.start, stop: m.end, moment: m, whole };
}

function info(text) {
  // a media error stays visible: later messages are added after it
  const el = $("moment-info");
  el.textContent = current?.mediaError ? `${current.mediaError} ${text}` : text;
}

function openHit(hit, query, button) {
  for (const b of document.querySelectorAll(".hit[aria-pressed=true]")) {
    b.setAttribute("aria-pressed", "false");
  }
  button.setAttribute("aria-pressed", "true");
  current = { hit, query, loc: null, stopAt: null, mediaError: null };
  const state = current;
  $("player").hidden = false;
  $("player-title").textContent = `${baseName(hit.video)} — “${query}”`;
  $("player-title").title = hit.video;
  info("Finding where it happens…");
  const video = $("video");
  video.src = withToken(hit.media);
  video.addEventListener(
    "error",
    () => {
      if (current !== state) return;
      state.mediaError = "The video could not be played (its file may be gone, or the index updated: search again).";
      info("");
    },
    { once: true },
  );
  drawTimeline(null, hit);
  setDownload(hit, hit.moment.start, hit.moment.end);
  $("player").scrollIntoView({ block: "nearest" });
  const start = (loc) => {
    if (current !== state) return;
    const duration = (loc && loc.duration) || hit.duration || video.duration || 0;
    const r = playRange(hit, loc, duration);
    state.stopAt = r.stop;
    seekTo(video, r.start);
    video.play().catch(() => {}); // autoplay may be refused; the controls remain
    return r;
  };
  if (hit.query_kind && hit.query_kind !== "text") {
    // a query by example: its moment comes from the stored frames it matched (no sentence to
    // localize); the matched frame is named
    const r = start(null);
    const what = hit.query_kind === "video" || hit.query_kind === "like" ? "the clip aligns" : "matched frame";
    info(
      `Best match ${span(hit.moment.start, hit.moment.end)} (${what} at ${fmt(hit.matched_frame_time)})` +
        (r.whole ? "; playing the whole clip." : "; playing it."),
    );
    return;
  }
  api
    .localize(hit.id, query, 3, hit.generation)
    .then((loc) => {
      if (current !== state) return;
      state.loc = loc;
      drawTimeline(loc, hit);
      const r = start(loc);
      setDownload(hit, r.moment.start, r.moment.end);
      const how = loc.method === "head" ? `${loc.head} head` : "zero-shot";
      const best = loc.moments[0];
      info(
        (best ? `Best moment ${span(best.start, best.end)} (score ${best.score.toFixed(2)}, ${how})` : `No moment found (${how})`) +
          (r.whole ? "; playing the whole clip." : "; playing it. Click a band to play another."),
      );
    })
    .catch((err) => {
      if (current !== state) return;
      info(`Localizing failed: ${err.message} Playing the search's match ${span(hit.moment.start, hit.moment.end)}.`);
      start(null);
    });
}

/** the "download this moment" link: the moment being played, as an MP4 cut by the server */
function setDownload(hit, start, end) {
  const link = $("download");
  const s = Math.max(0, start);
  const e = finite(hit.duration) ? Math.min(end, hit.duration) : end;
  if (!(e > s)) {
    link.hidden = true;
    return;
  }
  link.href = api.clipURL(hit.id, s, e, hit.generation);
  link.dataset.start = s.toFixed(3);
  link.dataset.end = e.toFixed(3);
  link.textContent = `Download this moment (${span(s, e)})`;
  link.hidden = false;
}

function niceStep(duration) {
  const target = duration / 8;
  for (const s of [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]) if (s >= target) return s;
  return 3600;
}

function drawAxis(duration) {
  const axis = $("axis");
  const step = niceStep(duration);
  const ticks = [];
  for (let t = 0; t <= duration + 1e-9; t += step) {
    const tick = document.createElement("span");
    tick.className = "tick";
    tick.style.left = `${(t / duration) * 100}%`;
    tick.textContent = t >= 60 ? `${Math.floor(t / 60)}:${String(Math.round(t % 60)).padStart(2, "0")}` : `${t}${NBSP}s`;
    ticks.push(tick);
  }
  axis.replaceChildren(...ticks);
}

function drawTimeline(loc, hit) {
  const video = $("video");
  const duration = (loc && loc.duration) || hit.duration || Math.max(hit.moment.end, video.duration || 0) || 1;
  const line = $("saliency");
  const s = loc ? loc.saliency.filter(finite) : [];
  if (s.length) {
    const unit = loc.saliency_unit;
    let lo = Math.min(...s);
    let hi = Math.max(...s);
    const minSpan = MIN_SPAN[unit] || 0;
    if (hi - lo < minSpan) {
      const mid = (hi + lo) / 2;
      lo = mid - minSpan / 2;
      hi = mid + minSpan / 2;
    }
    const y = (v) => 95 - ((v - lo) / (hi - lo)) * 90;
    const pts = [];
    s.forEach((v, i) => {
      const x0 = ((i * loc.clip_len) / duration) * 1000;
      const x1 = (Math.min((i + 1) * loc.clip_len, duration) / duration) * 1000;
      pts.push(`${x0.toFixed(1)},${y(v).toFixed(1)}`, `${x1.toFixed(1)},${y(v).toFixed(1)}`);
    });
    line.setAttribute("points", pts.join(" "));
    $("scale-hi").textContent = hi.toFixed(2);
    $("scale-lo").textContent = lo.toFixed(2);
    $("legend").textContent =
      `Curve: ${UNIT_NAME[unit] || unit} per ${loc.clip_len}${NBSP}s (scale ${lo.toFixed(2)} to ${hi.toFixed(2)}). ` +
      "Bands: moments with their score (0–1); dashed: the search's match.";
  } else {
    line.setAttribute("points", "");
    $("scale-hi").textContent = "";
    $("scale-lo").textContent = "";
    $("legend").textContent = loc ? "" : "Dashed: the search's match.";
  }
  drawAxis(duration);
  const bands = $("bands");
  bands.replaceChildren();
  const match = document.createElement("div");
  match.className = "match";
  match.style.left = `${(hit.moment.start / duration) * 100}%`;
  match.style.width = `${((hit.moment.end - hit.moment.start) / duration) * 100}%`;
  match.title = `Search match ${span(hit.moment.start, hit.moment.end)}`;
  bands.append(match);
  const moments = loc ? loc.moments.filter((m) => finite(m.start) && finite(m.end) && m.end > m.start) : [];
  moments.forEach((m, i) => {
    const band = document.createElement("button");
    band.type = "button";
    band.className = i === 0 ? "band best" : "band";
    band.style.left = `${(m.start / duration) * 100}%`;
    band.style.width = `${((m.end - m.start) / duration) * 100}%`;
    band.style.top = `${(i / moments.length) * 100}%`;
    band.style.height = `${100 / moments.length}%`;
    const label = `#${i + 1} ${span(m.start, m.end)} · ${m.score.toFixed(2)}`;
    band.textContent = label;
    band.title = label;
    band.dataset.start = m.start;
    band.dataset.end = m.end;
    band.setAttribute("aria-label", `Moment ${i + 1}: ${fmt(m.start)} to ${fmt(m.end)}, score ${m.score.toFixed(2)}. Play it.`);
    band.addEventListener("click", () => {
      setDownload(hit, m.start, m.end);
      current.stopAt = m.end;
      seekTo(video, m.start);
      video.play().catch(() => {});
    });
    bands.append(band);
  });
}

function tooltipAt(event) {
  const plot = $("plot");
  const tip = $("tooltip");
  if (!current) return;
  const box = plot.getBoundingClientRect();
  const frac = Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
  const loc = current.loc;
  const duration = (loc && loc.duration) || current.hit.duration || $("video").duration || 0;
  if (!duration) return;
  const t = frac * duration;
  let text = `${t.toFixed(1)}${NBSP}s`;
  if (loc && loc.saliency.length) {
    const v = loc.saliency[Math.min(loc.saliency.length - 1, Math.floor(t / loc.clip_len))];
    if (finite(v)) text += ` · ${UNIT_NAME[loc.saliency_unit] || "score"} ${v.toFixed(3)}`;
  }
  tip.textContent = text;
  tip.style.left = `${frac * 100}%`;
  tip.hidden = false;
}

async function showIndexed() {
  try {
    const i = await api.info();
    const hours = i.hours >= 1 ? `${i.hours.toFixed(1)}${NBSP}h` : `${Math.round(i.hours * 60)}${NBSP}min`;
    $("indexed").textContent = `${i.videos} videos (${hours}) indexed with ${i.model}.`;
    const items = i.examples.map((text) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "example";
      b.textContent = text;
      b.addEventListener("click", () => {
        $("q").value = text;
        runSearch(text, $("k").value, true);
      });
      li.append(b);
      return li;
    });
    $("examples").replaceChildren(...items);
    $("examples-label").hidden = items.length === 0;
    const p = new URLSearchParams(location.search);
    if (!p.get("q") && !p.get("like")) $("about").hidden = false;
  } catch (err) {
    setStatus(`Error: ${err.message}`);
  }
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
  $("plot").addEventListener("mousemove", tooltipAt);
  $("plot").addEventListener("mouseleave", () => ($("tooltip").hidden = true));
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (queryImage) runImageSearch($("q").value, $("k").value);
    else runSearch($("q").value, $("k").value, true);
  });
  const form = $("search-form");
  form.addEventListener("dragover", (e) => {
    e.preventDefault(); // allows the drop
    form.classList.add("dragging");
  });
  form.addEventListener("dragleave", () => form.classList.remove("dragging"));
  form.addEventListener("drop", (e) => {
    e.preventDefault();
    form.classList.remove("dragging");
    const file = imageOf(e.dataTransfer && e.dataTransfer.files);
    if (!file) {
      setStatus("Drop an image file (PNG, JPEG, WebP, …).");
      return;
    }
    setQueryImage(file);
    runImageSearch($("q").value, $("k").value);
  });
  $("q").addEventListener("paste", (e) => {
    const file = imageOf(e.clipboardData && e.clipboardData.files);
    if (!file) return; // text is pasted as usual
    e.preventDefault();
    setQueryImage(file);
    runImageSearch($("q").value, $("k").value);
  });
  $("image-file").addEventListener("change", () => {
    const file = imageOf($("image-file").files);
    if (!file) return;
    setQueryImage(file);
    runImageSearch($("q").value, $("k").value);
  });
  $("query-image-clear").addEventListener("click", () => {
    setQueryImage(null);
    $("q").focus();
  });
  window.addEventListener("popstate", () => fromURL());
  fromURL();
  showIndexed();
}

function fromURL() {
  const p = new URLSearchParams(location.search);
  const q = p.get("q") || "";
  const k = p.get("k");
  if (k && /^[1-9][0-9]*$/.test(k)) {
    // a shared link may ask for a count the menu lacks: it is added, the server bounds it
    if (![...$("k").options].some((o) => o.value === k)) {
      const option = new Option(k, k);
      const after = [...$("k").options].find((o) => Number(o.value) > Number(k));
      $("k").add(option, after || null);
    }
    $("k").value = k;
  }
  $("q").value = q;
  const like = p.get("like");
  if (like && /^[0-9]+$/.test(like)) runLike(like, $("k").value, false);
  else if (q) runSearch(q, $("k").value, false);
}

init();
