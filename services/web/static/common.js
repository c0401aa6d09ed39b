// Shared by the pages: the operator's bearer token (asked once, kept in this tab's sessionStorage) and API calls.
"use strict";

const TOKEN_KEY = "pneumonia-web-token";

function savedToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function showTokenState(message) {
  const form = document.getElementById("token-form");
  const state = document.getElementById("token-state");
  const has = savedToken() !== "";
  form.hidden = has;
  state.hidden = !has;
  document.getElementById("token-message").textContent = message || "";
}

function setUpToken(onChange) {
  const form = document.getElementById("token-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-input");
    const value = input.value.trim();
    if (value) {
      sessionStorage.setItem(TOKEN_KEY, value);
      input.value = "";
      showTokenState("");
      if (onChange) onChange();
    }
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenState("Token forgotten.");
  });
  showTokenState("");
}

// fetch() with the token; a 401 clears it and asks for it again. Resolves to the Response.
async function api(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  const token = savedToken();
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options || {}, { headers: headers }));
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenState(token ? "The token was not accepted: enter it again." : "Enter the operator's token first.");
  }
  return response;
}

function el(tag, attributes, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}
