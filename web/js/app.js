// The page's controller: it turns clicks into requests, and what the server says
// (answers, the retained room state, inbox commands, voice keys) into the view, the
// microphone and the speakers. The server is the truth: a click shows its effect when
// the room state or the answer says so, never before.

import { Capture } from './capture.js';
import { CONNECTING, Link, LinkError, OFFLINE, ONLINE } from './link.js';
import { Playout } from './playout.js';
import { explain, HEARTBEAT_MS, RequestError, topics } from './protocol.js';
import { RoomModel } from './room.js';
import { decodeKey, Opener } from './voicecrypto.js';

const ROOM_PAGE = 50;
const ATTENDEE_PAGE = 200;
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30_000;
const ATTENDEES_EVERY_MS = 500;
const SPEAKING_EVERY_MS = 100;

export class App {
  constructor({ mqtt, brokerUrl, view }) {
    this.mqtt = mqtt;
    this.brokerUrl = brokerUrl;
    this.view = view;
    this.link = null;
    this.user = null;
    this.model = null;
    this.invitation = null;
    this.ctx = null;
    this.audio = null; // Promise of {playout, capture}, or of null when the browser cannot
    this.opener = new Opener();
    this._heartbeat = null;
    this._attendeesAt = 0;
    this._attendeesTimer = null;
    this._loginRetry = RETRY_FIRST_MS;
    this._speakingTimer = null;
    view.bind(this._handlers());
    view.show('login');
  }

  _handlers() {
    const guard = (fn) => (...args) => fn.apply(this, args).catch((error) => this._failed(error));
    return {
      login: (user, password) => this.login(user, password),
      logout: guard(this.logout),
      createRoom: guard(this.createRoom),
      joinRoom: guard(this.joinRoom),
      refreshRooms: guard(this.refreshRooms),
      raiseHand: guard(this.raiseHand),
      toggleMic: guard(this.toggleMic),
      leave: guard(this.leave),
      closeRoom: guard(this.closeRoom),
      answerInvite: guard(this.answerInvite),
      invite: guard(this.invite),
      mute: guard(this.mute),
      remove: guard(this.remove),
      startAudio: () => this.ctx?.resume(),
    };
  }

  // ------------------------------------------------------------ session

  async login(user, password) {
    this.view.loginError(null);
    if (!user || !password) {
      this.view.loginError('Enter a user name and a password.');
      return;
    }
    this.view.busy('login-submit', true);
    this._startAudio(); // inside the click: the browser lets sound start
    const link = new Link({ url: this.brokerUrl, mqtt: this.mqtt });
    link.addEventListener('state', (event) => this._onLinkState(event.state, event.detail));
    link.addEventListener('connected', () => this._onConnected().catch((error) => this._failed(error)));
    link.addEventListener('message', (event) => this._onMessage(event.topic, event.payload, event.retain));
    this.link = link;
    this.user = user;
    try {
      await link.connect(user, password);
    } catch (error) {
      this.link = null;
      this.user = null;
      this.view.loginError(error.kind === 'auth'
        ? 'Wrong user name or password.'
        : `Cannot reach the broker (${this.brokerUrl}). Check that it runs, then try again.`);
      return;
    } finally {
      this.view.busy('login-submit', false);
    }
    this.view.user(user);
    this.view.$('login-password').value = '';
  }

  async logout() {
    const link = this.link;
    this.link = null;
    clearInterval(this._heartbeat);
    await this._leaveLocal();
    if (link?.state === ONLINE) await link.request('logout').catch(() => {});
    await link?.close();
    this.user = null;
    this.view.user(null);
    this.view.clearNotice();
    this.view.show('login');
  }

  /** Every accepted connection: log in (again), then back into the room we were in. */
  async _onConnected() {
    if (!(await this._sessionLogin())) return;
    clearInterval(this._heartbeat);
    this._heartbeat = setInterval(() => this._beat().catch((error) => this._failed(error)), HEARTBEAT_MS);
    if (this.model) await this._rejoin();
    else {
      this.view.show('lobby');
      this._idleAudio(true);
      await this.refreshRooms();
    }
  }

  /** `login`, retried while the server does not answer (1 s, 2 s, ... 30 s). */
  async _sessionLogin() {
    const link = this.link;
    for (;;) {
      if (this.link !== link || link.state !== ONLINE) return false;
      try {
        await link.request('login', { name: this.user.slice(0, 32) });
        this._loginRetry = RETRY_FIRST_MS;
        this.view.clearNotice('warning');
        return true;
      } catch (error) {
        if (!(error instanceof LinkError) || !['no-server', 'timeout'].includes(error.kind)) throw error;
        const wait = this._loginRetry;
        this._loginRetry = Math.min(this._loginRetry * 2, RETRY_MAX_MS);
        this.view.notice(`The GoChat server is not answering. Trying again in ${Math.round(wait / 1000)} s…`, 'warning');
        await sleep(wait);
      }
    }
  }

