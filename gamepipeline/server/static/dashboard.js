// The GamePipeline dashboard: a client of the same HTTP API as any other.
// Views are chosen by the URL's hash: #/ (fleet), #/pipelines/<id>, #/submit.
// A token entered in the header is kept in localStorage and sent as a bearer token.

const TOKEN_KEY = "gamepipeline.token";
const FINAL = new Set(["completed", "failed", "canceled"]);
const FLEET_POLL_MS = 2000;
const PIPELINE_POLL_MS = 1000;

let timer = null;

// --- the API ------------------------------------------------------------------------

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = body && body.error ? body.error : response.statusText;
    throw new ApiError(`${options.method || "GET"} ${path}: ${response.status} ${detail}`);
  }
  return body;
}

// --- small DOM helpers --------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(state) {
  return el("span", { class: `badge s-${state}`, "data-state": state }, state);
}

function when(stamp) {
  return stamp ? new Date(stamp).toLocaleString() : "–";
}

function duration(start, end) {
  if (!start) return "–";
  const ms = (end ? new Date(end) : new Date()) - new Date(start);
  return `${Math.max(ms / 1000, 0).toFixed(1)} s`;
}

function showError(err) {
  const box = document.getElementById("error");
  if (!err) { box.hidden = true; return; }
  box.textContent = err.message || String(err);
  box.hidden = false;
}

// replaceChildren shows a null or undefined child as the text "null"/"undefined":
// every view fills its nodes through this, which leaves such children out.
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function render(...children) {
  fill(document.getElementById("view"), ...children);
}

function poll(refresh, everyMs) {
  const tick = async () => {
    try {
      const again = await refresh();
      showError(null);
      if (again === false) return;
    } catch (err) {
      showError(err);
    }
    timer = setTimeout(tick, everyMs);
  };
  tick();
}

// --- fleet: nodes and pipelines -----------------------------------------------------

const filters = { state: "", node: "", template: "" };

function nodeRow(node) {
  const act = (action) => async () => {
    try {
      await api(`/api/nodes/${encodeURIComponent(node.node_id)}/${action}`,
        { method: "POST", body: "{}" });
      showError(null);
      route();
    } catch (err) { showError(err); }
  };
  const actions = node.mode === "active"
    ? [el("button", { onclick: act("maintenance"), "data-action": "maintenance" }, "Maintenance"),
       " ",
       el("button", { class: "danger", onclick: act("disable"), "data-action": "disable" }, "Disable")]
    : [el("button", { onclick: act("enable"), "data-action": "enable" }, "Put back in service")];
  const labels = Object.entries(node.labels).map(([k, v]) => `${k}=${v}`).join(", ");
  return el("tr", { "data-node": node.node_id },
    el("td", { class: "mono" }, node.node_id, el("div", { class: "muted" }, node.hostname)),
    el("td", {}, badge(node.state),
      node.mode !== "active" ? el("div", { class: "muted" }, node.connected ? "connected" : "not connected") : null,
      refusedNote(node.refused_registration)),
    el("td", {}, labels || "–"),
    el("td", {}, `${node.active_pipelines} / ${node.capacity}`),
    el("td", {}, when(node.last_heartbeat_at)),
    el("td", {}, actions));
}

// A second agent that registered for this node while another held it, as the
// server last saw it; null once that agent got in.
function refusedNote(refused) {
  if (!refused) return null;
  const agent = `host ${refused.hostname || "unknown"}, pid ${refused.pid ?? "unknown"}`;
  const times = refused.count === 1 ? "once" : `${refused.count} times`;
  return el("div", { class: "refused", "data-refused": refused.count,
      title: `instance ${refused.instance_id || "unknown"} from ${refused.peer || "unknown"}` },
    `another agent (${agent}) refused ${times}, last ${when(refused.refused_at)}`);
}

function pipelineRow(p) {
  return el("tr", { "data-pipeline": p.id },
    el("td", { class: "mono" }, el("a", { href: `#/pipelines/${p.id}` }, p.id.slice(0, 12))),
    el("td", {}, p.name),
    el("td", {}, badge(p.state)),
    el("td", {}, p.node || p.node_requested || "–"),
    el("td", {}, when(p.created_at)),
    el("td", {}, p.message));
}

