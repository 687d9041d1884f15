#!/usr/bin/env python3
"""Live-traffic benchmark (issue 14): what cleaning the stale responses does to LiteLLM's
own traffic on the same table, for one unbounded UPDATE, LiteLLM's production loop and the
runbook's sweep.

One command, nothing to set up beyond ``make venv``::

    .venv/bin/python bench/live.py                                            # 1M rows, 300K candidates
    .venv/bin/python bench/live.py --rows 20000 --candidates 6000 --seconds 5  # smoke run, about a minute

What it does, in order:

1. builds the database exactly as ``bench/bench.py`` does (its ``build``: an embedded
   PostgreSQL 16 under /var/tmp, LiteLLM's schema from its migrations, ``--rows`` managed
   objects loaded by COPY with fsync off, ``--candidates`` of them stale), then notes the
   candidates' ids in a side table of the base database and picks ``--client-ids`` of them
   at random for the foreground's updates and reads;
2. restarts the server with ``bench.bench.MEASURE_SETTINGS`` (durable: fsync,
   synchronous_commit, full_page_writes on; autovacuum off);
3. for each scenario, on a fresh ``CREATE DATABASE ... TEMPLATE`` copy after a CHECKPOINT:
   starts the writer in a child process (connected, imports done) and the foreground load
   in this one; ``--lead`` seconds later tells the writer to go; the load runs until the
   writer is done (``idle``: for ``--seconds``), then stops; every operation scheduled
   while the writer ran counts;
4. checks the copy: no row the poller completed is ``stale_expired`` now, no row but a
   candidate became ``stale_expired``, and (writers that finish) no candidate is left;
5. prints the tables and the targets (PASS/FAIL, never asserted), destroys the server.

The foreground: several connections over the server's Unix socket, each operation kind at
a fixed rate (open loop: a request is due at its time whether or not the ones before it
have finished; its latency runs from when it was due, so time spent queued behind busy
connections counts, as it would in LiteLLM's connection pool):

``insert_object``  INSERT of a new response object (status 'queued', 1.0-2.0 KB file_object)
``poller``         CheckResponsesCost's claim: one transaction, SELECT of the 50 oldest
                   queued/in_progress response rows ORDER BY created_at FOR UPDATE, then
                   UPDATE ... SET status = 'completed' of ``--completes`` of them; a periodic
                   job (a cycle due while the last one still runs is skipped, as a scheduler
                   does), its latency the cycle's own time
``client_update``  single-row UPDATE ... SET updated_at of a random candidate (may meet the writer's locks)
``client_read``    single-row SELECT by id of a random candidate
``spend_insert``   INSERT into "LiteLLM_SpendLogs" (small payloads)

Writers (each in a child process that times its own work from "go" to its end, the same
way for all): ``unbounded`` (``bench.bench.FLOOR_SQL``: one UPDATE of every candidate),
``litellm`` (``bench.bench.PEER_SQL``, LIMIT 1000, 0.1 s pause after each batch, stopped
after ``--litellm-seconds`` and the rest extrapolated), ``sweep`` (``runbook.sweep`` with
its defaults) and ``sweep-...`` variants: ``sweep-throttled`` (``THROTTLED``) or any of
``-wK`` workers, ``-pS`` pause_s, ``-rN`` max_rows_per_second, ``-bN`` batch_size,
``-kN`` max_batch_wal_bytes in KiB, ``-tM`` target_batch_ms, ``-lN`` max_lock_waiters,
e.g. ``sweep-w1-r5000``; ``notebook`` (and ``notebook-...`` with the same knobs):
``notebooks/03_sweep.ipynb`` run headless as the issue's check runs it (``python -m runbook
run sweep -p dry_run False``: papermill, a fresh kernel, the notebook's own defaults; its
wall time is the whole process). A scenario named twice runs twice (``idle`` at the end shows
how much the machine drifted); the first run is the one the others are compared with.

Once every ``--sample-every`` seconds a sampler reads pg_stat_activity of the copy: what
each active foreground session (and the writer's) waits on (a Lock, a WAL write or flush,
other I/O, or nothing: CPU), to tell locks from WAL flushes as the cause of a slowdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The script's folder (bench/, first on sys.path) holds bench.py, which would shadow the
# bench package: import it as bench.bench from the checkout's root instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from bench import bench as B  # noqa: E402
from runbook.db.embedded import EmbeddedServer  # noqa: E402

Conn = B.Conn

KINDS = ("insert_object", "poller", "client_update", "client_read", "spend_insert")
RATES = {"insert_object": 20.0, "poller": 1.0, "client_update": 20.0, "client_read": 20.0, "spend_insert": 50.0}
POLL_LIMIT = 50  # LiteLLM's MAX_OBJECTS_PER_POLL_CYCLE
LITELLM_BATCH = 1000  # STALE_OBJECT_CLEANUP_BATCH_SIZE
LITELLM_PAUSE_S = 0.1  # the pause of LiteLLM's batched cleanup loops (spend_log_cleanup.py)
CANDIDATES = "bench_live_candidates"  # side table in the base database: the candidates' ids
META = "live-meta.json"  # in the server's home: what --home needs to reuse a kept server

# The throttle that protects the foreground, run as ``sweep-throttled`` (bench/RESULTS.md,
# "Sweep while LiteLLM serves", has the trade-off that chose it).
THROTTLED: dict[str, Any] = {"workers": 1, "max_rows_per_second": 5000.0}

# ``notebook`` is the issue's own check (03_sweep.ipynb through papermill, its defaults); the
# second ``idle`` shows how far the machine drifted during the run.
SCENARIOS = ("idle", "unbounded", "litellm", "sweep", "notebook", "sweep-throttled", "idle")
_SWEEP_NAME = re.compile(r"(sweep|notebook)(-throttled|(-(w[1-4]|p[0-9]+(\.[0-9]+)?|r[0-9]+|b[0-9]+|k[0-9]+|t[0-9]+|l[0-9]+))*)\Z")
RESULT = "live-writer-result "  # the writer child's one line of results on stdout starts with this
_KNOBS: dict[str, tuple[str, Any]] = {
    "w": ("workers", int), "p": ("pause_s", float), "r": ("max_rows_per_second", float), "b": ("batch_size", int),
    "k": ("max_batch_wal_bytes", lambda v: int(v) * 1024), "t": ("target_batch_ms", float), "l": ("max_lock_waiters", int),
}  # fmt: skip

# Targets (reported, never asserted), for the default sweep and every sweep variant.
TARGET_P99_VS_IDLE = 2.0
TARGET_MAX_WAIT_S = 1.0
TARGET_WALL_VS_UNBOUNDED = 1.5

log = B.log


# --------------------------------------------------------------------------------------
# The foreground


ACTIVE_OBJECT_INSERT = sql.SQL(
    "INSERT INTO {} (id, unified_object_id, model_object_id, file_object, file_purpose, created_at, created_by,"
    " updated_at, updated_by, status, team_id, api_key) VALUES (%s, %s, %s, %s::jsonb, 'response', %s, %s, %s, %s, 'queued', %s, %s)"
).format(B.TABLE)
CLIENT_UPDATE = sql.SQL("UPDATE {} SET updated_at = %s WHERE id = %s").format(B.TABLE)
CLIENT_READ = sql.SQL("SELECT id, model_object_id, status, file_object, created_at, updated_at FROM {} WHERE id = %s").format(B.TABLE)
POLL_CLAIM = sql.SQL(
    "SELECT id, model_object_id, status, file_object, created_at FROM {} WHERE file_purpose = 'response'"
    " AND status IN ('queued', 'in_progress') ORDER BY created_at LIMIT {} FOR UPDATE"
).format(B.TABLE, sql.Literal(POLL_LIMIT))
POLL_COMPLETE = sql.SQL("UPDATE {} SET status = 'completed', updated_at = %s WHERE id = ANY(%s)").format(B.TABLE)
SPEND_INSERT = sql.SQL(
    'INSERT INTO {} (request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens, "startTime",'
    ' "endTime", "completionStartTime", model, model_id, model_group, custom_llm_provider, api_base, "user", metadata,'
    " cache_hit, request_tags, team_id, end_user, messages, response, proxy_server_request, session_id, status)"
    " VALUES (%s, 'acompletion', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'openai', 'https://api.openai.com/v1', %s,"
    " %s::jsonb, 'False', '[]'::jsonb, %s, '', %s::jsonb, %s::jsonb, %s::jsonb, %s, 'success')"
).format(sql.Identifier("public", "LiteLLM_SpendLogs"))
SAMPLE = (
    "SELECT coalesce(application_name, ''), backend_type, coalesce(wait_event_type, ''), coalesce(wait_event, '')"
    " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'"
)


@dataclass(frozen=True)
class Op:
    due: float  # monotonic time it was due
    start: float
    end: float
    error: str | None = None


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Foreground:
    """LiteLLM-like traffic at fixed rates from several connections (threads), plus the sampler."""

    def __init__(self, dsn: str, rates: dict[str, float], conns: int, client_ids: list[str], completes: int,
                 sample_every: float, seed: int) -> None:  # fmt: skip
        self.dsn, self.rates, self.conns, self.client_ids = dsn, rates, conns, client_ids
        self.completes, self.sample_every, self.seed = completes, sample_every, seed
        self.ops: dict[str, list[Op]] = {k: [] for k in KINDS}
        self.completed: list[str] = []  # ids the poller marked completed (committed)
        self.samples: list[tuple[float, list[tuple[str, str]]]] = []  # (time, [(group, event)])
        self.t0 = 0.0
        self._stop_at: float | None = None
        self._lock = threading.Lock()
        self._tickets = dict.fromkeys(KINDS, 0)
        self._threads: list[threading.Thread] = []
        pool_rng = random.Random(seed)
        self._pool = B._file_object_pool(pool_rng, 64)
        self._keys = ["%064x" % pool_rng.getrandbits(256) for _ in range(50)]
        self._teams = [str(uuid.UUID(int=pool_rng.getrandbits(128), version=4)) for _ in range(10)]

    def _connect(self, name: str) -> Conn:
        return psycopg.connect(self.dsn, autocommit=True, application_name=f"live-{name}", options="-c TimeZone=UTC")

    def start(self) -> None:
        """Open every connection first (connecting is not a foreground operation), then start."""
        workers: list[tuple[str, int, Conn]] = []
        for kind in KINDS:
            if self.rates.get(kind, 0) > 0:
                for i in range(1 if kind == "poller" else self.conns):
                    workers.append((kind, i, self._connect(kind)))
        sampler = self._connect("sampler")
        self.t0 = time.monotonic() + 0.05
        for kind, i, conn in workers:
            loop = self._periodic if kind == "poller" else self._requests
            self._threads.append(threading.Thread(target=loop, args=(kind, i, conn), daemon=True, name=f"{kind}-{i}"))
        self._threads.append(threading.Thread(target=self._sample, args=(sampler,), daemon=True, name="sampler"))
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 300.0) -> int:
        """No operation is due from now on; wait for those under way. Returns how many threads
        were still busy after ``timeout`` (their operations are missing from the results)."""
        self._stop_at = time.monotonic()
        deadline = self._stop_at + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self._threads)

    def _wait_until(self, due: float) -> bool:
        """Sleep until ``due``; False once the load is stopping and ``due`` is at or past its end."""
        while True:
            stop = self._stop_at
            if stop is not None and due >= stop:
                return False
            left = due - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.05))

    def _requests(self, kind: str, worker: int, conn: Conn) -> None:
        """Open loop: ticket i of this kind is due at t0 + i / rate, whichever connection takes it."""
        rng = random.Random(f"{self.seed}-{kind}-{worker}")
        run = getattr(self, "_" + kind)
        period = 1.0 / self.rates[kind]
        try:
            while True:
                with self._lock:
                    i = self._tickets[kind]
                    self._tickets[kind] += 1
                due = self.t0 + i * period
                if not self._wait_until(due):
                    return
                start = time.monotonic()
                error = None
                try:
                    run(conn, rng)
                except psycopg.Error as exc:
                    error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
                    conn = self._recover(conn, kind)
                self.ops[kind].append(Op(due, start, time.monotonic(), error))
        finally:
            conn.close()

    def _periodic(self, kind: str, worker: int, conn: Conn) -> None:
        """A periodic job: one cycle every 1 / rate seconds; a cycle due while the previous one
        still runs is skipped (the next runs at the next tick), as LiteLLM's scheduler does."""
        rng = random.Random(f"{self.seed}-{kind}-{worker}")
        interval = 1.0 / self.rates[kind]
        due = self.t0
        try:
            while self._wait_until(due):
                start = time.monotonic()
                error = None
                try:
                    self.completed.extend(self._poller(conn, rng))
                except psycopg.Error as exc:
                    error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
                    conn = self._recover(conn, kind)
                end = time.monotonic()
                self.ops[kind].append(Op(due, start, end, error))
                due += interval * max(1, math.ceil((end - due) / interval))
        finally:
            conn.close()

    def _recover(self, conn: Conn, kind: str) -> Conn:
        if conn.closed or conn.broken:
            try:
                return self._connect(kind)
            except psycopg.Error:
                time.sleep(0.5)
        return conn

    # The operations ------------------------------------------------------------------

    def _insert_object(self, conn: Conn, rng: random.Random) -> None:
        now = utc_now()
        model_id = "resp_%048x" % rng.getrandbits(192)
        middle, tail = self._pool[rng.randrange(len(self._pool))]
        epoch = int((now - datetime(1970, 1, 1)).total_seconds())
        doc = '{"id": "' + model_id + '", "object": "response", "created_at": ' + str(epoch) + ', "status": "queued"' + middle + tail
        user = f"user-{rng.randrange(50):04d}@example.com"
        unified = "resp_" + uuid.UUID(int=rng.getrandbits(128), version=4).hex + model_id
        conn.execute(
            ACTIVE_OBJECT_INSERT,
            [str(uuid.UUID(int=rng.getrandbits(128), version=4)), unified, model_id, doc, now, user, now, user,
             rng.choice(self._teams), rng.choice(self._keys)],
        )  # fmt: skip

    def _client_update(self, conn: Conn, rng: random.Random) -> None:
        conn.execute(CLIENT_UPDATE, [utc_now(), rng.choice(self.client_ids)])

    def _client_read(self, conn: Conn, rng: random.Random) -> None:
        conn.execute(CLIENT_READ, [rng.choice(self.client_ids)]).fetchone()

    def _spend_insert(self, conn: Conn, rng: random.Random) -> None:
        end = utc_now()
        start = end - timedelta(milliseconds=rng.randrange(300, 8000))
        prompt, completion = rng.randrange(20, 2000), rng.randrange(10, 800)
        model = rng.choice(["gpt-4o", "gpt-4.1", "o3", "gpt-4o-mini"])
        words = " ".join(rng.choice(B._WORDS) for _ in range(rng.randrange(8, 40)))
        messages = json.dumps([{"role": "user", "content": words}])
        response = json.dumps({"id": "chatcmpl-%024x" % rng.getrandbits(96), "object": "chat.completion", "model": model,
                               "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": words[::-1]}}],
                               "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})  # fmt: skip
        metadata = json.dumps({"user_api_key_alias": None, "user_api_key_team_id": rng.choice(self._teams), "spend_logs_metadata": None,
                               "additional_usage_values": {"prompt_tokens_details": None}})  # fmt: skip
        conn.execute(
            SPEND_INSERT,
            [str(uuid.UUID(int=rng.getrandbits(128), version=4)), rng.choice(self._keys), (prompt + 3 * completion) * 1e-6,
             prompt + completion, prompt, completion, start, end, start + timedelta(milliseconds=200), model,
             uuid.UUID(int=rng.getrandbits(128), version=4).hex, model, f"user-{rng.randrange(50):04d}@example.com",
             metadata, rng.choice(self._teams), messages, response, json.dumps({"model": model, "messages": json.loads(messages)}),
             str(uuid.UUID(int=rng.getrandbits(128), version=4))],
        )  # fmt: skip

    def _poller(self, conn: Conn, rng: random.Random) -> list[str]:
        with conn.transaction():
            ids = [row[0] for row in conn.execute(POLL_CLAIM).fetchall()]
            done = rng.sample(ids, min(len(ids), self.completes))
            if done:
                conn.execute(POLL_COMPLETE, [utc_now(), done])
        return done

    def _sample(self, conn: Conn) -> None:
        """Once every ``sample_every`` seconds: what the copy's active sessions wait on."""
        due = self.t0
        try:
            while self._wait_until(due):
                t = time.monotonic()
                seen: list[tuple[str, str]] = []
                for app, backend, wtype, wevent in conn.execute(SAMPLE).fetchall():
                    if app.startswith("live-"):
                        group = app.removeprefix("live-")
                    elif backend == "client backend":
                        group = "writer"
                    else:
                        continue
                    seen.append((group, f"{wtype}:{wevent}" if wtype else "CPU"))
                self.samples.append((t, seen))
                due += self.sample_every * max(1, math.ceil((time.monotonic() - due) / self.sample_every))
        except psycopg.Error as exc:
            log(f"sampler stopped: {exc}")
        finally:
            conn.close()


