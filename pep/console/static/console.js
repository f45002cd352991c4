// The console's one script: live updates of the decision stream (server-sent events).
// Served by Tessera itself; the pages carry no inline script.
"use strict";

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text || "";
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function follow(live) {
  const body = document.querySelector("#decisions tbody");
  const query = new URLSearchParams(new FormData(document.getElementById("filters")));
  query.set("after", live.dataset.after || "0");
  const source = new EventSource("/console/decisions/stream?" + query.toString());
  source.onmessage = (event) => {
    const d = JSON.parse(event.data);
    const row = document.createElement("tr");
    const link = document.createElement("a");
    link.href = "/console/decisions/" + encodeURIComponent(d.id);
    link.textContent = d.at;
    cell(row, "").appendChild(link);
    cell(row, d.agent); cell(row, d.user); cell(row, d.action); cell(row, d.resource);
    cell(row, d.effect, d.effect); cell(row, d.rules);
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(-1);
  };
  source.onerror = () => { live.textContent = "reconnecting"; };
  source.onopen = () => { live.textContent = "live"; };
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) follow(live);
});
