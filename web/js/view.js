// The page's DOM: it shows what the controller hands it and reports clicks back.
// Test hooks (data-testid and data-* state) are the contract of docs/web.md; wording is
// free. Text from peers goes in through textContent only, with anything not printable
// shown as an escape (docs/protocol.md 3.8).

const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/gu;

/** `text` with control and format characters shown as \uXXXX. */
export function printable(text) {
  return String(text).replace(NOT_PRINTABLE, (c) => `\\u${c.codePointAt(0).toString(16).padStart(4, '0')}`);
}

export class View {
  constructor(doc = document) {
    this.doc = doc;
    this.$ = (id) => doc.getElementById(id);
    this.memberItems = new Map(); // user id -> li
    this.handlers = {};
  }

  /** Wire the static controls to the controller's handlers. */
  bind(handlers) {
    this.handlers = handlers;
    const on = (id, event, fn) => this.$(id).addEventListener(event, fn);
    on('login-form', 'submit', (e) => {
      e.preventDefault();
      handlers.login(this.$('login-user').value.trim(), this.$('login-password').value);
    });
    on('create-form', 'submit', (e) => {
      e.preventDefault();
      const subject = this.$('create-subject').value.trim();
      if (subject) handlers.createRoom(subject);
    });
    on('refresh-rooms', 'click', () => handlers.refreshRooms());
    on('raise-hand', 'click', () => handlers.raiseHand());
    on('mic', 'click', () => handlers.toggleMic());
    on('leave', 'click', () => handlers.leave());
    on('close-room', 'click', () => handlers.closeRoom());
    on('accept-invite', 'click', () => handlers.answerInvite(true));
    on('decline-invite', 'click', () => handlers.answerInvite(false));
    on('start-audio', 'click', () => handlers.startAudio());
    on('logout', 'click', () => handlers.logout());
    on('notice-dismiss', 'click', () => this.clearNotice());
  }

  show(which) {
    for (const name of ['login', 'lobby', 'room']) this.$(`${name}-view`).hidden = name !== which;
    const focus = { login: 'login-user', lobby: 'create-subject', room: 'raise-hand' }[which];
    if (!this.doc.activeElement || this.doc.activeElement === this.doc.body || this.doc.activeElement.closest('[hidden]')) {
      this.$(focus)?.focus();
    }
  }

  busy(id, busy) {
    this.$(id).disabled = busy;
  }

  connection(state, text) {
    const el = this.$('connection');
    el.dataset.state = state;
    el.textContent = text;
  }

  user(name) {
    this.$('who').hidden = !name;
    this.$('who').textContent = name ? printable(name) : '';
    this.$('logout').hidden = !name;
  }

  loginError(text) {
    const el = this.$('login-error');
    el.hidden = !text;
    el.textContent = text ?? '';
  }

  notice(text, kind = 'info') {
    const el = this.$('notice');
    el.dataset.kind = kind;
    this.$('notice-text').textContent = text;
    el.hidden = false;
  }

  clearNotice(kind) {
    const el = this.$('notice');
    if (kind === undefined || el.dataset.kind === kind) el.hidden = true;
  }

  startAudio(needed) {
    this.$('start-audio').hidden = !needed;
  }

  rooms(list) {
    const ul = this.$('room-list');
    ul.replaceChildren(...list.map((room) => {
      const li = this.doc.createElement('li');
      const button = this.doc.createElement('button');
      button.type = 'button';
      button.dataset.testid = 'room-item';
      button.dataset.roomId = room.room_id;
      const subject = this.doc.createElement('span');
      subject.textContent = printable(room.subject);
      const meta = this.doc.createElement('span');
      meta.className = 'meta';
      meta.textContent = `${printable(room.host?.name ?? '')} · ${room.member_count} in the room`;
      button.append(subject, meta);
      button.addEventListener('click', () => this.handlers.joinRoom(room.room_id));
      li.append(button);
      return li;
    }));
    this.$('room-count').textContent = list.length ? `${list.length} open room${list.length === 1 ? '' : 's'}` : 'No open rooms yet: create one.';
  }

