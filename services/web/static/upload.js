// The upload page: send the chosen file to /api/classify and show the answer, its Grad-CAM or the refusal.
"use strict";

let lastFile = null;

function show(id, visible) {
  document.getElementById(id).hidden = !visible;
}

function percent(value) {
  return (100 * value).toFixed(1) + "%";
}

function showRefusal(refusal) {
  document.getElementById("refusal-title").textContent = refusal.title;
  document.getElementById("refusal-sentence").textContent = refusal.sentence;
  document.getElementById("refusal-detail").textContent = refusal.detail;
  document.getElementById("refusal-code").textContent = refusal.code;
  document.getElementById("refusal").dataset.code = refusal.code;
  show("refusal", true);
}

function cardLinks(answer) {
  const cards = document.getElementById("result-cards");
  cards.replaceChildren();
  if (answer.served) {
    const run = encodeURIComponent(answer.served.run);
    cards.append(
      el("a", { id: "model-card-link", href: "/report?run=" + run + "#card-" + answer.served.strategy },
        "model card (" + answer.served.strategy + ", run " + answer.served.run + ")"),
      document.createTextNode(", "),
      el("a", { id: "dataset-card-link", href: "/report?run=" + run + "#card-dataset" }, "dataset card"));
  } else {
    cards.append(
      document.createTextNode("this model version is not among the latest runs' models; "),
      el("a", { id: "dataset-card-link", href: "/report#cards" }, "cards of the latest run"));
  }
}

function showAnswer(answer) {
  const p = answer.pneumonia_probability;
  document.getElementById("result-label").textContent = answer.label;
  document.getElementById("result").dataset.label = answer.label;
  document.getElementById("result-probability").textContent = percent(p);
  const threshold = answer.decision_threshold;
  const known = threshold !== null && threshold !== undefined;
  document.getElementById("result-threshold").textContent = !known
    ? "not reported by the classifier"
    : percent(threshold) + (answer.threshold_source === "answer" ? "" : " (as recorded with the served model's run)");
  document.getElementById("result-model").textContent = answer.model;
  document.getElementById("result-version").textContent = answer.model_version;
  document.getElementById("bar-fill").style.width = percent(p);
  const marker = document.getElementById("bar-threshold");
  marker.hidden = !known;
  if (!marker.hidden) marker.style.left = percent(threshold);
  cardLinks(answer);
  const overlay = document.getElementById("overlay");
  if (answer.overlay) {
    overlay.src = answer.overlay;
    overlay.hidden = false;
  } else {
    overlay.hidden = true;
    document.getElementById("overlay-caption").textContent = answer.overlay_note || "No Grad-CAM overlay.";
  }
  show("result", true);
}

async function classify(file) {
  lastFile = file;
  show("result", false);
  show("refusal", false);
  const status = document.getElementById("status");
  if (!savedToken()) {
    status.textContent = "Enter the operator's token above first; the image is sent once you have.";
    showTokenState("Enter the operator's token first.");
    return;
  }
  status.textContent = "Asking the classifier about " + file.name + " ...";
  const original = document.getElementById("original");
  original.src = URL.createObjectURL(file); // a DICOM does not display; the overlay shows it as the model saw it
  let response;
  try {
    response = await api("/api/classify", {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: file,
    });
  } catch (error) {
    status.textContent = "The web service did not answer: " + error;
    return;
  }
  const body = await response.json().catch(() => ({ detail: "an answer that is not JSON" }));
  if (response.ok) {
    status.textContent = "Answered for " + file.name + ".";
    showAnswer(body);
  } else if (response.status === 401) {
    status.textContent = "The image was not sent: the token is missing or not accepted.";
  } else if (body.refusal) {
    status.textContent = "No answer for " + file.name + ".";
    showRefusal(body.refusal);
  } else {
    status.textContent = "Failed (HTTP " + response.status + "): " + (body.detail || "");
  }
  document.body.dataset.state = response.ok ? "answered" : "refused";
}

function start() {
  setUpToken(() => {
    if (lastFile) classify(lastFile);
  });
  const input = document.getElementById("file");
  input.addEventListener("change", () => {
    if (input.files.length) classify(input.files[0]);
  });
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
  });
}

start();
