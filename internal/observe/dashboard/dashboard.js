// Blixard dashboard: polls api/overview every 2 s and redraws the tables.
// Every value goes into the page through textContent, never as HTML.
"use strict";

const REFRESH_MS = 2000;

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tableId, rows, columns, emptyText) {
  const tbody = document.querySelector("#" + tableId + " tbody");
  const out = [];
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const col of columns) {
      const v = col(row);
      tr.appendChild(Array.isArray(v) ? cell(v[0], v[1]) : cell(v));
    }
    out.push(tr);
  }
  if (out.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(emptyText, "empty");
    td.colSpan = columns.length;
    tr.appendChild(td);
    out.push(tr);
  }
  tbody.replaceChildren(...out);
}

function cores(millis) { return (millis / 1000).toFixed(millis % 1000 === 0 ? 0 : 2); }
function mib(n) { return n >= 1024 ? (n / 1024).toFixed(1) + " GiB" : n + " MiB"; }
function when(t) { return t ? new Date(t).toLocaleTimeString() : ""; }
function st(s) { return [s, "st-" + s]; }

function render(o) {
  const status = document.getElementById("status");
  const lead = o.ready.leader ? "leader " + o.ready.leader : "no leader";
  status.textContent = "node " + o.node_id + " (" + o.view + " view), " + lead + ", term " + o.ready.term +
    ", applied " + o.ready.applied_index + (o.ready.ready ? "" : " — not ready: " + o.ready.reason) +
    " — updated " + when(o.generated_at);
  status.className = o.ready.ready ? "" : "notready";

  fill("members", o.members, [
    m => m.id + (m.self ? " (this node)" : ""),
    m => m.addr,
    m => st(m.role),
    m => m.leader ? "★ leader" : "",
  ], "no members");

  fill("workers", o.workers, [
    w => w.id,
    w => w.addr,
    w => st(w.state),
    w => w.schedulable ? "yes" :
      w.cordoned ? "no: cordoned" + (w.cordon_reason ? " (" + w.cordon_reason + ")" : "") :
      "no" + (w.unschedulable_reason ? ": " + w.unschedulable_reason : ""),
    w => cores(w.reserved.cpu_millis) + " / " + cores(w.capacity.cpu_millis),
    w => mib(w.reserved.memory_mib) + " / " + mib(w.capacity.memory_mib),
    w => w.usage ? w.usage.running_tasks : "",
  ], "no workers registered");

  const counts = Object.entries(o.tasks.counts).filter(([, n]) => n > 0).map(([s, n]) => s + " " + n);
  document.getElementById("task-counts").textContent =
    o.tasks.total + " tasks" + (counts.length ? ": " + counts.join(", ") : "") +
    (o.tasks.total > o.tasks.recent.length ? " (newest " + o.tasks.recent.length + " below)" : "");
  fill("tasks", o.tasks.recent, [
    t => t.id,
    t => t.name,
    t => t.command,
    t => st(t.state),
    t => t.worker || "",
    t => t.attempts,
    t => t.signal ? t.signal : (t.exit_code === undefined ? "" : t.exit_code),
    t => when(t.created_at),
    t => t.pending_reason,
  ], "no tasks");

  fill("vms", o.vms, [
    v => v.name,
    v => st(v.state),
    v => v.desired,
    v => v.worker || "",
    v => v.vcpus,
    v => mib(v.memory_mib),
    v => v.restarts,
    v => v.reason,
  ], "no VMs");
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("api/overview", { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
  } catch (err) {
    status.textContent = "cannot reach the node (" + err.message + "); showing the last answer";
    status.className = "stale";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

document.addEventListener("DOMContentLoaded", refresh);
