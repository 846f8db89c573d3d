// The actindex page: ask about a behaviour (built-in, pairs, an example output or the model's answer), see the
// ranked rows with their calibrated scores, open a row, compare two methods side by side. Everything it shows
// comes from the server's JSON API; the query options are read from its OpenAPI schema (QueryRequest, made from
// QueryConfig), so the page repeats no default and no choice. A URL such as /?behavior=hallucination&k=5
// (any request field, plus compare=METHOD) fills the form and runs the query on load. URLs are relative to the
// page, so the page works under a reverse proxy's prefix. A server started with a token wants it on every call:
// the page asks for it (or reads /#token=...) and keeps it for the browser tab only (sessionStorage).
"use strict";

const ASKS = ["behavior", "pairs", "example", "generate"];
const NOT_OPTIONS = new Set([...ASKS, "persona", "name"]);
const $ = (id) => document.getElementById(id);
let OPTIONS = [];
let TOKEN = sessionStorage.getItem("actindex-token") || "";

class Unauthorised extends Error {}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

async function api(url, body) {
  const headers = TOKEN ? {Authorization: `Bearer ${TOKEN}`} : {};
  const init = body === undefined ? {headers} : {method: "POST", headers: {...headers, "Content-Type": "application/json"},
                                                 body: JSON.stringify(body)};
  const response = await fetch(url, init);
  const data = await response.json().catch(() => ({detail: response.statusText}));
  if (response.status === 401) throw new Unauthorised(data.detail || "this server needs a token");
  if (!response.ok) throw new Error(data.detail || response.statusText);
  return data;
}

// ---- the form ---------------------------------------------------------------------------------------------

function optionsOf(schema) {
  return Object.entries(schema.properties).filter(([name]) => !NOT_OPTIONS.has(name)).map(([name, prop]) => {
    const variants = prop.anyOf || [prop];
    const typed = variants.find((v) => v.type && v.type !== "null") || {};
    return {name, choices: typed.enum || null, type: typed.type, fallback: prop.default, help: prop.description || "",
            minimum: typed.minimum, optional: variants.some((v) => v.type === "null")};
  });
}

function optionInput(option) {
  const id = `opt-${option.name}`;
  let input;
  if (option.choices) {
    input = el("select", {id});
    if (option.optional) input.append(el("option", {value: ""}, "(default)"));
    for (const choice of option.choices) input.append(el("option", {value: choice}, choice));
    input.value = option.fallback ?? "";
  } else if (option.type === "boolean") {
    input = el("input", {id, type: "checkbox"});
    input.checked = Boolean(option.fallback);
  } else if (option.type === "object") {  // where: {field: value or [values]}, as JSON
    input = el("input", {id, type: "text", placeholder: '{"label": "clean"}'});
  } else {
    input = el("input", {id, type: "number", step: "1"});
    if (option.minimum !== undefined) input.min = option.minimum;
    if (option.fallback !== null && option.fallback !== undefined) input.value = option.fallback;
    else input.placeholder = "(default)";
  }
  return el("label", {class: option.type === "boolean" ? "flag" : "", title: option.help}, option.name, input);
}

function optionValue(option) {
  const input = $(`opt-${option.name}`);
  if (option.type === "boolean") return input.checked;
  if (input.value === "") return null;
  if (option.type === "object") {
    try { return JSON.parse(input.value); } catch (err) { throw new Error(`${option.name}: not a JSON object`); }
  }
  return option.choices ? input.value : Number(input.value);
}

function setOption(option, value) {
  const input = $(`opt-${option.name}`);
  if (option.type === "boolean") input.checked = ["1", "true", "yes", "on"].includes(String(value).toLowerCase());
  else input.value = value;
}

function kind() {
  return document.querySelector('input[name="kind"]:checked').value;
}

function showKind(value) {
  document.querySelector(`input[name="kind"][value="${value}"]`).checked = true;
  for (const box of document.querySelectorAll(".kind-input")) box.hidden = box.dataset.kind !== value;
}

function parsePairs(text) {
  return text.split("\n").map((line, i) => [line.trim(), i + 1]).filter(([line]) => line).map(([line, n]) => {
    try { return JSON.parse(line); } catch (err) { throw new Error(`pairs, line ${n}: not a JSON object`); }
  });
}

