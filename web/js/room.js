// The room the page is in, as the server says it is (pure: no I/O, no clock).
//
// The retained room state is the truth for seats, microphones and raised hands; it
// lists listeners only as a count, so the attendee list (get_attendee_list) fills in
// who they are. Older versions are ignored (docs/protocol.md 6.1).

const ROLE_ORDER = { host: 0, speaker: 1, listener: 2 };

export class RoomModel {
  constructor(me, roomId) {
    this.me = me;
    this.roomId = roomId;
    this.version = 0;
    this.subject = '';
    this.hostId = null;
    this.maxSeats = 0;
    this.seats = [];
    this.raisedHands = [];
    this.raisedHandCount = 0;
    this.memberCount = 0;
    this.closed = false;
    this.attendees = new Map(); // user id -> Member, from get_attendee_list
    this.myMember = null; // from login_room / operate_raise_hand answers
  }

  /** Take a room state if it is newer; returns whether anything changed. */
  adopt(state) {
    if (!state || state.room_id !== this.roomId || !(state.version > this.version)) return false;
    this.version = state.version;
    this.subject = String(state.subject ?? '');
    this.hostId = state.host_id ?? null;
    this.maxSeats = state.max_seats ?? 0;
    this.seats = Array.isArray(state.seats) ? state.seats : [];
    this.raisedHands = Array.isArray(state.raised_hands) ? state.raised_hands : [];
    this.raisedHandCount = state.raised_hand_count ?? this.raisedHands.length;
    this.memberCount = state.member_count ?? 0;
    this.closed = Boolean(state.closed);
    return true;
  }

  setAttendees(list) {
    this.attendees = new Map(list.map((member) => [member.user_id, member]));
  }

  setMe(member) {
    if (member?.user_id === this.me) this.myMember = member;
  }

  seatOf(userId) {
    return this.seats.find((member) => member.user_id === userId) ?? null;
  }

  handRaised(userId) {
    if (this.raisedHands.some((hand) => hand.user_id === userId)) return true;
    if (this.raisedHandCount > this.raisedHands.length) {
      // Beyond the 50 hands a state shows: the last word we had on that member.
      const known = userId === this.me ? this.myMember : this.attendees.get(userId);
      return Boolean(known?.hand_raised);
    }
    return false;
  }

  get myRole() {
    return this.seatOf(this.me)?.role ?? 'listener';
  }

  get amHost() {
    return this.hostId === this.me;
  }

  /** Whether the page may send voice: on a seat with the microphone on. */
  get canSpeak() {
    return !this.closed && Boolean(this.seatOf(this.me)?.mic_on);
  }

  /** Whom the page plays: every other member on a seat with the microphone on. */
  heard() {
    return new Set(this.seats.filter((m) => m.mic_on && m.user_id !== this.me).map((m) => m.user_id));
  }

  /** Everyone known, host first, then speakers, then listeners (hands up first). */
  members() {
    const byId = new Map();
    for (const member of this.attendees.values()) {
      byId.set(member.user_id, { ...member, role: 'listener', mic_on: false });
    }
    for (const hand of this.raisedHands) {
      if (!byId.has(hand.user_id)) byId.set(hand.user_id, { user_id: hand.user_id, name: hand.name, role: 'listener', mic_on: false });
    }
    if (!this.seatOf(this.me) && !byId.has(this.me) && this.myMember) {
      byId.set(this.me, { ...this.myMember, role: 'listener', mic_on: false });
    }
    for (const seat of this.seats) byId.set(seat.user_id, { ...seat });
    const list = [...byId.values()].map((member) => ({
      ...member,
      hand_raised: member.role === 'listener' && this.handRaised(member.user_id),
    }));
    const seatIndex = (m) => this.seats.findIndex((s) => s.user_id === m.user_id);
    return list.sort((a, b) =>
      ROLE_ORDER[a.role] - ROLE_ORDER[b.role]
      || (a.role === 'listener' ? Number(b.hand_raised) - Number(a.hand_raised) : seatIndex(a) - seatIndex(b))
      || (a.joined_at ?? 0) - (b.joined_at ?? 0));
  }
}
