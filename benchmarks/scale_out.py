"""Scale-out benchmark: the server on SQLite, on PostgreSQL, and as two instances.

One run, the same offered load for each of three set-ups, each with a fresh broker
(and a fresh database on one durable PostgreSQL cluster from Debian's packages):

1. **SQLite, one instance** (the embedded default);
2. **PostgreSQL, one instance**;
3. **PostgreSQL, two instances** on one shared subscription.

Each gets the heartbeat phase and a paced join storm of ``benchmarks/server_load.py``
(the same load generators, open-loop). Reported per set-up: answers/s, p50/p99
latency, and the CPU each answer costs: the server processes' and PostgreSQL's
processes' CPU seconds over the phase divided by the answers (the broker's apart).

Then **failover**: two instances under a steady heartbeat load; a probe sends a
heartbeat every 20 ms (from ten users in turn, each under the rate limit) and
retries it (same CorrelationData) after :data:`PROBE_RETRY_S`; instance 1 (the timer
owner) is SIGKILLed. Reported: the time from the SIGKILL to the first answer to a
request sent after it, the longest gap between two answers the probe saw, the probe's
requests answered only on retry, the time until instance 2 holds the timer lease
(timers and room-state publishing resume), and the load's requests lost with the
killed instance.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.scale_out --quick   # about 3 minutes
    .venv/bin/python -m benchmarks.scale_out           # about 7 minutes

Targets: none asserted; the README states the figures as ratios to the SQLite
column measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from appliance.mqtt import publish_properties
from appliance.protocol import topics
from benchmarks._common import add_smoke_flag, machine_header, markdown_table
from benchmarks.server_load import (
    Bench,
    BenchError,
    Config,
    HeartbeatResult,
    StormResult,
    answered_rate,
    latency_stats,
    log,
    ms,
    raise_open_files_limit,
)
from testbed.postgres import Postgres

PROBE_USERS = [f"failover-probe-{n}" for n in range(10)]  # 5 req/s each: under the limit
PROBE_EVERY_S = 0.02
PROBE_RETRY_S = 0.5
FAILOVER_LOAD_S = 4.0  # steady load before and after the SIGKILL


@dataclass(frozen=True, slots=True)
class Row:
    """One set-up's figures."""

    name: str
    beat: HeartbeatResult
    storm: StormResult
    counters: dict[str, int]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _postgres_pids(cluster: Postgres) -> list[int]:
    """The postmaster and every process it forked (backends, WAL writer, ...)."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    return [postmaster, *_children(postmaster)]


def run_setup(name: str, config: Config, cluster: Postgres | None) -> Row:
    """One set-up: its own broker and servers, the heartbeat phase, one storm."""
    log(f"--- {name}")
    with Bench(config) as bench:
        if cluster is not None:
            bench.extra_groups["PostgreSQL"] = lambda: _postgres_pids(cluster)
        try:
            bench.setup()
            beat = bench.heartbeat_phase(config.rates[0])
            storm, _room = bench.join_storm(config.join_rates[0], None)
            bench.finish()
        except BenchError:
            for server in bench.servers:
                log(
                    f"--- {server.log_path.name} (tail)\n"
                    + "\n".join(server.log().splitlines()[-30:])
                )
            raise
    return Row(name, beat, storm, bench.server_counters)


def cpu_ms_per_answer(usage_pct: float, wall_s: float, answers: int) -> float:
    """CPU milliseconds per answer from a CPU% (of one core) over ``wall_s``."""
    return usage_pct / 100.0 * wall_s / max(answers, 1) * 1000.0


def _store_cpu(result: HeartbeatResult | StormResult) -> tuple[float, float, float]:
    """(servers' CPU%, PostgreSQL's CPU%, broker's CPU%) of one phase."""
    cpu = result.usage.cpu_pct
    return cpu.get("server", 0.0), cpu.get("PostgreSQL", 0.0), cpu.get("broker", 0.0)


def comparison_table(rows: list[Row]) -> str:
    """The three set-ups side by side."""
    base = rows[0]

    def per_answer(result: HeartbeatResult | StormResult) -> tuple[float, float]:
        server, pg, _broker = _store_cpu(result)
        answers = len(result.sample.latencies)
        wall = result.usage.wall_s
        return cpu_ms_per_answer(server, wall, answers), cpu_ms_per_answer(pg, wall, answers)

    base_cost = sum(per_answer(base.beat))
    lines: list[list[str]] = []
    for row in rows:
        p50, p99, _max = latency_stats(row.beat.sample)
        s50, s99, _smax = latency_stats(row.storm.sample)
        server_ms, pg_ms = per_answer(row.beat)
        storm_server, storm_pg = per_answer(row.storm)
        lines.append(
            [
                row.name,
                f"{answered_rate(row.beat.sample):,.0f}/s",
                ms(p50),
                ms(p99),
                f"{server_ms:.3f} + {pg_ms:.3f} ms",
                f"{(server_ms + pg_ms) / base_cost:.1f}x",
                f"{_store_cpu(row.beat)[2]:.0f} %",
                f"{answered_rate(row.storm.sample):,.0f}/s",
                ms(s99),
                f"{storm_server + storm_pg:.3f} ms",
                str(row.beat.sample.unanswered + row.storm.sample.unanswered),
            ]
        )
        del s50
    return markdown_table(
        [
            "set-up",
            "heartbeats answered",
            "p50",
            "p99",
            "CPU per answer (servers + PostgreSQL)",
            "vs SQLite",
            "broker CPU",
            "joins answered",
            "join p99",
            "CPU per join",
            "unanswered",
        ],
        lines,
    )


# --------------------------------------------------------------------------- failover


class Probe:
    """Clients sending a heartbeat every :data:`PROBE_EVERY_S` between them, retrying
    each unanswered one after :data:`PROBE_RETRY_S` with the same CorrelationData;
    records when each was sent and answered."""

    def __init__(self, bench: Bench) -> None:
        self._lock = threading.Lock()
        self.sent: dict[bytes, float] = {}
        self.answered: dict[bytes, float] = {}
        self.retried: set[bytes] = set()
        self._stop = threading.Event()
        self._clients = [self._connect(bench, user) for user in PROBE_USERS]
        for n, user in enumerate(PROBE_USERS):
            self._request(n, "login", b'{"name": "Probe"}', f"login-{user}".encode())
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, bench: Bench, user: str) -> paho.Client:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv5
        )
        client.username_pw_set(user, bench.broker.password(user))
        client.tls_set_context(bench.broker.tls_context())
        client.on_message = self._on_message
        client.connect(bench.broker.host, bench.broker.port)
        client.loop_start()
        client.subscribe(topics.response(user), 1)
        return client

    def _request(self, n: int, method: str, payload: bytes, correlation: bytes) -> None:
        user = PROBE_USERS[n % len(PROBE_USERS)]
        props = publish_properties(response_topic=topics.response(user), correlation=correlation)
        client = self._clients[n % len(PROBE_USERS)]
        client.publish(topics.request(user, method), payload, qos=1, properties=props)

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        correlation = bytes(message.properties.CorrelationData)  # type: ignore[union-attr]
        with self._lock:
            self.answered.setdefault(correlation, time.monotonic())

    def start(self) -> None:
        """Start probing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop probing; wait for late answers (and retries); disconnect."""
        self._stop.set()
        self._thread.join(5)
        deadline = time.monotonic() + PROBE_RETRY_S * 4
        while time.monotonic() < deadline:
            with self._lock:
                waiting = [c for c in self.sent if c not in self.answered]
            if not waiting:
                break
            for c in waiting:
                if c not in self.retried:
                    self.retried.add(c)
                    self._request(int.from_bytes(c, "big"), "heartbeat", b"{}", c)
            time.sleep(PROBE_RETRY_S)
        for client in self._clients:
            client.loop_stop()
            client.disconnect()

    def _run(self) -> None:
        for n in itertools.count():
            if self._stop.wait(PROBE_EVERY_S):
                return
            now = time.monotonic()
            correlation = n.to_bytes(8, "big")
            with self._lock:
                self.sent[correlation] = now
                late = [
                    c
                    for c, at in self.sent.items()
                    if c not in self.answered and c not in self.retried and now - at > PROBE_RETRY_S
                ]
                self.retried.update(late)
            self._request(n, "heartbeat", b"{}", correlation)
            for c in late:
                self._request(int.from_bytes(c, "big"), "heartbeat", b"{}", c)