# --------------------------------------------------------------------------------------
# The writers, each in a child process: ``live.py --writer SPEC``


def writer_spec(name: str, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "unbounded":
        return {"mode": "unbounded", "dsn": dsn}
    if name == "litellm":
        return {"mode": "litellm", "dsn": dsn, "cap_s": args.litellm_seconds}
    if name.startswith("notebook"):
        return {"mode": "notebook", "dsn": dsn, "knobs": sweep_knobs(name)}
    return {"mode": "sweep", "dsn": dsn, "knobs": sweep_knobs(name), "run_id": f"live-{name}-{uuid.uuid4().hex[:6]}"}


def sweep_knobs(name: str) -> dict[str, Any]:
    """The options a sweep (or notebook) scenario sets beyond the defaults (``sweep``: none)."""
    if name in ("sweep-throttled", "notebook-throttled"):
        return dict(THROTTLED)
    knobs: dict[str, Any] = {}
    for key, value in re.findall(r"-([a-z])([0-9.]+)", name.removeprefix("sweep").removeprefix("notebook")):
        option, convert = _KNOBS[key]
        knobs[option] = convert(value)
    return knobs


def writer_child(spec: dict[str, Any]) -> int:
    """Connect, say ``ready``, wait for ``go`` on stdin, do the work, print one JSON line.
    The wall time is measured here, from ``go`` to the end of the work, for every writer."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mode = spec["mode"]
    out: dict[str, Any] = {"mode": mode}
    conn: Conn | None = None
    if mode == "sweep":
        from runbook import Target, options, sweep

        knobs = dict(spec["knobs"])
        # No run-time bound: every candidate in one run (max_batches too: a throttled sweep's
        # smaller batches can number more than the default 5000).
        opts = options(dry_run=False, max_rows=10**8, max_seconds=86400, max_batches=1_000_000, **knobs)
        out["knobs"] = knobs
        conn = psycopg.connect(spec["dsn"], autocommit=True)
    elif mode == "notebook":  # the notebook's own process connects
        out["knobs"] = dict(spec["knobs"])
    else:
        conn = B.connect(spec["dsn"])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    cutoff = datetime.now(timezone.utc) - timedelta(days=B.STALE_DAYS)  # as production: aware UTC, timestamptz
    t0 = time.monotonic()
    if mode == "unbounded":
        assert conn is not None
        out["changed"] = conn.execute(B.FLOOR_SQL, [cutoff]).rowcount
        out["wall"] = time.monotonic() - t0
        out["batches"] = [out["wall"]]
    elif mode == "litellm":
        assert conn is not None
        batches: list[float] = []
        changed = 0
        capped = False
        while True:
            b0 = time.monotonic()
            n = conn.execute(B.PEER_SQL, [cutoff, LITELLM_BATCH]).rowcount
            if n == 0:
                break
            batches.append(time.monotonic() - b0)
            changed += n
            if len(batches) % 20 == 0:
                log(f"  litellm: {len(batches)} batches, {changed:,} rows, last {batches[-1] * 1000:.0f} ms")
            time.sleep(LITELLM_PAUSE_S)
            if time.monotonic() - t0 >= spec["cap_s"]:
                capped = True
                break
        out.update(wall=time.monotonic() - t0, changed=changed, batches=batches, capped=capped)
    elif mode == "notebook":
        out.update(run_notebook(spec["dsn"], out["knobs"]))
        if "error" not in out:
            out["wall"] = time.monotonic() - t0
    else:
        assert conn is not None
        r = sweep(conn, Target(), opts, run_id=spec["run_id"])
        out["wall"] = time.monotonic() - t0
        d = r.to_dict()
        out.update(
            changed=r.changed, stop_reason=str(r.stop_reason), candidates_at_start=r.candidates_at_start, remaining=r.remaining,
            batches=[b["seconds"] for b in d["batches"] if b["changed"]], batch_rows=[b["changed"] for b in d["batches"] if b["changed"]],
            batch_wal=[b["wal_bytes"] for b in d["batches"] if b["changed"]], statements=len(d["batches"]),
            pauses=d["pauses"], signals=d["signals"], retries=len(d["retries"]), sweep_seconds=r.seconds,
            workers=d["options"].get("workers"),
        )  # fmt: skip
    if conn is not None:
        conn.close()
    print(RESULT + json.dumps(out, default=str), flush=True)
    return 0


def run_notebook(dsn: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """``notebooks/03_sweep.ipynb`` as an operator runs it headless, with its defaults but
    ``dry_run=False`` (and ``knobs``): ``python -m runbook run sweep`` (papermill, a fresh
    kernel) with ``DATABASE_URL`` set to the copy. The caller times the whole process."""
    from runbook.audit.record import read_record

    run_dir = Path(tempfile.mkdtemp(prefix="live-notebook-"))
    argv = [sys.executable, "-m", "runbook", "run", "sweep", "--run-dir", str(run_dir), "-p", "dry_run", "False"]
    for key, value in knobs.items():
        argv += ["-p", key, repr(value)]
    try:
        done = subprocess.run(argv, env={**os.environ, "DATABASE_URL": dsn}, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            return {"error": f"the notebook run failed (exit {done.returncode}): {done.stderr.strip()[-400:]}"}
        executed = Path(done.stdout.strip().splitlines()[-1])
        record = read_record(executed) or {}
        d = (record.get("outcome") or {}).get("sweep")
        if not d:
            return {"error": "the executed notebook has no sweep record"}
        batches = [b for b in d["batches"] if b["changed"]]
        return dict(
            changed=d["changed"], stop_reason=str(d["stop_reason"]), candidates_at_start=d["candidates_at_start"],
            remaining=d["remaining"], batches=[b["seconds"] for b in batches], batch_rows=[b["changed"] for b in batches],
            batch_wal=[b["wal_bytes"] for b in batches], statements=len(d["batches"]), pauses=d["pauses"],
            signals=d["signals"], retries=len(d["retries"]), sweep_seconds=d["seconds"],
            workers=d["options"].get("workers"),
        )  # fmt: skip
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# One scenario


def pct(values: Sequence[float], q: float) -> float | None:
    return B.percentile(values, q) if values else None


def op_stats(kind: str, ops: list[Op], t_go: float, t_done: float, rate: float) -> dict[str, Any]:
    """Operations under way while the writer ran (due before it ended, finished after it
    began: one that was blocked when the writer started counts). Requests: latency from
    when it was due (queueing included); the poller: its cycle's own time."""
    window = [o for o in ops if o.due < t_done and o.end > t_go]
    lat = [(o.end - o.start if kind == "poller" else o.end - o.due) for o in window]
    service = [o.end - o.start for o in window]
    errors = [o.error for o in window if o.error]
    done = sum(1 for o in ops if t_go <= o.end < t_done and not o.error)
    span = max(t_done - t_go, 1e-9)
    return {
        "target_per_s": rate,
        "done_per_s": done / span,
        "n": len(window),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": (pct(lat, 0.5) or 0) * 1000,
        "p99_ms": (pct(lat, 0.99) or 0) * 1000,
        "max_ms": max(lat, default=0) * 1000,
        "service_max_ms": max(service, default=0) * 1000,
        "latency_ms": [round(v * 1000, 2) for v in lat],
        "due_s": [round(o.due - t_go, 3) for o in window],
    }


def wait_class(event: str) -> str:
    if event == "CPU":
        return "CPU"
    wtype, _, name = event.partition(":")
    if wtype == "Lock":
        return "Lock"
    if name.startswith("WAL"):
        return "WAL"
    if wtype == "IO":
        return "IO"
    return "other"


GROUPS = {"small ops": ("insert_object", "client_update", "client_read", "spend_insert"), "poller": ("poller",), "writer": ("writer",)}


def wait_stats(samples: list[tuple[float, list[tuple[str, str]]]], t_go: float, t_done: float) -> dict[str, Any]:
    inside = [s for t, s in samples if t_go <= t < t_done]
    out: dict[str, Any] = {"samples": len(inside)}
    for group, members in GROUPS.items():
        events = Counter(ev for s in inside for g, ev in s if g in members)
        out[group] = {"active": sum(events.values()), "events": dict(events.most_common()), "classes": dict(_classes(events))}
    return out


def _classes(events: Counter[str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for e, n in events.items():
        c[wait_class(e)] += n
    return c


@dataclass
class Meta:
    """What the base database holds, beyond bench.bench's build (kept in the server's home)."""

    cutoff: str  # naive UTC, ISO
    candidates: int
    base_stale: int  # rows already stale_expired in the base
    client_ids: list[str]
    load_s: float
    sizes: str
    rows: int


def prepare_base(server: EmbeddedServer, built: B.Built, rows: int, client_ids: int, seed: int) -> Meta:
    """Note the candidates' ids in a side table of the base and pick the client ids."""
    with B.connect(server.dsn(B.BASE_DB)) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} AS SELECT id FROM {} WHERE file_purpose = 'response' AND status IS NOT NULL"
                " AND status NOT IN ('completed', 'complete', 'failed', 'expired', 'cancelled', 'stale_expired')"
                " AND created_at < %s"
            ).format(sql.Identifier(CANDIDATES), B.TABLE),
            [built.plan.cutoff],
        )
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(sql.Identifier(CANDIDATES)))
        ids = sorted(r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(CANDIDATES))).fetchall())
        base_stale = int(B.one(conn, sql.SQL("SELECT count(*) FROM {} WHERE status = 'stale_expired'").format(B.TABLE)))
        conn.execute("CHECKPOINT")
    if len(ids) != built.candidates:
        raise B.CheckFailed(f"{len(ids):,} candidate ids noted, {built.candidates:,} candidates")
    picked = random.Random(seed).sample(ids, min(client_ids, len(ids)))
    return Meta(built.plan.cutoff.isoformat(), built.candidates, base_stale, picked, built.load_s, built.sizes, rows)