  async _beat() {
    if (this.link?.state !== ONLINE) return;
    let data;
    try {
      data = await this.link.request('heartbeat');
    } catch (error) {
      if (error instanceof RequestError && error.code === 401) {
        await this._onConnected();
        return;
      }
      if (error instanceof LinkError && ['no-server', 'timeout'].includes(error.kind)) {
        this.view.notice('The GoChat server is not answering; the room may be out of date.', 'warning');
        return;
      }
      throw error;
    }
    this.view.clearNotice('warning');
    const model = this.model;
    if (!model) return;
    if (data.room_id !== model.roomId) await this._rejoin();
    else if (data.room_version > model.version) this._resubscribeState(model.roomId);
  }

  _onLinkState(state, detail) {
    const text = {
      [CONNECTING]: 'connecting…',
      [ONLINE]: 'online',
      [OFFLINE]: detail.retryInMs ? `offline · retrying in ${Math.ceil(detail.retryInMs / 1000)} s` : 'offline',
    }[state];
    this.view.connection(state, text);
    if (state === OFFLINE && detail.retryInMs !== undefined) {
      this.view.notice(detail.refused
        ? 'The broker refused this account; trying again…'
        : 'Lost the connection to the broker. Reconnecting by itself…', 'error');
    } else if (state === ONLINE) {
      this.view.clearNotice('error');
    }
  }

  // ------------------------------------------------------------ rooms

  async refreshRooms() {
    const data = await this.link.request('get_room_list', { page_size: ROOM_PAGE });
    this.view.rooms(Array.isArray(data.rooms) ? data.rooms : []);
  }

  async createRoom(subject) {
    this.view.busy('create-room', true);
    try {
      const data = await this.link.request('create_room', { subject });
      await this._enter(data.room, data.media, null);
      this.view.$('create-subject').value = '';
    } finally {
      this.view.busy('create-room', false);
    }
  }

  async joinRoom(roomId) {
    if (this.model) await this._leaveLocal();
    const data = await this.link.request('login_room', { room_id: roomId });
    await this._enter(data.room, data.media, data.me);
  }

  async _rejoin() {
    const roomId = this.model.roomId;
    try {
      const data = await this.link.request('login_room', { room_id: roomId });
      if (this.model?.roomId !== roomId) return;
      this._addKey(data.media);
      this.model.setMe(data.me);
      this.model.adopt(data.room);
      this._resubscribeState(roomId);
      this._roomChanged();
    } catch (error) {
      if (error instanceof RequestError && [404, 410].includes(error.code)) await this._roomEnded();
      else throw error;
    }
  }

  async _enter(state, media, me) {
    const model = new RoomModel(this.user, state.room_id);
    model.adopt(state);
    model.setMe(me);
    this.model = model;
    this.invitation = null;
    this.opener.clear();
    const audio = await this.audio;
    audio?.playout.setRoom(model.roomId, this.user);
    audio?.capture.setTopic(topics.audio(model.roomId, this.user));
    this._addKey(media);
    this.link.subscribe(topics.state(model.roomId), { qos: 1 });
    this.link.subscribe(topics.roomAudio(model.roomId), { qos: 0, nl: true });
    this._idleAudio(false);
    this.view.memberItems.clear();
    this.view.$('member-list').replaceChildren();
    this.view.show('room');
    this.view.clearNotice('info');
    this._roomChanged();
    await this._fetchAttendees();
  }

  async leave() {
    const model = this.model;
    if (!model) return;
    await this._leaveLocal();
    this.view.show('lobby');
    await this.link.request('quit_room', { room_id: model.roomId }).catch((error) => {
      if (!(error instanceof RequestError)) throw error; // already gone: nothing to leave
    });
    await this.refreshRooms();
  }

  async closeRoom() {
    const model = this.model;
    if (!model) return;
    await this.link.request('close_room', { room_id: model.roomId });
    await this._roomEnded('You closed the room.');
  }

  async _roomEnded(text) {
    const subject = this.model?.subject ?? '';
    await this._leaveLocal();
    this.view.show('lobby');
    this.view.notice(text ?? `The room “${subject}” has ended: its host closed it.`, 'info');
    await this.refreshRooms().catch(() => {});
  }

