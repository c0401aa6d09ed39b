// The report page: the chosen (or latest) run's report text, figures, dataset card and model cards.
"use strict";

function query(name) {
  return new URLSearchParams(window.location.search).get(name) || "";
}

async function loadCard(run, name, title) {
  const section = el("article", { id: "card-" + name, class: "card" });
  section.append(el("p", { class: "hint" }, title));
  document.getElementById("card-list").append(section);
  const response = await api("/api/report/card?run=" + encodeURIComponent(run) + "&name=" + encodeURIComponent(name));
  if (!response.ok) {
    section.append(el("p", {}, "Not available (HTTP " + response.status + ")."));
    return;
  }
  const body = await response.json();
  const content = el("div", { class: "markdown" });
  content.innerHTML = body.html; // rendered by services.web.markdown: every character of the card is escaped
  section.append(content);
}

async function loadFigure(run, name) {
  const figure = el("figure");
  const image = el("img", { alt: name });
  figure.append(image, el("figcaption", {}, name));
  document.getElementById("figures").append(figure);
  const response = await api(
    "/api/report/figure?run=" + encodeURIComponent(run) + "&name=" + encodeURIComponent(name));
  if (response.ok) image.src = URL.createObjectURL(await response.blob());
}

async function load() {
  const status = document.getElementById("status");
  if (!savedToken()) {
    status.textContent = "Enter the operator's token above to read the report.";
    return;
  }
  status.textContent = "Loading ...";
  const run = query("run");
  const response = await api("/api/report" + (run ? "?run=" + encodeURIComponent(run) : ""));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    status.textContent = body.detail || "Failed (HTTP " + response.status + ").";
    return;
  }
  document.getElementById("run-name").textContent = "run " + body.run;
  const runs = document.getElementById("runs");
  runs.replaceChildren(...body.runs.map((name) => {
    const option = el("option", { value: name }, name);
    if (name === body.run) option.selected = true;
    return option;
  }));
  document.getElementById("report-text").textContent = body.report;
  document.getElementById("card-list").replaceChildren();
  document.getElementById("figures").replaceChildren();
  const cards = [];
  if (body.dataset_card) cards.push(loadCard(body.run, "dataset", "Dataset card"));
  for (const strategy of body.model_cards) cards.push(loadCard(body.run, strategy, "Model card: " + strategy));
  if (!cards.length) document.getElementById("card-list").append(el("p", {}, "This run wrote no cards."));
  await Promise.all(cards.concat(body.figures.map((name) => loadFigure(body.run, name))));
  status.textContent = "Run " + body.run + ": " + body.figures.length + " figures, " + cards.length + " cards.";
  document.body.dataset.state = "loaded";
  if (window.location.hash) {
    const target = document.getElementById(window.location.hash.slice(1));
    if (target) target.scrollIntoView();
  }
}

function start() {
  setUpToken(load);
  document.getElementById("runs").addEventListener("change", (event) => {
    window.location.search = "?run=" + encodeURIComponent(event.target.value);
  });
  load();
}

start();