def run_scenario(admin: Conn, server: EmbeddedServer, name: str, meta: Meta, args: argparse.Namespace) -> dict[str, Any]:
    copy = "live_" + re.sub(r"[^a-z0-9]+", "_", name)
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))
    t0 = time.monotonic()
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(copy), sql.Identifier(B.BASE_DB)))
    log(f"{name}: copy of the base made in {time.monotonic() - t0:.1f} s")
    dsn = server.dsn(copy)
    child: subprocess.Popen[str] | None = None
    out: dict[str, Any] = {"name": name, "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        admin.execute("CHECKPOINT")
        if name != "idle":
            spec = writer_spec(name, dsn, args)
            out["spec"] = {k: v for k, v in spec.items() if k != "dsn"}
            child = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--writer", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            )  # fmt: skip
            assert child.stdout is not None and child.stdin is not None
            if child.stdout.readline().strip() != "ready":
                raise B.CheckFailed(f"{name}: the writer process did not start (exit {child.wait()})")
        with B.connect(dsn) as conn:
            lsn, checkpoints, buffers_full = B.wal_lsn(conn), B.checkpoint_count(conn), B.wal_buffers_full(conn)
        load = Foreground(dsn, args.rates, args.conns, meta.client_ids, args.completes, args.sample_every, args.seed)
        load.start()
        log(f"{name}: foreground running; {'idle for' if child is None else 'writer starts in'} "
            f"{args.seconds if child is None else args.lead:g} s")  # fmt: skip
        time.sleep(max(0.0, load.t0 + args.lead - time.monotonic()))
        meter = B.CpuMeter(server)  # CPU of other processes while the writer runs
        meter.start()
        t_go = time.monotonic()
        writer: dict[str, Any] | None = None
        if child is not None:
            assert child.stdout is not None and child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            line = child.stdout.readline()
            while line and not line.startswith(RESULT):  # anything else the writer printed
                log(f"{name}: writer: {line.rstrip()}")
                line = child.stdout.readline()
            t_done = time.monotonic()
            code = child.wait()
            if code != 0 or not line:
                log(f"{name}: the writer failed (exit {code})")
                writer = {"error": f"exit {code}"}
            else:
                writer = json.loads(line.removeprefix(RESULT))
                if writer.get("error"):
                    log(f"{name}: the writer failed: {writer['error']}")
        else:
            time.sleep(args.seconds)
            t_done = time.monotonic()
        out["cpu_ours"], out["cpu_others"] = meter.stop()
        busy = load.stop()
        out["window_s"] = t_done - t_go
        out["writer"] = writer
        out["unfinished_threads"] = busy
        with B.connect(dsn) as conn:
            out["wal_bytes"] = B.wal_diff(conn, lsn)
            out["checkpoints"] = B.checkpoint_count(conn) - checkpoints
            out["wal_buffers_full"] = B.wal_buffers_full(conn) - buffers_full
            out["ops"] = {k: op_stats(k, load.ops[k], t_go, t_done, args.rates.get(k, 0)) for k in KINDS if args.rates.get(k, 0) > 0}
            out["waits"] = wait_stats(load.samples, t_go, t_done)
            # Every poller cycle of the scenario, lead and tail included (seconds from "go").
            out["poller_cycles"] = [[round(o.due - t_go, 3), round(o.start - t_go, 3), round(o.end - t_go, 3), o.error]
                                    for o in sorted(load.ops.get("poller", []), key=lambda o: o.due)]  # fmt: skip
            out["completions"] = len(load.completed)
            out.update(check_copy(conn, meta, load.completed))
        log(f"{name}: window {out['window_s']:.1f} s"
            + (f", writer {writer.get('wall', 0):.1f} s, {writer.get('changed', 0):,} rows" if writer and "wall" in writer else "")
            + f"; lost completions {out['lost']}, remaining candidates {out['remaining']:,}, others stale_expired {out['others_stale']}")  # fmt: skip
        return out
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))