  async _leaveLocal() {
    const model = this.model;
    this.model = null;
    this.invitation = null;
    clearTimeout(this._attendeesTimer);
    if (model && this.link) {
      this.link.unsubscribe(topics.state(model.roomId));
      this.link.unsubscribe(topics.roomAudio(model.roomId));
    }
    this.opener.clear();
    const audio = await this.audio;
    if (audio) {
      await audio.capture.stop();
      audio.capture.setTopic(null);
      audio.playout.setRoom(null, this.user);
    }
    if (!this.model) this._idleAudio(true);
  }

  /** Outside a room the audio graph sleeps (it costs CPU even playing silence). */
  _idleAudio(idle) {
    const ctx = this.ctx;
    if (!ctx || idle === Boolean(this._audioIdle)) return;
    this._audioIdle = idle;
    if (idle && ctx.state === 'running') ctx.suspend();
    if (!idle) ctx.resume();
  }

  _resubscribeState(roomId) {
    // The broker sends the retained state again on a new subscription.
    this.link.unsubscribe(topics.state(roomId));
    this.link.subscribe(topics.state(roomId), { qos: 1 });
  }

  // ------------------------------------------------------------ in the room

  async raiseHand() {
    const model = this.model;
    const data = await this.link.request('operate_raise_hand', { room_id: model.roomId, raise: !model.handRaised(this.user) });
    model.setMe(data.member);
    this._roomChanged();
  }

  async answerInvite(accept) {
    const invitation = this.invitation;
    if (!invitation || !this.model) return;
    this.invitation = null;
    this._render();
    const data = await this.link.request('response_onstage_invite', {
      room_id: this.model.roomId, invitation_id: invitation.invitation_id, accept,
    });
    this.model.setMe(data.me);
  }

  async toggleMic() {
    const model = this.model;
    const on = Boolean(model.seatOf(this.user)?.mic_on);
    if (on) await (await this.audio)?.capture.stop(); // stop at the request, not at the answer
    await this.link.request('set_user_info', { room_id: model.roomId, user_id: this.user, mic_on: !on });
  }

  invite(userId) {
    return this.link.request('invite_onstage', { room_id: this.model.roomId, user_id: userId });
  }

  mute(userId) {
    return this.link.request('set_user_info', { room_id: this.model.roomId, user_id: userId, mic_on: false });
  }

  remove(userId) {
    return this.link.request('set_user_info', { room_id: this.model.roomId, user_id: userId, role: 'listener' });
  }

  _onMessage(topic, payload, retain) {
    const model = this.model;
    if (model && topic.startsWith(`gochat/v1/room/${model.roomId}/audio/`)) {
      this.audio?.then((audio) => audio?.playout.onMessage(topic, payload, retain));
      return;
    }
    if (model && topic === topics.state(model.roomId)) {
      this._onState(payload);
      return;
    }
    if (this.user && topic === topics.inbox(this.user)) this._onInbox(payload);
  }

  _onState(payload) {
    if (payload.length === 0) {
      this._roomEnded().catch((error) => this._failed(error)); // cleared: the room is gone
      return;
    }
    const state = parseJson(payload);
    if (!state || !this.model.adopt(state)) return;
    if (this.model.closed) this._roomEnded().catch((error) => this._failed(error));
    else this._roomChanged();
  }

  _onInbox(payload) {
    const command = parseJson(payload);
    const model = this.model;
    if (!command || !model || command.room_id !== model.roomId) return;
    const name = (id) => model.members().find((m) => m.user_id === id)?.name ?? id;
    switch (command.type) {
      case 'invite_onstage':
        this.invitation = command;
        this._render();
        break;
      case 'invite_expired':
        if (this.invitation?.invitation_id === command.invitation_id) this.invitation = null;
        this._render();
        break;
      case 'invite_response':
        this.view.notice(`${name(command.user_id)} ${command.accepted ? 'accepted' : 'declined'} your invitation.`);
        break;
      case 'removed_from_stage':
        this.view.notice('The host took you off the stage.');
        break;
      case 'muted':
        this.audio?.then((audio) => audio?.capture.stop());
        this.view.notice('The host muted your microphone.');
        break;
      case 'hand_lowered':
        this.view.notice('The host lowered your hand.');
        break;
      case 'room_closed':
        this._roomEnded().catch((error) => this._failed(error));
        break;
      case 'media_key':
        this._addKey(command);
        break;
      default: // unknown types are ignored (docs/protocol.md 6.2)
    }
  }

  _addKey(media) {
    let key;
    try {
      key = decodeKey(media.key);
      this.opener.addKey(media.epoch, key);
    } catch {
      return; // a key that does not decode to 32 bytes is ignored
    }
    this.audio?.then((audio) => audio?.capture.setKey(media.epoch, key));
  }

