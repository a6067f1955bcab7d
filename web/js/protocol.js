// The wire contract the page speaks (docs/protocol.md): topics, request shapes and
// what the server's answer codes mean to a person.

export const ROOT = 'gochat/v1';
export const REQUEST_TIMEOUT_MS = 10_000; // as the appliance waits
export const HEARTBEAT_MS = 10_000;
const USER_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const AUDIO_TOPIC = /^gochat\/v1\/room\/([^/]+)\/audio\/([^/]+)$/;

export const topics = {
  request: (me, method) => `${ROOT}/req/${me}/${method}`,
  response: (me) => `${ROOT}/resp/${me}`,
  inbox: (me) => `${ROOT}/user/${me}/inbox`,
  presence: (me) => `${ROOT}/presence/${me}`,
  state: (roomId) => `${ROOT}/room/${roomId}/state`,
  audio: (roomId, userId) => `${ROOT}/room/${roomId}/audio/${userId}`,
  roomAudio: (roomId) => `${ROOT}/room/${roomId}/audio/+`,
};

export function isUserId(value) {
  return typeof value === 'string' && USER_ID.test(value);
}

/** {roomId, userId} of an audio topic, or null. */
export function parseAudioTopic(topic) {
  const match = AUDIO_TOPIC.exec(topic);
  if (!match || !isUserId(match[2])) return null;
  return { roomId: match[1], userId: match[2] };
}

/** A refused request: the server's code and message. */
export class RequestError extends Error {
  constructor(method, code, message) {
    super(`${method}: ${code} ${message}`);
    this.method = method;
    this.code = code;
    this.serverMessage = message;
  }
}

/** What a refusal means, in words a person can act on. */
export function explain(error) {
  if (!(error instanceof RequestError)) return error?.message ?? String(error);
  switch (error.code) {
    case 401: return 'Your session ended; logging in again.';
    case 403: return `Not allowed: ${error.serverMessage}.`;
    case 404: return `Not found: ${error.serverMessage}.`;
    case 409: return `Not now: ${error.serverMessage}.`;
    case 410: return 'That room has closed.';
    case 429: return 'Too many requests at once; try again in a moment.';
    default: return `The server refused: ${error.serverMessage} (${error.code}).`;
  }
}