function filterBar(nodes, onChange) {
  const states = ["", "pending", "running", "completed", "failed", "canceled"];
  const state = el("select", { id: "filter-state" },
    states.map((s) => el("option", { value: s, selected: s === filters.state }, s || "any state")));
  const node = el("select", { id: "filter-node" },
    el("option", { value: "" }, "any node"),
    nodes.map((n) => el("option", { value: n.node_id, selected: n.node_id === filters.node }, n.node_id)));
  const template = el("input", { id: "filter-template", placeholder: "template name", value: filters.template });
  const update = () => {
    filters.state = state.value;
    filters.node = node.value;
    filters.template = template.value.trim();
    onChange();
  };
  state.addEventListener("change", update);
  node.addEventListener("change", update);
  template.addEventListener("change", update);
  return el("div", { class: "filters" }, state, node, template);
}

function fleetView() {
  const nodesBody = el("tbody");
  const pipelinesBody = el("tbody");
  const filterSlot = el("div");
  const refresh = async () => {
    const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    const [nodes, pipelines] = await Promise.all([
      api("/api/nodes"),
      api(`/api/pipelines?${query}`),
    ]);
    fill(nodesBody, ...nodes.nodes.map(nodeRow));
    if (!filterSlot.firstChild || filterSlot.dataset.nodes !== nodes.nodes.map((n) => n.node_id).join()) {
      filterSlot.dataset.nodes = nodes.nodes.map((n) => n.node_id).join();
      fill(filterSlot, filterBar(nodes.nodes, () => { clearTimeout(timer); poll(refresh, FLEET_POLL_MS); }));
    }
    fill(pipelinesBody, ...pipelines.pipelines.map(pipelineRow));
  };
  render(
    el("section", { id: "nodes" }, el("h2", {}, "Nodes"),
      el("table", {}, el("thead", {}, el("tr", {},
        ["Node", "State", "Labels", "Load", "Last heartbeat", ""].map((h) => el("th", {}, h)))), nodesBody)),
    el("section", { id: "pipelines" }, el("h2", {}, "Pipelines"), filterSlot,
      el("table", {}, el("thead", {}, el("tr", {},
        ["Id", "Template", "State", "Node", "Created", "Message"].map((h) => el("th", {}, h)))), pipelinesBody)));
  poll(refresh, FLEET_POLL_MS);
}

// --- one pipeline -------------------------------------------------------------------

function stepRows(step) {
  const rows = [el("tr", { "data-step": step.index },
    el("td", {}, step.index),
    el("td", {}, step.name, el("div", { class: "muted" }, step.type)),
    el("td", {}, badge(step.state)),
    el("td", {}, when(step.started_at)),
    el("td", {}, duration(step.started_at, step.finished_at)),
    el("td", {}, step.message,
      step.exit_code !== null ? el("div", { class: "muted" }, `exit code ${step.exit_code}`) : null))];
  if (step.output_tail) {
    rows.push(el("tr", { class: "output-row" },
      el("td", { colspan: 6 }, el("pre", { class: "output", "data-output": step.index }, step.output_tail))));
  }
  return rows;
}

function pipelineView(id) {
  const head = el("div");
  const stepsBody = el("tbody");
  render(
    el("section", { id: "pipeline" }, head),
    el("section", {}, el("h2", {}, "Steps"),
      el("table", { id: "steps" }, el("thead", {}, el("tr", {},
        ["#", "Step", "State", "Started", "Time", "Message"].map((h) => el("th", {}, h)))), stepsBody)));
  const cancel = async () => {
    try {
      await api(`/api/pipelines/${id}/cancel`, { method: "POST", body: "{}" });
      showError(null);
    } catch (err) { showError(err); }
  };
  poll(async () => {
    const p = await api(`/api/pipelines/${id}`);
    fill(head,
      el("h2", {}, `${p.name} `, badge(p.state)),
      el("dl", { class: "facts" },
        el("dt", {}, "id"), el("dd", { class: "mono" }, p.id),
        el("dt", {}, "node"), el("dd", {}, p.node || p.node_requested || "any"),
        el("dt", {}, "created"), el("dd", {}, when(p.created_at)),
        el("dt", {}, "time"), el("dd", {}, duration(p.started_at, p.finished_at)),
        el("dt", {}, "reason"), el("dd", {}, p.reason || "–"),
        el("dt", {}, "message"), el("dd", { id: "pipeline-message" }, p.message || "–"),
        el("dt", {}, "args"), el("dd", { class: "mono" },
          Object.entries(p.args).map(([k, v]) => `${k}=${v}`).join("  ") || "–")),
      FINAL.has(p.state) ? null
        : el("p", {}, el("button", { id: "cancel", class: "danger", onclick: cancel,
          disabled: p.cancel_requested }, p.cancel_requested ? "Canceling…" : "Cancel pipeline")));
    fill(stepsBody, ...p.steps.flatMap(stepRows));
    return !FINAL.has(p.state);
  }, PIPELINE_POLL_MS);
}