  /** The room changed: follow it with the microphone, the speakers and the view. */
  _roomChanged() {
    const model = this.model;
    if (!model) return;
    if (model.seatOf(this.user)) this.invitation = null;
    this.audio?.then((audio) => {
      if (!audio || this.model !== model) return;
      audio.playout.setHeard(model.heard());
      if (model.canSpeak) {
        audio.capture.start().catch((error) => this.view.notice(`The microphone is not available: ${error.message}`, 'error'));
      } else {
        audio.capture.stop();
      }
    });
    this._maybeFetchAttendees();
    this._render();
  }

  _render() {
    const model = this.model;
    if (!model) return;
    this.view.room(model, {
      invitation: this.invitation,
      micOn: Boolean(model.seatOf(this.user)?.mic_on),
      speaking: (userId) => this._speaking(userId),
    });
  }

  _speaking(userId) {
    const audio = this._audioNow;
    if (!audio || !this.model) return false;
    if (userId === this.user) return audio.capture.speaking;
    return this.model.heard().has(userId) && audio.playout.speaking(userId);
  }

  _maybeFetchAttendees() {
    const model = this.model;
    const known = model.members().length;
    if (known === model.memberCount && model.raisedHands.every((h) => model.attendees.has(h.user_id) || model.seatOf(h.user_id))) return;
    clearTimeout(this._attendeesTimer);
    const wait = Math.max(0, this._attendeesAt + ATTENDEES_EVERY_MS - performance.now());
    this._attendeesTimer = setTimeout(() => this._fetchAttendees().catch((error) => this._failed(error)), wait);
  }

  async _fetchAttendees() {
    const model = this.model;
    if (!model) return;
    this._attendeesAt = performance.now();
    const data = await this.link.request('get_attendee_list', { room_id: model.roomId, page_size: ATTENDEE_PAGE });
    if (this.model !== model) return;
    model.setAttendees(Array.isArray(data.attendees) ? data.attendees : []);
    this._render();
  }

  // ------------------------------------------------------------ audio

  _startAudio() {
    if (this.ctx) {
      this.ctx.resume();
      return;
    }
    try {
      this.ctx = new AudioContext({ sampleRate: 48_000, latencyHint: 'interactive' });
    } catch (error) {
      this.audio = Promise.resolve(null);
      this.view.notice(`This browser cannot play the room's voice: ${error.message}`, 'error');
      return;
    }
    const ctx = this.ctx;
    const follow = () => this.view.startAudio(ctx.state !== 'running' && !this._audioIdle);
    ctx.addEventListener('statechange', follow);
    ctx.resume().finally(follow);
    this.audio = this._openAudio(ctx);
  }

  async _openAudio(ctx) {
    if (typeof AudioDecoder === 'undefined' || typeof AudioEncoder === 'undefined') {
      this.view.notice('This browser has no WebCodecs: you can take part, but not hear or speak.', 'error');
      return null;
    }
    const playout = await Playout.create(ctx, this.opener);
    const capture = new Capture(ctx, (topic, bytes) => this.link?.publishAudio(topic, bytes) ?? false);
    this._audioNow = { playout, capture };
    this._speakingTimer = setInterval(() => this.view.speaking((id) => this._speaking(id)), SPEAKING_EVERY_MS);
    return this._audioNow;
  }

  /** Figures for tests and benchmarks. */
  async stats() {
    const audio = await this.audio;
    return {
      link: this.link?.state ?? OFFLINE,
      room: this.model ? { room_id: this.model.roomId, version: this.model.version, epochs: this.opener.epochs() } : null,
      playout: audio?.playout.stats() ?? null,
      capture: audio ? { ...audio.capture.counters, active: audio.capture.active, epoch: audio.capture.sealer?.epoch ?? null } : null,
      audioContext: this.ctx?.state ?? null,
    };
  }

  _failed(error) {
    if (error instanceof RequestError && error.code === 401) {
      this._onConnected().catch(() => {});
      return;
    }
    const text = error instanceof LinkError && error.kind === 'no-server'
      ? 'The GoChat server is not answering. Try again in a moment.'
      : error instanceof LinkError && error.kind === 'timeout'
        ? 'The GoChat server did not answer in time. Try again.'
        : explain(error);
    this.view.notice(text, 'error');
    if (error instanceof RequestError && error.code === 410 && this.model) this._roomEnded().catch(() => {});
  }
}

function parseJson(payload) {
  try {
    const value = JSON.parse(new TextDecoder().decode(payload));
    return value && typeof value === 'object' ? value : null;
  } catch {
    return null;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
