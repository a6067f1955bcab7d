// The page's link to the broker: MQTT 5 over WebSockets (docs/protocol.md 1.4, 3).
//
// One fresh MQTT.js client per connection attempt (MQTT.js's own reconnect is off), so
// an unanswered request is never re-sent on a later connection; between attempts a
// jittered exponential backoff, 1 s doubling to 30 s. Every accepted connection
// subscribes the response and inbox topics and whatever the page asked for, publishes
// presence `online` (the Will says `offline`), and then emits `connected`.
// Requests carry ResponseTopic and fresh CorrelationData; a PUBACK with reason 0x10 (no
// subscribers) means the server is not connected, and the request fails at once.

import { REQUEST_TIMEOUT_MS, RequestError, topics } from './protocol.js';

export const CONNECTING = 'connecting';
export const ONLINE = 'online';
export const OFFLINE = 'offline';
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30_000;
const CONNECT_TIMEOUT_MS = 5000;
const KEEPALIVE_S = 15;
const AUTH_CODES = new Set([4, 5, 134, 135]); // 3.1.1 and 5 "bad user name or password", "not authorized"
const NO_SUBSCRIBERS = 0x10;

/** Why the link or a request failed: `kind` is auth, unreachable, offline, no-server or timeout. */
export class LinkError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