@dataclass(frozen=True, slots=True)
class Failover:
    """What the SIGKILL cost."""

    first_answer_s: float  # SIGKILL -> first answer to a request sent after it
    longest_gap_s: float  # longest time without any answer around the SIGKILL
    answered_on_retry: int
    unanswered: int
    lease_taken_s: float  # SIGKILL -> instance 2 holds the timer lease
    load: HeartbeatResult  # the steady load around it (its clients do not retry)


def failover(config: Config, cluster: Postgres, load_s: float = FAILOVER_LOAD_S) -> Failover:
    """Two instances, steady load, SIGKILL of instance 1 after ``load_s`` of it."""
    log("--- failover")
    with Bench(replace(config, instances=2, duration_s=2 * load_s + 1)) as bench:
        bench.broker.add_users(*PROBE_USERS)
        bench.setup()
        probe = Probe(bench)
        loads: list[HeartbeatResult] = []
        load = threading.Thread(target=lambda: loads.append(bench.heartbeat_phase(config.rates[0])))
        load.start()
        probe.start()
        time.sleep(load_s + 1)
        killed_at = time.monotonic()
        victim = bench.servers.pop(0)  # the bench checks that the others stay up
        victim.kill()
        lease_taken = _wait_lease(config.store_url or "", bench.servers[0], killed_at)
        load.join()
        probe.stop()
        bench.finish()
        if not loads:
            raise BenchError("the load during the failover failed")
    after = sorted(
        probe.answered[c] for c, at in probe.sent.items() if at > killed_at and c in probe.answered
    )
    answers = sorted(probe.answered.values())
    window = [t for t in answers if killed_at - 1.0 <= t <= killed_at + load_s]
    gaps = [b - a for a, b in itertools.pairwise([killed_at, *window])]
    return Failover(
        first_answer_s=(after[0] - killed_at) if after else float("nan"),
        longest_gap_s=max(gaps, default=float("nan")),
        answered_on_retry=sum(1 for c in probe.retried if c in probe.answered),
        unanswered=sum(1 for c in probe.sent if c not in probe.answered),
        lease_taken_s=lease_taken,
        load=loads[0],
    )