// --- submit from a template ---------------------------------------------------------

function argName(item) {
  return typeof item === "string" ? item : item.name;
}

function field(kind, item, secret) {
  const name = argName(item);
  let help = typeof item === "string" ? "" : item.description || "";
  if (item.provided_by_server) help = `${help} (the server provides it; leave empty)`.trim();
  return el("label", {},
    el("span", { class: "mono" }, `${kind}.${name}`),
    el("input", { name: `${kind}.${name}`, type: secret ? "password" : "text", "data-field": `${kind}.${name}` }),
    help ? el("small", {}, help) : null);
}

function pairs(text, what) {
  const result = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`${what}: "${line}" is not KEY=VALUE; write one KEY=VALUE a line`);
    result[line.slice(0, at)] = line.slice(at + 1);
  }
  return result;
}

const DOCUMENT = "(a pipeline document)";

async function submitView() {
  let templates = [];
  let unlisted = "";
  try {
    const answer = await api("/api/templates");
    templates = Array.isArray(answer) ? answer : answer.templates;
  } catch (err) {
    unlisted = `This server lists no templates (${err.message}); paste a document instead.`;
  }
  const { nodes } = await api("/api/nodes");
  const fields = el("div");
  const description = el("p", { class: "muted" }, unlisted);
  const select = el("select", { id: "template", name: "template" },
    el("option", { value: "" }, "choose a template"),
    templates.map((t) => el("option", { value: t.name }, t.name)),
    el("option", { value: DOCUMENT }, DOCUMENT));
  const node = el("select", { id: "node", name: "node" },
    el("option", { value: "" }, "any node with room"),
    nodes.filter((n) => n.mode === "active").map((n) => el("option", { value: n.node_id }, n.node_id)));
  const documentFields = () => [
    el("label", {}, el("span", {}, "Document (YAML or JSON)"),
      el("textarea", { id: "document", rows: 12, cols: 80, class: "mono" })),
    el("label", {}, el("span", {}, "Args, KEY=VALUE a line"),
      el("textarea", { id: "doc-args", rows: 3, cols: 60, class: "mono" })),
    el("label", {}, el("span", {}, "Envs, KEY=VALUE a line"),
      el("textarea", { id: "doc-envs", rows: 3, cols: 60, class: "mono" })),
  ];
  select.addEventListener("change", () => {
    if (select.value === DOCUMENT) {
      description.textContent = "Any pipeline document, as `POST /api/pipelines` takes it.";
      fill(fields, ...documentFields());
      return;
    }
    const chosen = templates.find((t) => t.name === select.value);
    description.textContent = chosen ? chosen.description || "" : unlisted;
    fill(fields, ...(chosen ? [
      ...(chosen.args || []).map((a) => field("args", a, false)),
      ...(chosen.envs || []).map((e) => field("envs", e, true)),
    ] : []));
  });
  const form = el("form", { class: "submit", id: "submit-form" },
    el("label", {}, el("span", {}, "Template"), select), description, fields,
    el("label", {}, el("span", {}, "Node"), node),
    el("button", { type: "submit", id: "submit" }, "Submit"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      let body;
      if (select.value === DOCUMENT) {
        body = {
          pipeline: document.getElementById("document").value,
          args: pairs(document.getElementById("doc-args").value, "args"),
          envs: pairs(document.getElementById("doc-envs").value, "envs"),
        };
      } else {
        if (!select.value) throw new Error("choose a template, or paste a document");
        body = { template: select.value, args: {}, envs: {} };
        for (const input of fields.querySelectorAll("input")) {
          const [kind, name] = input.name.split(/\.(.*)/s);
          if (input.value !== "") body[kind][name] = input.value;
        }
      }
      if (node.value) body.node = node.value;
      const created = await api("/api/pipelines", { method: "POST", body: JSON.stringify(body) });
      showError(null);
      location.hash = `#/pipelines/${created.id}`;
    } catch (err) { showError(err); }
  });
  render(el("section", {}, el("h2", {}, "Submit a pipeline"), form));
}

// --- routing ------------------------------------------------------------------------

function route() {
  clearTimeout(timer);
  const hash = location.hash || "#/";
  const match = hash.match(/^#\/pipelines\/([^/]+)$/);
  if (match) pipelineView(decodeURIComponent(match[1]));
  else if (hash === "#/submit") submitView().catch(showError);
  else fleetView();
}

function setUpToken() {
  const input = document.getElementById("token");
  input.value = localStorage.getItem(TOKEN_KEY) || "";
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
    route();
  });
}

window.addEventListener("hashchange", route);
setUpToken();
route();