  /** The room view from a RoomModel and what the controller knows besides. */
  room(model, { invitation, micOn, speaking }) {
    this.$('room-view').dataset.roomId = model.roomId;
    this.$('room-subject').textContent = printable(model.subject);
    const role = model.myRole;
    const roleEl = this.$('my-role');
    roleEl.dataset.state = role;
    roleEl.textContent = role;
    const hand = this.$('raise-hand');
    const raised = role === 'listener' && model.handRaised(model.me);
    hand.hidden = role !== 'listener';
    hand.setAttribute('aria-pressed', String(raised));
    hand.textContent = raised ? 'Lower hand' : 'Raise hand';
    const mic = this.$('mic');
    mic.hidden = role === 'listener';
    mic.setAttribute('aria-pressed', String(micOn));
    mic.textContent = micOn ? 'Mic on' : 'Mic off';
    this.$('close-room').hidden = !model.amHost;
    this.$('leave').textContent = model.amHost ? 'Leave (ends the room)' : 'Leave';
    const banner = this.$('invite-banner');
    banner.hidden = !invitation;
    if (invitation) this.$('invite-text').textContent = `${printable(invitation.from_name)} invites you to the stage.`;
    const members = model.members();
    this.$('member-count').textContent = `${model.memberCount} in the room · ${model.seats.length}/${model.maxSeats} on stage`;
    this._members(members, model, speaking);
  }

  /** Only the speaking marks (ten times a second). */
  speaking(isSpeaking) {
    for (const [userId, li] of this.memberItems) li.dataset.speaking = String(isSpeaking(userId));
  }

  _members(members, model, speaking) {
    const ul = this.$('member-list');
    const seen = new Set();
    members.forEach((member, index) => {
      seen.add(member.user_id);
      let li = this.memberItems.get(member.user_id);
      if (!li) {
        li = this._memberItem(member.user_id);
        this.memberItems.set(member.user_id, li);
      }
      this._fillMember(li, member, model, speaking(member.user_id));
      if (ul.children[index] !== li) ul.insertBefore(li, ul.children[index] ?? null);
    });
    for (const [userId, li] of this.memberItems) {
      if (!seen.has(userId)) {
        li.remove();
        this.memberItems.delete(userId);
      }
    }
  }

  _memberItem(userId) {
    const li = this.doc.createElement('li');
    li.dataset.testid = 'member';
    li.dataset.userId = userId;
    li.innerHTML = '<span class="avatar" aria-hidden="true"></span><span class="name"></span>'
      + '<span class="badges"></span><span class="actions">'
      + '<button type="button" data-testid="invite">Invite to stage</button>'
      + '<button type="button" data-testid="mute" class="quiet">Mute</button>'
      + '<button type="button" data-testid="remove" class="quiet">Remove from stage</button></span>';
    const act = (testid, fn) => li.querySelector(`[data-testid="${testid}"]`).addEventListener('click', () => fn(userId));
    act('invite', (id) => this.handlers.invite(id));
    act('mute', (id) => this.handlers.mute(id));
    act('remove', (id) => this.handlers.remove(id));
    return li;
  }

  _fillMember(li, member, model, speaking) {
    const isMe = member.user_id === model.me;
    const name = printable(member.name || member.user_id);
    li.dataset.role = member.role;
    li.dataset.hand = String(Boolean(member.hand_raised));
    li.dataset.mic = member.mic_on ? 'on' : 'off';
    li.dataset.speaking = String(speaking);
    li.querySelector('.avatar').textContent = name.slice(0, 1).toUpperCase();
    li.querySelector('.name').textContent = isMe ? `${name} (you)` : name;
    const badges = [member.role];
    if (member.hand_raised) badges.push('hand up');
    if (member.role !== 'listener') badges.push(member.mic_on ? 'mic on' : 'muted');
    li.querySelector('.badges').textContent = badges.join(' · ');
    const host = model.amHost && !isMe;
    const show = (testid, visible, label) => {
      const button = li.querySelector(`[data-testid="${testid}"]`);
      button.hidden = !visible;
      button.setAttribute('aria-label', `${label} ${name}`);
    };
    show('invite', host && member.role === 'listener', 'Invite to the stage:');
    show('mute', host && member.role === 'speaker' && member.mic_on, 'Mute');
    show('remove', host && member.role === 'speaker', 'Remove from the stage:');
  }
}