export class Link extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.url the broker's WebSocket URL
   * @param {object} options.mqtt the MQTT.js module (its `connect`)
   */
  constructor({ url, mqtt, random = Math.random, timers = globalThis }) {
    super();
    this.url = url;
    this.mqtt = mqtt;
    this.random = random;
    this.timers = timers;
    this.state = OFFLINE;
    this.user = null;
    this._password = null;
    this._client = null;
    this._everConnected = false;
    this._closed = false;
    this._backoffMs = BACKOFF_FIRST_MS;
    this._retryTimer = null;
    this._pending = new Map(); // correlation (hex) -> {resolve, reject, timer, method}
    this._byPacketId = new Map(); // MQTT packet id -> correlation (hex)
    this._subscriptions = new Map(); // topic -> subscribe options
    this._firstLogin = null;
    this.lastRefusal = null;
  }

  /**
   * Connect as `user`; resolves at the first accepted connection, rejects with
   * LinkError('auth') or LinkError('unreachable'). Later losses reconnect by themselves.
   */
  connect(user, password) {
    this.user = user;
    this._password = password;
    this._closed = false;
    return new Promise((resolve, reject) => {
      this._firstLogin = { resolve, reject };
      this._attempt();
    });
  }

  /** Send a request; resolves with its `data`, rejects with RequestError or LinkError. */
  request(method, payload = {}, { timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
    const client = this._client;
    if (this.state !== ONLINE || client === null) {
      return Promise.reject(new LinkError('offline', 'not connected to the broker'));
    }
    const correlation = crypto.getRandomValues(new Uint8Array(16));
    const id = hex(correlation);
    return new Promise((resolve, reject) => {
      const timer = this.timers.setTimeout(() => {
        this._settle(id, null, new LinkError('timeout', `the server did not answer ${method}`));
      }, timeoutMs);
      this._pending.set(id, { resolve, reject, timer, method });
      const options = { qos: 1, properties: { responseTopic: topics.response(this.user), correlationData: correlation } };
      client.publish(topics.request(this.user, method), JSON.stringify(payload), options, (error) => {
        if (error) this._settle(id, null, new LinkError('refused', `the broker refused ${method}: ${error.message}`));
      });
    });
  }

  /** Subscribe now (if online) and again after every reconnection. */
  subscribe(topic, options = { qos: 1 }) {
    this._subscriptions.set(topic, options);
    if (this.state === ONLINE) this._client.subscribe(topic, options);
  }

  unsubscribe(topic) {
    if (!this._subscriptions.delete(topic)) return;
    if (this.state === ONLINE) this._client.unsubscribe(topic);
  }

  /** A QoS 0 audio frame; dropped while offline (audio is never queued). */
  publishAudio(topic, bytes) {
    if (this.state !== ONLINE) return false;
    this._client.publish(topic, bytes, { qos: 0 });
    return true;
  }

  /** Say `offline` and disconnect cleanly (no Will); no reconnection after this. */
  async close() {
    this._closed = true;
    this.timers.clearTimeout(this._retryTimer);
    const client = this._client;
    this._client = null;
    this._failPending(new LinkError('offline', 'logged out'));
    if (client && this.state === ONLINE) {
      await new Promise((resolve) => {
        client.publish(topics.presence(this.user), 'offline', { qos: 1, retain: true }, () => resolve());
        this.timers.setTimeout(resolve, 1000);
      });
    }
    if (client) client.end(false);
    this._setState(OFFLINE, {});
  }

  _attempt() {
    this._setState(CONNECTING, {});
    const user = this.user;
    const client = this.mqtt.connect(this.url, {
      protocolVersion: 5,
      clientId: user,
      username: user,
      password: this._password,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: CONNECT_TIMEOUT_MS,
      keepalive: KEEPALIVE_S,
      resubscribe: false,
      queueQoSZero: false,
      will: { topic: topics.presence(user), payload: 'offline', qos: 1, retain: true },
    });
    this._client = client;
    let refusedCode = null;
    client.on('connect', () => this._onConnect(client));
    client.on('error', (error) => {
      if (AUTH_CODES.has(error.code)) refusedCode = error.code;
    });
    client.on('close', () => this._onClose(client, refusedCode));
    client.on('message', (topic, payload, packet) => this._onMessage(topic, payload, packet));
    client.on('packetsend', (packet) => {
      const correlation = packet.cmd === 'publish' && packet.properties?.correlationData;
      if (correlation) this._byPacketId.set(packet.messageId, hex(correlation));
    });
    client.on('packetreceive', (packet) => {
      if (packet.cmd !== 'puback') return;
      const id = this._byPacketId.get(packet.messageId);
      this._byPacketId.delete(packet.messageId);
      if (id && packet.reasonCode === NO_SUBSCRIBERS) {
        this._settle(id, null, new LinkError('no-server', 'the GoChat server is not connected'));
      }
    });
  }

  _onConnect(client) {
    if (client !== this._client) return;
    const base = [topics.response(this.user), topics.inbox(this.user)];
    const wanted = new Map(base.map((topic) => [topic, { qos: 1 }]));
    for (const [topic, options] of this._subscriptions) wanted.set(topic, options);
    const subscribed = [...wanted].map(([topic, options]) => new Promise((resolve) => client.subscribe(topic, options, resolve)));
    Promise.all(subscribed).then(() => {
      if (client !== this._client) return;
      client.publish(topics.presence(this.user), 'online', { qos: 1, retain: true });
      this._backoffMs = BACKOFF_FIRST_MS;
      this._everConnected = true;
      this.lastRefusal = null;
      this._setState(ONLINE, {});
      if (this._firstLogin) {
        this._firstLogin.resolve();
        this._firstLogin = null;
      }
      this.dispatchEvent(new Event('connected'));
    });
  }

  _onClose(client, refusedCode) {
    if (client !== this._client) return;
    client.end(true);
    this._client = null;
    this._byPacketId.clear();
    this._failPending(new LinkError('offline', 'the connection to the broker was lost'));
    if (this._closed) return;
    if (!this._everConnected) {
      const error = refusedCode !== null
        ? new LinkError('auth', 'wrong user name or password')
        : new LinkError('unreachable', `cannot reach the broker at ${this.url}`);
      this._closed = true;
      this._setState(OFFLINE, { error });
      this._firstLogin?.reject(error);
      this._firstLogin = null;
      return;
    }
    this.lastRefusal = refusedCode;
    const wait = this._backoffMs * (0.5 + this.random() / 2);
    this._backoffMs = Math.min(this._backoffMs * 2, BACKOFF_MAX_MS);
    this._setState(OFFLINE, { retryInMs: wait, refused: refusedCode !== null });
    this._retryTimer = this.timers.setTimeout(() => this._attempt(), wait);
  }

  _onMessage(topic, payload, packet) {
    if (topic === topics.response(this.user)) {
      this._onResponse(payload, packet);
      return;
    }
    this.dispatchEvent(Object.assign(new Event('message'), { topic, payload, retain: Boolean(packet.retain) }));
  }

  _onResponse(payload, packet) {
    const correlation = packet.properties?.correlationData;
    if (!correlation) return;
    const id = hex(correlation);
    let answer;
    try {
      answer = JSON.parse(new TextDecoder().decode(payload));
    } catch {
      return;
    }
    const pending = this._pending.get(id);
    if (!pending || typeof answer?.code !== 'number') return;
    if (answer.code === 0) this._settle(id, answer.data ?? {}, null);
    else this._settle(id, null, new RequestError(pending.method, answer.code, String(answer.message ?? '')));
  }

  _settle(id, data, error) {
    const pending = this._pending.get(id);
    if (!pending) return;
    this._pending.delete(id);
    this.timers.clearTimeout(pending.timer);
    if (error) pending.reject(error);
    else pending.resolve(data);
  }

  _failPending(error) {
    for (const id of [...this._pending.keys()]) this._settle(id, null, error);
  }

  _setState(state, detail) {
    this.state = state;
    this.dispatchEvent(Object.assign(new Event('state'), { state, detail }));
  }
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