def check_copy(conn: Conn, meta: Meta, completed: list[str]) -> dict[str, int]:
    """What the scenario left: completions overwritten, candidates left, other rows expired."""
    lost = B.one(conn, sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s) AND status = 'stale_expired'").format(B.TABLE), [completed])
    remaining = B.one(
        conn,
        sql.SQL("SELECT count(*) FROM {} t JOIN {} c USING (id) WHERE t.file_purpose = 'response' AND t.status IS NOT NULL"
                " AND t.status NOT IN ('completed', 'complete', 'failed', 'expired', 'cancelled', 'stale_expired')"
                " AND t.created_at < %s").format(B.TABLE, sql.Identifier(CANDIDATES)),
        [datetime.fromisoformat(meta.cutoff)],
    )  # fmt: skip
    stale = B.one(
        conn,
        sql.SQL("SELECT count(*) FROM {} t WHERE t.status = 'stale_expired' AND NOT EXISTS (SELECT 1 FROM {} c WHERE c.id = t.id)").format(
            B.TABLE, sql.Identifier(CANDIDATES)
        ),
    )
    return {"lost": int(lost), "remaining": int(remaining), "others_stale": int(stale) - meta.base_stale}


# --------------------------------------------------------------------------------------
# Report


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def wall_of(s: dict[str, Any]) -> float | None:
    """The writer's wall time; LiteLLM's capped loop: extrapolated to every candidate."""
    w = s.get("writer") or {}
    if "wall" not in w:
        return None
    if w.get("capped") and w.get("changed"):
        return float(w.get("extrapolated_wall") or w["wall"])
    return float(w["wall"])


