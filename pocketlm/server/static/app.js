// pocketlm web chat: a client of the OpenAI-compatible API of the server that serves this page.
// Plain script, no build step, nothing loaded from the network.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), system: $("system"), maxTokens: $("max-tokens"), input: $("input"),
  send: $("send"), stop: $("stop"), newChat: $("new-chat"), messages: $("messages"),
  error: $("error"), auth: $("auth"), apiKey: $("api-key"), composer: $("composer"),
};
const saved = {
  get: (name) => localStorage.getItem(`pocketlm.${name}`) || "",
  set: (name, value) => value ? localStorage.setItem(`pocketlm.${name}`, value)
                              : localStorage.removeItem(`pocketlm.${name}`),
};

let history = [];  // finished turns [{role, content}], sent again with every question
let running = null;  // AbortController of the answer being streamed, if any

class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

// -- talking to the server ------------------------------------------------------------------

// Paths are relative so that the page also works behind a proxy that adds a prefix.
async function api(path, options = {}) {
  const headers = { ...options.headers };
  const key = saved.get("apiKey");
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`cannot reach the pocketlm server at ${location.origin}: ` +
                       "is `pocketlm serve` still running?");
  }
  if (!response.ok) throw new ApiError(await errorText(response), response.status);
  return response;
}

// The message of {"error": {"message": ...}} (OpenAI) or {"error": "..."} (Ollama).
async function errorText(response) {
  const text = await response.text();
  try {
    const { error } = JSON.parse(text);
    const message = typeof error === "string" ? error : error && error.message;
    if (message) return message;
  } catch { /* not JSON: show the text itself */ }
  return `${response.status} ${response.statusText} ${text.slice(0, 300)}`.trim();
}

// The `data:` payloads of a server-sent event stream, one per event.
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const lines = (buffer + value).split(/\r\n|\r|\n/);
    buffer = lines.pop();  // an unfinished line waits for the next read
    for (const line of lines) {
      if (line === "") {
        if (data.length) yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }  // other fields and ": ping" comments are ignored
    }
  }
}

// -- the page ---------------------------------------------------------------------------------

function showError(error) {
  const status = error instanceof ApiError ? error.status : 0;
  ui.error.textContent = status === 401
    ? `${error.message}. Enter the server's API key below.` : String(error.message || error);
  ui.error.hidden = false;
  if (status === 401) {
    ui.auth.hidden = false;
    ui.apiKey.focus();
  }
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

async function loadModels() {
  try {
    const { data } = await (await api("v1/models")).json();
    const ids = data.map((m) => m.id);
    ui.model.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(saved.get("model"))) ui.model.value = saved.get("model");
    if (!ids.length) {
      showError("No models yet: pull one with `pocketlm pull smollm2-135m-instruct`, " +
                "then reload this page.");
    }
  } catch (e) {
    showError(e);
  }
}

function addMessage(role, text, label) {
  const message = document.createElement("article");
  message.className = `message ${role}`;
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = label;
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  message.append(who, content);
  ui.messages.append(message);
  scrollToEnd(true);
  return message;
}

function scrollToEnd(force) {
  const box = ui.messages;
  const nearEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  if (force || nearEnd) box.scrollTop = box.scrollHeight;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
}

// "42 tokens · 97.3 tok/s · first token 0.21 s": the rate counts the tokens after the first
// one over the time between the first and the last, so that it leaves out the prompt's
// processing (that is the time to the first token).
function statsText(answer, note) {
  const tokens = answer.usageTokens ?? answer.chunks;
  const parts = [`${tokens} token${tokens === 1 ? "" : "s"}`];
  const seconds = (answer.last - answer.first) / 1000;
  if (tokens > 1 && seconds > 0) parts.push(`${((tokens - 1) / seconds).toFixed(1)} tok/s`);
  parts.push(`first token ${((answer.first - answer.start) / 1000).toFixed(2)} s`);
  if (note) parts.push(note);
  return parts.join(" · ");
}

// -- one question and its streamed answer -------------------------------------------------

async function ask(question) {
  clearError();
  const model = ui.model.value;
  if (!model) return showError("Choose a model first.");
  const turn = { role: "user", content: question };
  const system = ui.system.value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...history, turn];
  const body = { model, messages, stream: true, stream_options: { include_usage: true } };
  const maxTokens = parseInt(ui.maxTokens.value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;

  const asked = addMessage("user", question, "You");
  const message = addMessage("assistant", "", model);
  const content = message.querySelector(".content");
  message.setAttribute("aria-busy", "true");
  const answer = { text: "", chunks: 0, usageTokens: null, start: performance.now() };
  let finish = null, failure = null, frame = 0;
  // Drawn at most once a frame: a small model can send thousands of pieces a second.
  const draw = () => { frame = 0; content.textContent = answer.text; scrollToEnd(false); };

  running = new AbortController();
  setBusy(true);
  try {
    const response = await api("v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), signal: running.signal,
    });
    let done = false;
    for await (const data of sseData(response)) {
      if (data === "[DONE]") { done = true; break; }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.message || String(chunk.error));
      if (chunk.usage) answer.usageTokens = chunk.usage.completion_tokens;
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.finish_reason) finish = choice.finish_reason;
      const piece = choice && choice.delta && choice.delta.content;
      if (!piece) continue;
      answer.last = performance.now();
      answer.first = answer.first || answer.last;
      answer.text += piece;
      answer.chunks += 1;
      frame = frame || requestAnimationFrame(draw);
    }
    if (!done) throw new ApiError("The server closed the stream before the answer was complete.");
  } catch (e) {
    if (e.name !== "AbortError") failure = e;
  }
  const stopped = running.signal.aborted;
  running = null;
  setBusy(false);
  cancelAnimationFrame(frame);
  draw();
  message.removeAttribute("aria-busy");
  if (failure) showError(failure);
  if (!message.isConnected) return;  // "New chat" was pressed meanwhile
  if (!answer.text) {
    // Nothing came back: take the question back, so that it can be sent again.
    asked.remove();
    message.remove();
    if (!ui.input.value) ui.input.value = question;
    return;
  }
  history.push(turn, { role: "assistant", content: answer.text });
  const note = stopped ? "stopped" : failure ? "interrupted"
    : finish === "length" ? "reached max tokens" : "";
  const stats = document.createElement("p");
  stats.className = "stats";
  stats.textContent = statsText(answer, note);
  message.append(stats);
  scrollToEnd(false);
}

// -- wiring -----------------------------------------------------------------------------------

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const question = ui.input.value.trim();
  if (running || !question) return;
  ui.input.value = "";
  ask(question);
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => running && running.abort());

ui.newChat.addEventListener("click", () => {
  if (running) running.abort();
  history = [];
  ui.messages.replaceChildren();
  clearError();
  ui.input.focus();
});

ui.model.addEventListener("change", () => saved.set("model", ui.model.value));
ui.system.addEventListener("change", () => saved.set("system", ui.system.value));

ui.auth.addEventListener("submit", (event) => {
  event.preventDefault();
  saved.set("apiKey", ui.apiKey.value.trim());
  ui.apiKey.value = "";
  ui.auth.hidden = true;
  clearError();
  loadModels();
});

ui.system.value = saved.get("system");
loadModels();
ui.input.focus();