function asked() {
  const body = {};
  const what = kind();
  if (what === "behavior") body.behavior = $("behavior").value;
  else if (what === "pairs") body.pairs = parsePairs($("pairs").value);
  else if (what === "example") {
    const text = $("example").value.trim();
    body.example = /^[[{]/.test(text) ? JSON.parse(text) : text;
  } else body.generate = $("generate").value;
  for (const option of OPTIONS) {
    const value = optionValue(option);
    if (value !== null && value !== option.fallback) body[option.name] = value;
  }
  return body;
}

function writeUrl(body, compare) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(body)) {
    params.set(key, key === "pairs" ? value.map((p) => JSON.stringify(p)).join("\n")
                                    : typeof value === "object" ? JSON.stringify(value) : value);
  }
  if (compare) params.set("compare", compare);
  history.replaceState(null, "", `?${params}`);
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  let ask = false;
  for (const [key, value] of params) {
    if (key === "behavior") { showKind("behavior"); $("behavior").value = value; ask = true; }
    else if (ASKS.includes(key)) { showKind(key); $(key).value = value; ask = true; }
    else if (key === "compare") $("compare").value = value;
    else {
      const option = OPTIONS.find((o) => o.name === key);
      if (option) setOption(option, value);
    }
  }
  return ask;
}

// ---- results ------------------------------------------------------------------------------------------------

const fmt = (x, digits = 4) => (x >= 0 ? "+" : "") + Number(x).toFixed(digits);

// a rank-fusion rule orders by its own score and keeps the calibrated one beside it
const otherOrder = (hits) => hits.some((h) => h.calibrated !== undefined && Math.abs(h.calibrated - h.score) > 1e-9);

function hitsTable(title, hits, shared, onOpen) {
  const influence = hits.some((h) => h.influence !== undefined);
  const calibrated = !influence && otherOrder(hits);
  const extra = calibrated ? ["calibrated", "cosine"] : ["cosine"];
  const head = el("tr", {}, el("th", {}, "#"), el("th", {}, influence ? "influence" : "score"),
                  ...extra.map((name) => el("th", {}, name)), el("th", {}, "id"), el("th", {}, "text"));
  const table = el("table", {class: "hits"},
    el("colgroup", {}, el("col", {class: "rank"}), el("col", {class: "score"}),
       ...extra.map(() => el("col", {class: "score"})), el("col", {class: "id"}), el("col")),
    el("thead", {}, head));
  const body = el("tbody");
  for (const hit of hits) {
    const value = influence ? hit.influence : hit.score;
    const title = influence ? `influence ${hit.influence}; search score ${hit.score}` : `score ${hit.score}`;
    body.append(el("tr", {class: `hit${shared.has(hit.id) ? " shared" : ""}`, "data-id": hit.id,
                          "data-rank": hit.rank, onclick: () => onOpen(hit)},
      el("td", {class: "num"}, hit.rank),
      el("td", {class: `num score ${value >= 0 ? "pos" : "neg"}`, title}, fmt(value, influence ? 3 : 4)),
      ...extra.map((name) => el("td", {class: `num ${name}`, title: `${name} ${hit[name]}`},
                                hit[name] === undefined ? "" : fmt(hit[name]))),
      el("td", {class: "id", title: hit.id}, hit.id),
      el("td", {class: "snippet", title: hit.snippet}, hit.snippet)));
  }
  table.append(body);
  return [el("h3", {}, title), table];
}

function timing(result) {
  const parts = Object.entries(result.timings).filter(([, s]) => s >= 0.0005)
    .map(([name, s]) => `${name} ${s < 1 ? (s * 1000).toFixed(0) + " ms" : s.toFixed(1) + " s"}`);
  return `${(result.seconds * 1000).toFixed(0)} ms` + (parts.length ? ` (${parts.join(", ")})` : "")
    + (result.cached ? " · from the behaviour cache" : "");
}

function render(results) {
  const box = $("results");
  box.replaceChildren();
  let shared = new Set();
  if (results.length > 1) {
    const ids = results.map((r) => new Set(r.top.map((h) => h.id)));
    shared = new Set([...ids[0]].filter((id) => ids.slice(1).every((s) => s.has(id))));
  }
  for (const result of results) {
    const section = el("section", {class: "result", "data-method": result.method},
      el("h2", {}, `${result.behavior} · ${result.method}`),
      el("p", {class: "meta"}, `${result.family} · ${timing(result)}`));
    const calibrated = "robust standard deviations from the index's typical row (positive pushes towards the "
      + "behaviour)";
    const cosine = "cosine: the raw cosine with the query vector" + (result.members.length ? " (members' mean)" : "");
    section.append(el("p", {class: "note"}, otherOrder([...result.top, ...result.bottom])
      ? `score: the fusion rule's own, the order; calibrated: ${calibrated}; ${cosine}`
      : `score: calibrated, ${calibrated}; ${cosine}`));
    for (const answer of result.answers || []) {
      section.append(el("p", {class: "answer"}, el("span", {class: "muted"}, `the model's answer to “${answer.prompt}”: `),
                        el("q", {}, answer.answer)));
    }
    for (const note of result.notes) section.append(el("p", {class: "note"}, `note: ${note}`));
    if (results.length > 1) section.append(el("p", {class: "note"}, `${shared.size} of the top rows in both (bold)`));
    section.append(...hitsTable("top: pushes towards the behaviour", result.top, shared, openRow));
    if (result.bottom.length) section.append(...hitsTable("bottom: inhibits it", result.bottom, shared, openRow));
    box.append(section);
  }
}

