// The HTTP API as the page calls it: convserve.v1 as Connect JSON calls, with the time the
// server took (its Server-Timing header), the call as a curl command, and errors in words.

const SERVICE = "/convserve.v1.ConvServe/";
const TOKEN_KEY = "convserve-token";

export class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code; // the Connect code, e.g. "not_found"; "unavailable" when unreachable
    this.status = status; // the HTTP status, 0 when the server did not answer
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value.trim());
}

// POST one method; resolves to {body, call}: the answer, and what the call was
// ({method, curl, serverMs, totalMs}). Rejects with an ApiError carrying `call` too.
export async function call(method, request) {
  const body = JSON.stringify(request);
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const record = { method, curl: curl(method, body), serverMs: null, totalMs: null };
  const started = performance.now();
  let response;
  try {
    response = await fetch(SERVICE + method, { method: "POST", headers, body });
  } catch {
    throw withCall(new ApiError(
      `The server at ${location.origin} does not answer: is convserve still running?`,
      "unavailable", 0), record);
  }
  const text = await response.text();
  record.totalMs = performance.now() - started;
  const timing = /dur=([\d.]+)/.exec(response.headers.get("Server-Timing") || "");
  record.serverMs = timing ? Number(timing[1]) : null;
  let answer;
  try {
    answer = JSON.parse(text);
  } catch {
    throw withCall(new ApiError(
      `The server answered ${response.status} with something that is not JSON`,
      "unknown", response.status), record);
  }
  if (!response.ok) throw withCall(inWords(answer, response.status), record);
  return { body: answer, call: record };
}

function withCall(error, record) {
  error.call = record;
  return error;
}

function inWords(answer, status) {
  const code = answer.code || "unknown";
  const said = answer.message || answer.error || `HTTP ${status}`;
  const words = {
    unauthenticated: `This server needs a token: enter it above. (${said})`,
    permission_denied: `The token does not allow this call: ${said}`,
    not_found: `Not found: ${said}`,
    invalid_argument: `The server could not use this: ${said}`,
    resource_exhausted: status === 413 ? `Too large for this server: ${said}`
      : `The server is busy; try again in a moment. (${said})`,
    unavailable: `The server cannot answer now: ${said}`,
    deadline_exceeded: `The server took too long: ${said}`,
    failed_precondition: `This model cannot do that: ${said}`,
  };
  return new ApiError(words[code] || `The server failed (${code}): ${said}`, code, status);
}

// The call as a shell command; the token as $TOKEN, never its value.
function curl(method, body) {
  const auth = token() ? ` \\\n  -H "Authorization: Bearer $TOKEN"` : "";
  return `curl ${location.origin}${SERVICE}${method} \\\n  -H 'Content-Type: application/json'`
    + `${auth} \\\n  -d '${body.replaceAll("'", "'\\''")}'`;
}

// A model and version as the API names them (version 0: the latest).
export function spec(model, version) {
  return { name: model, version: String(version || 0) };
}
