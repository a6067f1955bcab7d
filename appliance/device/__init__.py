"""The appliance daemon: a pure core and the imperative shell around it.

* :mod:`.events` and :mod:`.effects`: what goes into the state machine and what comes out.
* :mod:`.state`, :mod:`.view` and :mod:`.machine`: the device state machine, pure and
  synchronous on an injected clock: ``step(state, event, now) -> (state, effects)``.
* :mod:`.gestures`: debounce, short and long presses from raw pin edges (pure).
* :mod:`.panel`: the gpiozero buttons and LEDs (the only module here that touches pins),
  and the small asyncio glue that runs the gesture detector on the event loop.

The imperative shell around this core turns the world into events, feeds
:func:`~appliance.device.machine.step`, and carries the effects out:

* :mod:`.session`: the MQTT client on its own network thread (jittered reconnects,
  presence, requests and answers, room subscriptions, audio frames straight to audio).
* :mod:`.coap` and :mod:`.api`: the local CoAP API (aiocoap) and the daemon's side of it.
* :mod:`.sound`: the audio engine (:mod:`appliance.audio`, a leaf below the daemon).
* :mod:`.status`: the ``/status`` payload, computed in one place.
* :mod:`.startup`: the ``[room]`` plan carried out at start.
* :mod:`.daemon`: the one event loop that owns the machine, timers and systemd glue.
* :mod:`.settings`, :mod:`.main`: configuration and the ``gochat-appliance`` command
  (the edge: it builds the real hardware or the stand-ins and hands them in).
* :mod:`.console` and :mod:`.coap_client`: watching and pressing appliances over CoAP.

Rules of the core (all written down in docs/device.md)
-------------------------------------------------------
* Idle (online, logged in, no room wanted): the status LED blinks slowly, like
  "joining" — the device waits to join; "on" is kept strictly for "in a room".
* ``connection`` is ``online`` only when the broker link is up *and* ``login`` succeeded;
  ``connecting`` while either is being (re)tried; ``offline`` before start and after
  stop. A lost link keeps ``room_id`` (the room is re-joined); role, mic, hand and the
  hand/invite/mic LEDs go blank until the room is re-joined (they would be stale).
* A long press of ``mute`` (no action in the table) flashes like any refused press.
* A press whose previous request (same button) is still in flight is ignored: no
  request and no flash, since the device cannot know yet what a toggle would mean.
* Capture stops the moment we ask to mute, leave the stage or leave the room, or the
  inbox says we were muted or removed; it only *starts* when the room state says so.
* The host's ``accept`` invites the oldest raised hand without an open invitation from
  this device (so repeated presses walk down the queue instead of hitting 409).
* While an invitation is being answered it no longer "waits": the invite LED stops and
  ``/status`` shows ``invitation: null``; if the answer fails for a retryable reason,
  it waits again.
* Room closed, a room that does not exist or refuses us: status blinks fast until a
  room is joined or created (leaving does not clear it).
"""