function tokenSpans(hit) {
  const scores = hit.token_scores;
  const top = Math.max(...scores.map(Math.abs), 1e-12);
  return hit.tokens.map((token, i) => {
    const alpha = (0.6 * Math.abs(scores[i]) / top).toFixed(2);
    const color = scores[i] >= 0 ? `rgba(192,57,43,${alpha})` : `rgba(36,113,163,${alpha})`;
    const response = hit.token_response && hit.token_response[i] ? " resp" : "";
    return el("span", {class: `tok${response}`, style: `background:${color}`, title: fmt(scores[i], 5)}, token);
  });
}

async function openRow(hit) {
  const panel = $("row");
  panel.hidden = false;
  $("row-title").textContent = `${hit.id} (row ${hit.row})`;
  $("row-tokens").replaceChildren(...(hit.tokens ? tokenSpans(hit) : []));
  try {
    const row = await api(`rows/${encodeURIComponent(hit.id)}`);
    const where = row.line ? ` · ${row.file}:${row.line}` : "";
    $("row-meta").textContent = `loss ${row.loss.toFixed(4)} · ${row.n_tokens} tokens (${row.n_response} in the `
      + `response) · ${row.valid ? "searchable" : "not searchable"}${where}`
      + (hit.tokens ? " · tokens coloured by influence (red: towards, blue: against; underlined: response)" : "");
    $("row-record").textContent = JSON.stringify(row.record, null, 2);
  } catch (err) {
    $("row-meta").replaceChildren(el("span", {class: "error"}, err.message));
  }
  panel.scrollIntoView({behavior: "smooth", block: "nearest"});
}

// ---- running a query ----------------------------------------------------------------------------------------

async function run(event) {
  if (event) event.preventDefault();
  const status = $("status");
  const compare = $("compare").value;
  let body;
  try {
    body = asked();
  } catch (err) {
    status.replaceChildren(el("span", {class: "error"}, err.message));
    return;
  }
  writeUrl(body, compare);
  const bodies = compare ? [body, {...body, method: compare}] : [body];
  $("run").disabled = true;
  status.textContent = "ranking…";
  try {
    const results = await Promise.all(bodies.map((b) => api("query", b)));
    render(results);
    status.textContent = `done: ${results.map((r) => `${r.method} ${timing(r)}`).join("; ")}`;
  } catch (err) {
    $("results").replaceChildren();  // rows of an earlier query would read as this one's answer
    $("row").hidden = true;
    status.replaceChildren(el("span", {class: "error"}, err.message));
  } finally {
    $("run").disabled = false;
  }
}

function askToken(message) {
  const form = $("token-form");
  form.hidden = false;
  $("status").replaceChildren(el("span", {class: "error"}, message));
  form.onsubmit = (event) => {
    event.preventDefault();
    TOKEN = $("token").value.trim();
    sessionStorage.setItem("actindex-token", TOKEN);
    form.hidden = true;
    $("status").textContent = "";
    start();
  };
}

async function init() {
  const [info, behaviors, schema] = await Promise.all([api("info"), api("behaviors"), api("openapi.json")]);
  $("index-info").textContent = `${info.rows} rows · model ${info.model.name} · layers ${info.layers.join(", ")}`;
  const select = $("behavior");
  for (const b of behaviors) select.append(el("option", {value: b.name}, b.cached ? `${b.name} (cached)` : b.name));
  const describe = () => {
    const b = behaviors.find((x) => x.name === select.value);
    $("behavior-description").textContent = b ? b.description : "";
  };
  select.addEventListener("change", describe);
  OPTIONS = optionsOf(schema.components.schemas.QueryRequest);
  $("options").append(...OPTIONS.map(optionInput));
  const methods = (OPTIONS.find((o) => o.name === "method") || {choices: []}).choices;
  for (const m of methods) $("compare").append(el("option", {value: m}, m));
  for (const radio of document.querySelectorAll('input[name="kind"]')) {
    radio.addEventListener("change", () => showKind(radio.value));
  }
  $("ask").addEventListener("submit", run);
  $("close-row").addEventListener("click", () => { $("row").hidden = true; });
  const ask = readUrl();
  describe();
  if (ask) await run();
}

function start() {
  init().catch((err) => {
    if (err instanceof Unauthorised) askToken(err.message);
    else $("status").replaceChildren(el("span", {class: "error"}, `cannot load: ${err.message}`));
  });
}

const fromLink = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromLink) {
  TOKEN = fromLink;
  sessionStorage.setItem("actindex-token", TOKEN);
  history.replaceState(null, "", location.pathname + location.search);  // the token leaves the address bar
}
start();