def extrapolate(s: dict[str, Any], candidates: int) -> None:
    w = s.get("writer") or {}
    if w.get("capped") and w.get("changed"):
        left = max(0, candidates - w["changed"] - s.get("completions", 0))
        w["extrapolated_wall"] = w["wall"] + left * w["wall"] / w["changed"]


def max_wait_ms(s: dict[str, Any], kind: str, idle: dict[str, Any] | None) -> float:
    """The longest an operation took beyond its usual time (its idle p50; without an idle
    scenario, its own p50): for the small operations nearly their latency, for the poller,
    whose claim is a full scan, what it waited beyond the scan."""
    st = s["ops"][kind]
    base = idle["ops"][kind]["p50_ms"] if idle and kind in idle.get("ops", {}) else st["p50_ms"]
    return max(0.0, float(st["max_ms"]) - float(base))


def sweep_verdict(s: dict[str, Any], idle: dict[str, Any] | None, unbounded_wall: float | None) -> dict[str, Any]:
    worst_ratio, worst_kind = 0.0, "-"
    worst_wait, wait_kind = 0.0, "-"
    for kind, st in s["ops"].items():
        if not st["n"]:
            continue
        if idle and kind in idle["ops"] and idle["ops"][kind]["p99_ms"]:
            r = st["p99_ms"] / idle["ops"][kind]["p99_ms"]
            if r > worst_ratio:
                worst_ratio, worst_kind = r, kind
        w = max_wait_ms(s, kind, idle)
        if w > worst_wait:
            worst_wait, wait_kind = w, kind
    wall = wall_of(s)
    errors = sum(st["errors"] for st in s["ops"].values())
    return {
        "worst_p99_ratio": worst_ratio if idle else None, "worst_p99_kind": worst_kind,
        "max_wait_ms": worst_wait, "max_wait_kind": wait_kind,
        "wall_ratio": wall / unbounded_wall if wall and unbounded_wall else None,
        "p99_ok": (worst_ratio <= TARGET_P99_VS_IDLE) if idle else None,
        "wait_ok": worst_wait <= TARGET_MAX_WAIT_S * 1000,
        "wall_ok": (wall / unbounded_wall <= TARGET_WALL_VS_UNBOUNDED) if wall and unbounded_wall else None,
        "lost_ok": s["lost"] == 0, "errors": errors, "errors_ok": errors == 0,
    }  # fmt: skip


