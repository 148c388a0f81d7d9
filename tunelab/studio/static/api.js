// The API client: the key lives in sessionStorage, every call carries it, a 401 logs out.
const KEY = "tunelab.apiKey";

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || (typeof body === "string" ? body : `HTTP ${status}`));
    this.status = status;
    this.code = err.code || "http_error";
    this.details = err.details || {};
  }
}

function headers(key, extra = {}) {
  return { Authorization: `Bearer ${key ?? getKey() ?? ""}`, ...extra };
}

/** fetch() a JSON API path; throws ApiError on non-2xx, and logs out on 401. */
export async function api(path, { method = "GET", json, body, key, signal } = {}) {
  const extra = json !== undefined ? { "Content-Type": "application/json" } : {};
  const response = await fetch(path, {
    method,
    headers: headers(key, extra),
    body: json !== undefined ? JSON.stringify(json) : body,
    signal,
  });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (response.status === 401 && key === undefined) {
    clearKey();
    window.dispatchEvent(new CustomEvent("tunelab:logout", { detail: "Your session has ended: log in again." }));
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Check a key without storing it; answers its name and scopes (any key may ask). */
export async function verifyKey(key) {
  return api("/v1/keys/me", { key });
}

// What the logged-in key may do: "inference", "tune", "admin" (each includes the ones before).
// Set at login and on load; the pages hide what the key lacks (the server refuses it anyway).
let scopes = [];
export const can = (scope) => scopes.includes(scope);
export function setScopes(granted) {
  scopes = granted;
  for (const s of ["inference", "tune", "admin"]) document.body.classList.toggle(`can-${s}`, granted.includes(s));
}

/**
 * POST to the OpenAI-style streaming chat endpoint and call onText for every text delta.
 * Reads the server-sent events as they arrive; asks for the final usage chunk
 * (stream_options.include_usage) and answers {finish, usage}.
 */
export async function streamChat(body, onText, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(undefined, { "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) {
    const type = response.headers.get("content-type") || "";
    const data = type.includes("json") ? await response.json() : await response.text();
    if (response.status === 401) {
      clearKey();
      window.dispatchEvent(new CustomEvent("tunelab:logout", { detail: "Your session has ended: log in again." }));
    }
    throw new ApiError(response.status, data);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  let usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") return { finish, usage };
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new ApiError(500, chunk); // generation failed after the stream opened
        if (chunk.usage) usage = chunk.usage; // the last chunk, with no choices
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) onText(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  return { finish, usage };
}