def _wait_lease(url: str, survivor: object, killed_at: float, timeout_s: float = 20.0) -> float:
    holder = getattr(survivor, "env", {}).get("GOCHAT_BROKER__USERNAME")
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() - killed_at < timeout_s:
            row = conn.execute("SELECT holder FROM leases WHERE name = 'timers'").fetchone()
            if row is not None and row[0] == holder:
                return time.monotonic() - killed_at
            time.sleep(0.02)
    return float("nan")


def failover_table(result: Failover) -> str:
    """The failover figures."""
    return markdown_table(
        ["SIGKILL of the timer owner under load", "measured"],
        [
            ["first answer to a request sent after the SIGKILL", ms(result.first_answer_s)],
            ["longest gap between two answers", ms(result.longest_gap_s)],
            [
                f"probe requests answered only on retry (after {PROBE_RETRY_S * 1000:.0f} ms)",
                str(result.answered_on_retry),
            ],
            ["probe requests never answered", str(result.unanswered)],
            ["timer lease taken over by the survivor", ms(result.lease_taken_s)],
            [
                f"load requests lost with the killed instance (of {result.load.sample.sent:,};"
                " their clients would retry)",
                str(result.load.sample.unanswered),
            ],
        ],
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> tuple[Config, float | None]:
    """The command line: the set-ups' config, the failover's load seconds (None: none)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller numbers, ~3 minutes")
    parser.add_argument("--rate", type=float, help="heartbeats/s offered (default 400)")
    parser.add_argument("--listeners", type=int, help="join-storm listeners (default 2000)")
    parser.add_argument("--join-rate", type=float, help="joins/s offered (default 300)")
    parser.add_argument("--no-failover", action="store_true", help="skip the failover run")
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.rate, args.listeners, args.join_rate = args.rate or 50.0, args.listeners or 20, 20.0
    rate = args.rate or (300.0 if args.quick else 400.0)
    listeners = args.listeners or (300 if args.quick else 2000)
    config = Config(
        rates=(rate,),
        duration_s=1.0 if args.smoke else 5.0 if args.quick else 15.0,
        listeners=listeners,
        workers=2,
        join_rates=(args.join_rate or min(300.0, listeners / 2),),
        broker_conf=None,
    )
    return config, None if args.no_failover else 1.5 if args.smoke else FAILOVER_LOAD_S


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    config, failover_s = parse_args(argv)
    raise_open_files_limit()
    print(machine_header("GoChat scale-out benchmark"))
    try:
        with Postgres(durable=True) as cluster:
            rows = [run_setup("SQLite, 1 instance", config, None)]
            for instances in (1, 2):
                pg = replace(config, store_url=cluster.new_database(), instances=instances)
                name = f"PostgreSQL, {instances} instance{'s' * (instances > 1)}"
                rows.append(run_setup(name, pg, cluster))
            result = (
                failover(replace(config, store_url=cluster.new_database()), cluster, failover_s)
                if failover_s is not None
                else None
            )
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    print(
        f"Offered: {config.rates[0]:,.0f} heartbeats/s for {config.duration_s:.0f} s, then "
        f"{config.listeners:,} listeners joining one room at {config.join_rates[0]:,.0f}/s.\n"
    )
    print(comparison_table(rows))
    for row in rows:
        shown = {k: v for k, v in sorted(row.counters.items()) if not k.startswith("code_")}
        print(f"- {row.name}, the servers' counters: {shown}")
    print()
    if result is not None:
        print(failover_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