def is_idle(s: dict[str, Any]) -> bool:
    return bool(s["name"] == "idle" or s["name"].startswith("idle #"))


def baseline(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What every scenario is compared with: per op kind, the lowest p50 and p99 of the idle
    runs (the strictest reading: other processes on the machine slow an idle run as much
    as any, and a noisy idle would flatter every ratio). None without an idle run."""
    idles = [s for s in results if is_idle(s)]
    if not idles:
        return None
    kinds = {k for s in idles for k, st in s["ops"].items() if st["n"]}
    ops = {k: {f: min(s["ops"][k][f] for s in idles if k in s["ops"] and s["ops"][k]["n"]) for f in ("p50_ms", "p99_ms")}
           for k in kinds}  # fmt: skip
    return {"name": "idle", "runs": len(idles), "ops": ops}


def render(results: list[dict[str, Any]], candidates: int) -> str:
    by = {s["name"]: s for s in reversed(results)}  # a name run twice: its first run
    idle = baseline(results)
    unb = by.get("unbounded")
    unbounded_wall = wall_of(unb) if unb else None
    lines: list[str] = []
    add = lines.append

    if idle and idle["runs"] > 1:
        add(f"'vs idle' and 'max wait' are against the lowest p99 and p50 of the {idle['runs']} idle runs, per op kind (the strictest).")
        add("")
    add("| scenario | op | target /s | done /s | ops | errors | p50 ms | p99 ms | max ms | p99 vs idle | max wait ms |")
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in results:
        for kind, st in s["ops"].items():
            base = idle["ops"].get(kind) if idle else None
            ratio = f"{st['p99_ms'] / base['p99_ms']:.2f}x" if base and base["p99_ms"] and st["n"] else "-"
            some = st["n"] > 0
            add(f"| {s['name']} | {kind} | {st['target_per_s']:g} | {st['done_per_s']:.1f} | {st['n']:,} | {st['errors']} "
                f"| {ms(st['p50_ms'] if some else None)} | {ms(st['p99_ms'] if some else None)} | {ms(st['max_ms'] if some else None)} "
                f"| {ratio} | {ms(max_wait_ms(s, kind, idle) if some else None)} |")  # fmt: skip
    add("")
    add("| scenario | writer wall s | vs unbounded | rows changed | batches | health pauses | WAL MB | checkpoints "
        "| poller completions | lost (now stale_expired) | candidates left | other rows expired | CPU s other processes | note |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in results:
        w = s.get("writer") or {}
        wall = wall_of(s)
        shown = "-" if not w else f"{w['wall']:.1f}" + (f" (est. {wall:.0f} for all)" if w.get("capped") else "") if "wall" in w else "error"
        pauses = w.get("pauses") or []
        paused = f"{len(pauses)} ({sum(p['seconds'] for p in pauses):.1f} s)" if w.get("mode") in ("sweep", "notebook") else "-"
        note = []
        if w.get("knobs"):
            note.append(", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in w["knobs"].items()))
        if w.get("stop_reason"):
            note.append(f"stop {w['stop_reason']}")
        if w.get("retries"):
            note.append(f"{w['retries']} retries")
        if (w.get("signals") or {}).get("budget_waits_seconds"):
            note.append(f"rate budget waited {w['signals']['budget_waits_seconds']:.1f} s")
        if (w.get("signals") or {}).get("lock_waiters_max"):
            note.append(f"most lock waiters seen {w['signals']['lock_waiters_max']}")
        if w.get("capped"):
            note.append(f"stopped after {len(w['batches'])} batches; the rest extrapolated at its rate")
        if s.get("unfinished_threads"):
            note.append(f"{s['unfinished_threads']} foreground threads still busy at the end")
        add(f"| {s['name']} | {shown} | {f'{wall / unbounded_wall:.2f}x' if wall and unbounded_wall else '-'} "
            f"| {w.get('changed', 0):,} | {len(w.get('batches', [])) if w else '-'} "
            f"| {paused} "
            f"| {s['wal_bytes'] / 1e6:,.0f} | {s['checkpoints']} | {s['completions']} | {s['lost']} | {s['remaining']:,} "
            f"| {s['others_stale']} | {s['cpu_others']:.1f} | {'; '.join(note)} |")  # fmt: skip
    add("")
    add("Wait events of active sessions, sampled (share of a group's active samples: Lock = row/tuple locks, "
        "WAL = LWLock:WALWrite/WALInsert, IO:WALSync/WALWrite; CPU = no wait event):")
    add("")
    add("| scenario | samples | group | active | CPU | Lock | WAL | IO | other | top events |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for s in results:
        ws = s["waits"]
        for group in GROUPS:
            g = ws[group]
            if not g["active"]:
                continue
            share = {c: f"{g['classes'].get(c, 0) / g['active']:.0%}" for c in ("CPU", "Lock", "WAL", "IO", "other")}
            top = ", ".join(f"{e} {n}" for e, n in list(g["events"].items())[:4])
            add(f"| {s['name']} | {ws['samples']} | {group} | {g['active']} | {share['CPU']} | {share['Lock']} | {share['WAL']} "
                f"| {share['IO']} | {share['other']} | {top} |")  # fmt: skip
    if unb and unb.get("ops", {}).get("client_update"):
        cu, po = unb["ops"]["client_update"], unb["ops"].get("poller")
        if unbounded_wall:
            add("")
            add(f"Unbounded UPDATE ({unbounded_wall:.1f} s): the longest colliding single-row client_update statement "
                f"waited {cu['service_max_ms'] / 1000:.1f} s ({cu['service_max_ms'] / 10 / unbounded_wall:.0f}% of it); "
                f"counted from when it was due, {cu['max_ms'] / 1000:.1f} s"
                + (f"; the poller's claim {po['max_ms'] / 1000:.1f} s" if po else "") + ".")  # fmt: skip
    busy = [s for s in results if s["window_s"] and s["cpu_others"] > 0.1 * s["window_s"]]
    if busy:
        add("")
        add("WARNING: other processes used more than 10% of one CPU during "
            + ", ".join(f"{s['name']} ({s['cpu_others']:.1f} CPU s in {s['window_s']:.0f} s)" for s in busy)
            + ": those timings are not clean.")  # fmt: skip

    sweeps = [s for s in results if s["name"].startswith(("sweep", "notebook"))]
    if sweeps:
        add("")
        add("Sweeps against the targets (p99 of every op <= "
            f"{TARGET_P99_VS_IDLE:g}x its idle p99; no op waits more than {TARGET_MAX_WAIT_S:g} s beyond its idle p50; "
            f"wall <= {TARGET_WALL_VS_UNBOUNDED:g}x the unbounded UPDATE's under the same load):")
        add("")
        add("| scenario | knobs | wall s | vs unbounded | worst p99 vs idle | max wait | lost | errors | CPU others | p99 | wait | wall |")
        add("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in sweeps:
            v = sweep_verdict(s, idle, unbounded_wall)
            w = s.get("writer") or {}
            knobs = ", ".join(f"{k}={v2:g}" if isinstance(v2, float) else f"{k}={v2}" for k, v2 in (w.get("knobs") or {}).items()) or "defaults"
            add(f"| {s['name']} | {knobs} | {w.get('wall', 0):.1f} | {fmt_x(v['wall_ratio'])} "
                f"| {fmt_x(v['worst_p99_ratio'])} ({v['worst_p99_kind']}) | {v['max_wait_ms']:,.0f} ms ({v['max_wait_kind']}) "
                f"| {s['lost']} | {v['errors']} | {s['cpu_others'] / max(s['window_s'], 1e-9):.0%} "
                f"| {pf(v['p99_ok'])} | {pf(v['wait_ok'])} | {pf(v['wall_ok'])} |")  # fmt: skip

    defaults = [n for n in ("sweep", "notebook") if n in by] or ["sweep"]
    for name in defaults:
        add("")
        add(f"| target (the sweep with its defaults, `{name}`) | measured | result |")
        add("|---|---|---|")
        if name not in by:
            add(f"| (no `{name}` scenario run) | - | - |")
            continue
        s = by[name]
        v = sweep_verdict(s, idle, unbounded_wall)
        add(f"| every op's p99 <= {TARGET_P99_VS_IDLE:g}x its idle p99 | worst {fmt_x(v['worst_p99_ratio'])} ({v['worst_p99_kind']}) | {pf(v['p99_ok'])} |")
        add(f"| no op waits more than {TARGET_MAX_WAIT_S:g} s | {v['max_wait_ms'] / 1000:.2f} s ({v['max_wait_kind']}) | {pf(v['wait_ok'])} |")
        add(f"| sweep wall <= {TARGET_WALL_VS_UNBOUNDED:g}x unbounded UPDATE's, same load | {fmt_x(v['wall_ratio'])} | {pf(v['wall_ok'])} |")
        add(f"| the poller never lost a completion | {s['lost']} of {s['completions']} completed rows now stale_expired | {pf(v['lost_ok'])} |")
        add(f"| no foreground error | {v['errors']} | {pf(v['errors_ok'])} |")
        add(f"| (check) every candidate swept, no other row | {s['remaining']:,} left, {s['others_stale']} others | {pf(s['remaining'] == 0 and s['others_stale'] == 0)} |")
    return "\n".join(lines)


def fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def pf(ok: bool | None) -> str:
    return "-" if ok is None else "PASS" if ok else "FAIL"


# --------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--candidates", type=int, default=300_000)
    p.add_argument("--seconds", type=float, default=30.0, help="how long the idle scenario measures (default 30)")
    p.add_argument("--lead", type=float, default=5.0, help="seconds of foreground load before the writer starts (default 5)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated (default {','.join(SCENARIOS)}), from idle, unbounded, litellm, sweep-<knobs> or notebook-<knobs>"
                        " (e.g. sweep-w1-p0.1, sweep-r5000)")
    p.add_argument("--litellm-seconds", type=float, default=60.0,
                   help="stop LiteLLM's loop after this many seconds and extrapolate the rest (default 60)")
    p.add_argument("--rate", action="append", default=[], metavar="KIND=PER_S", help=f"override a rate; kinds: {', '.join(KINDS)}")
    p.add_argument("--conns", type=int, default=4, help="connections per request kind (default 4; the poller has 1)")
    p.add_argument("--completes", type=int, default=5, help="rows the poller marks completed per cycle (default 5 of 50)")
    p.add_argument("--client-ids", type=int, default=20_000, help="random candidates the client updates and reads pick from")
    p.add_argument("--sample-every", type=float, default=1.0, help="seconds between pg_stat_activity samples (default 1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fast", action="store_true", help="measure with fsync/synchronous_commit/full_page_writes off")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a PostgreSQL setting for the measurements")
    p.add_argument("--index", action="store_true", help="build the runbook's partial index (05_create_index) in the base first")
    p.add_argument("--keep", action="store_true", help="keep the server and its base database (prints where)")
    p.add_argument("--home", type=Path, help="reuse a server kept with --keep (its --rows/--candidates)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--render", type=Path, metavar="JSON", help="print the tables of a run saved with --json, run nothing")
    p.add_argument("--writer", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.writer or args.render:
        return args
    if args.rows < 100 or not 1 <= args.candidates < args.rows:
        p.error("need --rows >= 100 and 1 <= --candidates < --rows")
    args.rates = dict(RATES)
    for item in args.rate:
        kind, _, value = item.partition("=")
        if kind not in KINDS:
            p.error(f"unknown kind {kind!r}")
        args.rates[kind] = float(value)
    for name in args.scenarios.split(","):
        if name not in ("idle", "unbounded", "litellm") and not _SWEEP_NAME.match(name):
            p.error(f"unknown scenario {name!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.writer:
        return writer_child(json.loads(args.writer))
    if args.render:
        saved = json.loads(args.render.read_text())
        print(f"{saved['machine']}\ncommand: {saved.get('command', '?')}\n")
        print(render(saved["scenarios"], int(saved.get("candidates") or 0)))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = dict(B.FAST_SETTINGS if args.fast else B.MEASURE_SETTINGS)
    for item in args.set:
        name, _, value = item.partition("=")
        settings[name] = value
    started = time.monotonic()
    reuse = args.home is not None
    home = args.home or Path(tempfile.mkdtemp(dir="/var/tmp", prefix="litellm-runbook-live-"))
    server = EmbeddedServer(home)
    results: list[dict[str, Any]] = []
    try:
        log(f"server in {home}")
        if reuse:
            meta = Meta(**json.loads((home / META).read_text()))
        else:
            built = B.build(server, args.rows, args.candidates, args.seed, index=args.index)
            meta = prepare_base(server, built, args.rows, args.client_ids, args.seed)
            (home / META).write_text(json.dumps(meta.__dict__))
        B.restart(server, settings)
        with B.connect(server.dsn()) as admin:
            info = B.machine(admin)
            log(info)
            runs: Counter[str] = Counter()
            for name in args.scenarios.split(","):
                runs[name] += 1
                try:
                    results.append(run_scenario(admin, server, name, meta, args))
                    if runs[name] > 1:  # a scenario run again (idle at the end: the drift): its own rows
                        results[-1]["name"] = f"{name} #{runs[name]}"
                except B.CheckFailed as exc:
                    log(f"{name}: FAILED: {exc}")
                log(f"{name}: done")
                if args.json:  # after every scenario, so that an interrupted run leaves what it measured
                    args.json.write_text(json.dumps({"machine": info, "partial": True, "scenarios": results}, default=str))
        for s in results:
            extrapolate(s, meta.candidates)
        total = time.monotonic() - started
        command = "python bench/live.py " + " ".join(sys.argv[1:] if argv is None else argv)
        rates = ", ".join(f"{k} {v:g}/s" for k, v in args.rates.items())
        print(f"\n{info}\nrows: {meta.rows:,}, candidates: {meta.candidates:,}; {meta.sizes}")
        print(f"foreground: {rates}; {args.conns} connections per request kind, the poller 1 (claims {POLL_LIMIT}, "
              f"completes {args.completes}); load {args.lead:g} s before the writer; idle {args.seconds:g} s; "
              f"samples every {args.sample_every:g} s; sweep-throttled = {THROTTLED}")  # fmt: skip
        print(f"command: {command}; total run time {total / 60:.1f} min\n")
        print(render(results, meta.candidates))
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "command": command, "rows": meta.rows, "candidates": meta.candidates,
                                             "rates": args.rates, "throttled": THROTTLED, "scenarios": results}, default=str))  # fmt: skip
        return 0
    except B.CheckFailed as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            log(f"kept: server in {home} (reuse with --home {home})")
        else:
            server.destroy()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
