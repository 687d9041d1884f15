#!/usr/bin/env python3
"""Benchmark: the runbook's sweep against LiteLLM's own statement and the unbounded UPDATE.

One command, nothing to set up beyond ``make venv``::

    .venv/bin/python bench/bench.py                                   # 1M rows, 300K candidates
    .venv/bin/python bench/bench.py --rows 20000 --candidates 6000    # smoke run, < 1 minute

What it does, in order:

1. starts its own PostgreSQL 16 (``runbook.db.embedded``) in a fresh folder under /var/tmp;
2. builds LiteLLM's schema from its migrations (``runbook.tools.demo.reset_database``);
3. loads ``--rows`` managed objects with COPY, in ``created_at`` order as LiteLLM inserts
   them: ``--candidates`` of them are stale ``response`` rows in non-terminal statuses,
   the rest a mix of terminal statuses, NULL statuses, recent rows and batch/fine-tune
   rows; ``file_object`` is an OpenAI Response document of 1.0-2.0 KB (mean 1.5 KB);
   no row is created within 6 hours either side of the 7-day cutoff, so every variant,
   whenever it runs, sees exactly the same candidates;
4. VACUUM ANALYZE, CHECKPOINT, then restarts the server with the measurement settings
   (by default durable ones: fsync, synchronous_commit and full_page_writes on);
5. for each variant: ``CREATE DATABASE ... TEMPLATE base`` (an identical copy), CHECKPOINT,
   run it on a new connection, measure, check that exactly the candidates ended up
   ``stale_expired`` (exit status 1 and a loud message otherwise), drop the copy;
6. prints the results table and the targets (PASS/FAIL), then destroys the server
   (unless ``--keep``).

Variants: ``floor`` (one unbounded UPDATE with the production predicate), ``peer``
(LiteLLM's production statement, verbatim, looped with LIMIT until it updates 0 rows),
``sweepN`` (``runbook.sweep`` at batch size N; ``-wK``: with K workers, ``-fixed``: no WAL
budget, ``-tM``: target_batch_ms M), ``inspect`` (``runbook.inspect`` timed,
read-only, on the base copy) and ``explain`` (not in the default list: the sweep at
``--explain-batch-size`` with every statement, BEGIN and COMMIT timed by kind, and EXPLAIN
(ANALYZE, BUFFERS, WAL) of batches 1, 2 and the one at 90%, each rolled back before the real one).

Scale (not part of the default command: the build alone takes minutes)::

    .venv/bin/python bench/bench.py --json bench/out/1m.json
    .venv/bin/python bench/bench.py --rows 10000000 --candidates 3000000 \
        --variants floor,sweep1000,notebook1000,inspect --baseline bench/out/1m.json

compares each variant's cost per row with the 1M-row run's, and reports the notebook
kernel's peak RSS and the temporary files every variant's sessions wrote. ``--index``
builds the runbook's partial index (what ``05_create_index`` builds) in the base first,
so every variant, the floor included, runs with it: the procedure at that scale.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runbook  # noqa: E402
from runbook.sql import candidates as candidate_sql  # noqa: E402
from runbook.tools.demo import reset_database  # noqa: E402
from runbook.db.embedded import EmbeddedServer  # noqa: E402
from runbook.audit.record import read_record  # noqa: E402
from runbook.tools.migrations import migrations_version  # noqa: E402

Conn = psycopg.Connection[tuple[Any, ...]]

TABLE = sql.Identifier("public", "LiteLLM_ManagedObjectTable")
TABLE_NAME = "LiteLLM_ManagedObjectTable"
BASE_DB = "bench_base"
STALE_DAYS = 7
GAP = timedelta(hours=6)  # no row is created this close to the cutoff, on either side
SPAN = timedelta(days=60)

# The production rule (FACTS.md); the candidates are exactly the rows it selects.
TERMINAL = ("completed", "complete", "failed", "expired", "cancelled", "stale_expired")
NEW_STATUS = "stale_expired"

# LiteLLM's production statement (litellm-enterprise CheckResponsesCost._expire_stale_rows,
# PR #25227), verbatim but for psycopg's placeholders: $1 is the cutoff, $2 the batch size.
PEER_SQL = sql.SQL(
    """UPDATE "LiteLLM_ManagedObjectTable" SET "status" = 'stale_expired' WHERE "id" IN """
    """(SELECT "id" FROM "LiteLLM_ManagedObjectTable" WHERE "file_purpose" = 'response' AND "status" NOT IN """
    """('completed', 'complete', 'failed', 'expired', 'cancelled', 'stale_expired') AND "created_at" < %s::timestamptz """
    """ORDER BY "created_at" ASC LIMIT %s)"""
)

# The floor: the same predicate, no LIMIT, no subquery: one statement, one scan.
FLOOR_SQL = sql.SQL(
    """UPDATE "LiteLLM_ManagedObjectTable" SET "status" = 'stale_expired' WHERE "file_purpose" = 'response' """
    """AND "status" NOT IN ('completed', 'complete', 'failed', 'expired', 'cancelled', 'stale_expired') """
    """AND "created_at" < %s::timestamptz"""
)

# Settings of the loading phase (not measured) and of the measurements. The embedded
# server starts with fsync=off, full_page_writes=off, synchronous_commit=off; the
# measurements use durable settings closer to a production server unless --fast.
LOAD_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "maintenance_work_mem": "512MB",
    "autovacuum": "off",
}
MEASURE_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "1GB",
    "max_wal_size": "2GB",
    # Off so that every variant pays for exactly its own work: with it on, autovacuum
    # starts on the table in the middle of a batched run (200K dead rows) but only after
    # the unbounded UPDATE. All variants leave the same dead rows behind.
    "autovacuum": "off",
    "track_io_timing": "on",
}
FAST_SETTINGS = {**MEASURE_SETTINGS, "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
SHOWN_SETTINGS = (
    "server_version", "fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "wal_buffers", "max_wal_size",
    "checkpoint_timeout", "wal_level", "wal_compression", "autovacuum", "jit", "work_mem", "temp_buffers",
    "effective_cache_size", "random_page_cost",
)  # fmt: skip

# Targets for the runbook's sweep (reported, never asserted).
TARGET_WALL_1000 = 1.2
TARGET_WALL_10000 = 1.1
TARGET_P99_MS = 150.0
TARGET_LATE_EARLY = 1.2
# Scale (issue 14): 10M rows, 3M candidates, against the default 1M-row run given as --baseline.
TARGET_SCALE_PER_ROW = 1.2
TARGET_RSS_MB = 300
TARGET_INSPECT_S = 15.0

_SETTING = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_SETTING_VALUE = re.compile(r"[A-Za-z0-9_.:+-]+\Z")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# CPU accounting: how much CPU other processes took while a variant ran


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _proc_cpu(pid: int, with_children: bool) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    total = int(parts[11]) + int(parts[12]) + ((int(parts[13]) + int(parts[14])) if with_children else 0)
    return total / _TICK


def own_cpu(server: EmbeddedServer) -> dict[int, float]:
    """CPU seconds of this process and the postmaster (each with its reaped children: the
    notebook variants' papermill and kernel), and the postmaster's live children."""
    out = {os.getpid(): _proc_cpu(os.getpid(), True)}
    try:
        postmaster = int((server.pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return out
    out[postmaster] = _proc_cpu(postmaster, True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    out[int(entry.name)] = _proc_cpu(int(entry.name), False)
            except (OSError, ValueError, IndexError):
                continue
    return out


@dataclass
class CpuMeter:
    """Busy CPU seconds of the machine minus ours between start() and stop()."""

    server: EmbeddedServer
    busy: float = 0.0
    ours: dict[int, float] = field(default_factory=dict)

    def start(self) -> None:
        self.busy, self.ours = _busy_seconds(), own_cpu(self.server)

    def stop(self) -> tuple[float, float]:
        """(our CPU seconds, other processes' CPU seconds)."""
        busy = _busy_seconds() - self.busy
        now = own_cpu(self.server)
        ours = sum(v - self.ours.get(pid, 0.0) for pid, v in now.items())
        return ours, max(0.0, busy - ours)


# --------------------------------------------------------------------------------------
# The server


def restart(server: EmbeddedServer, settings: dict[str, str]) -> str:
    """Restart ``server`` with ``settings`` on the command line; return its DSN.

    ``EmbeddedServer.start()`` passes fsync=off etc. with ``-o``, which outranks
    ALTER SYSTEM, so the bench starts the server itself with its own ``-o``. This uses
    the server's private ``_run`` (bench only; the runbook never does this).
    """
    for name, value in settings.items():
        if not _SETTING.match(name) or not _SETTING_VALUE.match(value):
            raise SystemExit(f"bad setting {name}={value!r}")
    server.stop()
    options = " ".join(
        [server.listen_options() + " -c timezone=UTC -c max_connections=100"]
        + [f"-c {name}={value}" for name, value in settings.items()]
    )
    server._run("pg_ctl", "start", "-w", "-t", "120", "-D", str(server.pgdata), "-l", str(server.log), "-o", options)
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(server.dsn(), connect_timeout=2):
                return server.dsn()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def connect(dsn: str) -> Conn:
    return psycopg.connect(dsn, autocommit=True, options="-c TimeZone=UTC")


def one(conn: Conn, query: sql.Composed | sql.SQL | str, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def db_now_utc(conn: Conn) -> datetime:
    now = one(conn, "SELECT statement_timestamp() AT TIME ZONE 'UTC'")
    assert isinstance(now, datetime)
    return now


# --------------------------------------------------------------------------------------
# The data


_WORDS = (
    "the model response output text token request user assistant system tool call function result data "
    "value report summary analysis customer order invoice payment account balance service status update "
    "project team review plan design test build deploy release version change issue fix error warning "
    "note example question answer context document section table figure chart metric latency throughput "
    "cost budget quarter month week day morning evening region market product feature pricing contract "
    "policy compliance security access key secret rotate audit log event trace span cluster node queue "
    "worker batch job schedule retry timeout limit quota rate window cache index shard replica primary"
).split()


def _file_object_pool(rng: random.Random, size: int) -> list[tuple[str, str]]:
    """``size`` (middle, tail) pieces of OpenAI Response documents, 1.0-2.0 KB once assembled.

    A row's document is ``'{"id": "<model id>", "object": "response", "created_at": <epoch>,
    "status": "<status>"' + middle + tail``; only ASCII, no backslash, tab or newline, so
    it needs no escaping in COPY's text format.
    """
    pool = []
    for n in range(size):
        target = 1000 + (n * 1000) // size + rng.randrange(0, 1000 // size + 1)
        body: dict[str, Any] = {
            "background": True,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": rng.choice(["gpt-4o-2024-08-06", "gpt-4.1-2025-04-14", "o3-2025-04-16", "gpt-4o-mini-2024-07-18"]),
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": {
                "input_tokens": rng.randrange(20, 4000),
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": rng.randrange(20, 900),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": rng.randrange(40, 5000),
            },
            "user": None,
            "metadata": {},
        }
        base_len = len(json.dumps(body)) + 140  # + id, object, created_at, status
        words: list[str] = []
        length = 0
        while base_len + 150 + length < target:
            word = rng.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        body["output"] = [
            {
                "id": "msg_" + "%048x" % rng.getrandbits(192),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "annotations": [], "text": " ".join(words).capitalize() + "."}],
            }
        ]
        text = json.dumps(body)
        assert text.startswith("{") and "\\" not in text and "\t" not in text and "\n" not in text
        pool.append((", " + text[1:-1], "}"))
    return pool


@dataclass(frozen=True)
class Plan:
    """What ``--rows``/``--candidates`` mean on the timeline; computed before loading."""

    rows: int
    candidates: int
    now: datetime  # naive UTC, the server's clock at load time
    cutoff: datetime  # now - 7 days: the middle of the empty gap

    @property
    def start(self) -> datetime:
        return self.now - SPAN

    @property
    def usable(self) -> timedelta:
        return SPAN - 2 * GAP - timedelta(minutes=10)

    def created(self, slot: float) -> datetime:
        """The created_at of position ``slot`` in [0, rows): time order with the gap cut out."""
        t = self.start + self.usable * (slot / self.rows)
        if t >= self.cutoff - GAP:
            t += 2 * GAP
        return t

    def old_rows(self) -> int:
        """How many row slots fall before the gap (the only ones that can be candidates)."""
        return sum(1 for i in range(self.rows) if self.created(i + 1) < self.cutoff - GAP)


_CANDIDATE_STATUSES = (("queued", 0.45), ("in_progress", 0.80), ("requires_action", 0.85), ("incomplete", 1.0))
_OLD_RESPONSE_STATUSES = (
    ("completed", 0.55), ("failed", 0.63), ("cancelled", 0.68), ("expired", 0.72), ("complete", 0.80),
    ("stale_expired", 0.90), (None, 1.0),
)  # fmt: skip
_RECENT_RESPONSE_STATUSES = (
    ("queued", 0.10), ("in_progress", 0.20), ("completed", 0.75), ("failed", 0.80), ("incomplete", 0.85),
    ("cancelled", 0.90), (None, 0.95), ("requires_action", 1.0),
)  # fmt: skip
_BATCH_STATUSES = (
    ("completed", 0.55), ("in_progress", 0.65), ("validating", 0.70), ("finalizing", 0.73), ("failed", 0.80),
    ("expired", 0.85), ("cancelled", 0.90), (None, 1.0),
)  # fmt: skip
_FINE_TUNE_STATUSES = (("succeeded", 0.6), ("failed", 0.75), ("queued", 0.8), ("running", 0.9), ("cancelled", 1.0))


def _pick(rng: random.Random, weights: tuple[tuple[str | None, float], ...]) -> str | None:
    r = rng.random()
    for value, bound in weights:
        if r < bound:
            return value
    return weights[-1][0]


COPY_COLUMNS = (
    "id", "unified_object_id", "model_object_id", "file_object", "file_purpose", "created_at", "created_by",
    "updated_at", "updated_by", "status", "team_id", "api_key", "org_id", "end_user_id",
)  # fmt: skip


def generate(plan: Plan, seed: int, chunk_bytes: int = 4 << 20) -> Iterator[bytes]:
    """COPY text-format chunks of all rows, in created_at order. Exactly ``plan.candidates``
    rows are candidates (selection sampling over the rows older than the gap)."""
    rng = random.Random(seed)
    pool = _file_object_pool(rng, 512)
    teams = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(20)]
    users = ["default_user_id"] + [f"user-{n:04d}@example.com" for n in range(50)]
    keys = ["%064x" % rng.getrandbits(256) for _ in range(200)]
    orgs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(5)]
    old = plan.old_rows()
    need = plan.candidates
    if need > old:
        raise SystemExit(f"--candidates {need} is more than the {old} rows older than the cutoff")
    epoch = datetime(1970, 1, 1)
    buf: list[str] = []
    size = 0
    for i in range(plan.rows):
        created = plan.created(i + rng.random()).replace(microsecond=0) + timedelta(milliseconds=rng.randrange(1000))
        is_old = i < old
        if not is_old and created < plan.cutoff + GAP:
            created = plan.cutoff + GAP + timedelta(seconds=1)  # the one slot that straddles the gap
        if is_old and rng.random() * (old - i) < need:
            need -= 1
            purpose, status = "response", _pick(rng, _CANDIDATE_STATUSES)
        else:
            r = rng.random()
            purpose = "response" if r < 0.70 else "batch" if r < 0.90 else "fine-tune"
            if purpose == "response":
                status = _pick(rng, _OLD_RESPONSE_STATUSES if is_old else _RECENT_RESPONSE_STATUSES)
            elif purpose == "batch":
                status = _pick(rng, _BATCH_STATUSES)
            else:
                status = _pick(rng, _FINE_TUNE_STATUSES)
        key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        model_id = "resp_%048x" % rng.getrandbits(192)
        unified = base64.b64encode(
            f"litellm:custom_llm_provider:openai;model_id:{teams[i % 7]};response_id:{model_id}".encode()
        ).decode()
        middle, tail = pool[rng.randrange(len(pool))]
        created_epoch = int((created - epoch).total_seconds())
        doc = (
            '{"id": "' + model_id + '", "object": "' + ("response" if purpose == "response" else purpose)
            + '", "created_at": ' + str(created_epoch) + ', "status": "' + (status or "queued") + '"'
            + middle + tail
        )  # fmt: skip
        user = users[rng.randrange(len(users))]
        updated = created + timedelta(milliseconds=rng.randrange(3_600_000))
        r2 = rng.random()
        line = "\t".join(
            (
                key, "resp_" + unified, model_id, doc, purpose,
                created.isoformat(sep=" ", timespec="milliseconds"), user,
                updated.isoformat(sep=" ", timespec="milliseconds"), user,
                status if status is not None else "\\N",
                teams[rng.randrange(20)] if r2 < 0.7 else "\\N",
                keys[rng.randrange(200)],
                orgs[rng.randrange(5)] if r2 < 0.3 else "\\N",
                f"customer-{rng.randrange(10_000)}" if r2 > 0.8 else "\\N",
            )
        )  # fmt: skip
        buf.append(line)
        size += len(line) + 1
        if size >= chunk_bytes:
            yield ("\n".join(buf) + "\n").encode()
            buf, size = [], 0
    if buf:
        yield ("\n".join(buf) + "\n").encode()
    assert need == 0, need


def load(dsn: str, plan: Plan, seed: int) -> float:
    """COPY the rows into the (empty) table; return seconds."""
    t0 = time.monotonic()
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(TABLE, sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS)))
    with connect(dsn) as conn:
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            done = reported = 0
            for chunk in generate(plan, seed):
                copy.write(chunk)
                done += chunk.count(b"\n")
                if done - reported >= 100_000:
                    log(f"  {done:,} rows sent")
                    reported = done
    return time.monotonic() - t0


# --------------------------------------------------------------------------------------
# Checks: every variant must change exactly the candidates


Histogram = dict[tuple[str, str | None, bool], int]


def histogram(conn: Conn, cutoff: datetime) -> Histogram:
    """Rows by (purpose, status, older than cutoff)."""
    rows = conn.execute(
        sql.SQL("SELECT file_purpose, status, created_at < %s, count(*) FROM {} GROUP BY 1, 2, 3").format(TABLE),
        [cutoff],
    ).fetchall()
    return {(r[0], r[1], bool(r[2])): int(r[3]) for r in rows}


def is_candidate(key: tuple[str, str | None, bool]) -> bool:
    purpose, status, old = key
    return purpose == "response" and old and status is not None and status not in TERMINAL


def expected_after(before: Histogram) -> Histogram:
    after: Histogram = {}
    for key, n in before.items():
        target = ("response", NEW_STATUS, True) if is_candidate(key) else key
        after[target] = after.get(target, 0) + n
    return after


class CheckFailed(Exception):
    pass


# --------------------------------------------------------------------------------------
# Measuring one variant


@dataclass
class Measurement:
    name: str
    wall: float = 0.0
    changed: int = 0
    batches: list[float] = field(default_factory=list)  # seconds per batch that changed rows
    batch_rows: list[int] = field(default_factory=list)  # rows each of those batches looked at
    statements: int = 0  # statements / batches run, including a final empty one
    wal_bytes: int = 0
    rows_read: int = 0
    seq_scans: int = 0
    idx_scans: int = 0
    hot_updates: int = 0
    outside_batches: float = 0.0  # wall time not spent inside batches (sweep: snapshot, checks, count)
    note: str = ""
    checked: bool = False
    cpu_ours: float = 0.0
    cpu_others: float = 0.0  # CPU seconds other processes on the machine used meanwhile
    checkpoints: int = 0
    wal_buffers_full: int = 0
    started_utc: str = ""
    committed_at: list[str] = field(default_factory=list)  # per batch (sweep only), for matching server.log
    temp_files: int = 0  # temporary files the copy's sessions wrote (sorts, hashes spilled), pg_stat_database
    temp_bytes: int = 0
    peak_rss_kb: int = 0  # notebookN: the largest child process's peak RSS (the kernel), from getrusage


@dataclass(frozen=True)
class Stats:
    seq_tup_read: int
    idx_tup_fetch: int
    seq_scan: int
    idx_scan: int
    n_tup_hot_upd: int


def table_stats(conn: Conn) -> Stats:
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0), coalesce(seq_scan, 0), coalesce(idx_scan, 0),"
        " coalesce(n_tup_hot_upd, 0) FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = %s",
        [TABLE_NAME],
    ).fetchone()
    return Stats(*(int(v) for v in row)) if row else Stats(0, 0, 0, 0, 0)


def checkpoint_count(conn: Conn) -> int:
    return int(one(conn, "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"))


def wal_buffers_full(conn: Conn) -> int:
    """Times a backend found the WAL buffers full and wrote WAL out itself (whole server)."""
    return int(one(conn, "SELECT wal_buffers_full FROM pg_stat_wal"))


def temp_usage(conn: Conn) -> tuple[int, int]:
    """Temporary files and bytes written by every session of this database so far (the
    server's cumulative statistics; a session's are flushed at its end at the latest)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT temp_files, temp_bytes FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def wal_lsn(conn: Conn) -> str:
    return str(one(conn, "SELECT pg_current_wal_lsn()::text"))


def wal_diff(conn: Conn, start: str) -> int:
    return int(one(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", [start]))


def run_floor(conn: Conn, m: Measurement, batch_size: int) -> None:
    cutoff = datetime.now(timezone.utc) - timedelta(days=STALE_DAYS)
    t0 = time.monotonic()
    m.changed = conn.execute(FLOOR_SQL, [cutoff]).rowcount
    m.batches.append(time.monotonic() - t0)
    m.statements = 1


def run_peer(conn: Conn, m: Measurement, batch_size: int) -> None:
    # As production: an aware UTC cutoff bound as timestamptz, session TimeZone UTC.
    cutoff = datetime.now(timezone.utc) - timedelta(days=STALE_DAYS)
    while True:
        t0 = time.monotonic()
        n = conn.execute(PEER_SQL, [cutoff, batch_size]).rowcount
        m.statements += 1
        if n == 0:
            break
        m.batches.append(time.monotonic() - t0)
        m.changed += n
        if m.statements % 50 == 0:
            log(f"  peer: {m.statements} batches, {m.changed:,} rows, last {m.batches[-1] * 1000:.0f} ms")


def call_sweep(conn: Conn, opts: runbook.Options, run_id: str) -> runbook.SweepResult:
    """The one place the bench calls ``runbook.sweep``: adapt here when its signature changes.

    Passes ``run_id`` when the sweep accepts it (the ledger), else calls without it.
    """
    sweep: Callable[..., runbook.SweepResult] = runbook.sweep
    try:
        return sweep(conn, runbook.Target(), opts, run_id=run_id)
    except TypeError as exc:
        if "run_id" not in str(exc):
            raise
        return sweep(conn, runbook.Target(), opts)


def sweep_options(batch_size: int, target_batch_ms: int = 0, fixed: bool = False, workers: int = 0) -> runbook.Options:
    """A live sweep with no run-time bound: every candidate in one run. ``fixed``: every
    batch ``batch_size`` rows whatever WAL it writes (no WAL budget); ``workers``: 0 keeps
    the default."""
    unbounded: dict[str, Any] = {"max_batches": 1_000_000, "max_seconds": 7 * 86400, "max_rows": 10**9}
    if target_batch_ms:
        unbounded["target_batch_ms"] = target_batch_ms
    if fixed:
        unbounded["max_batch_wal_bytes"] = 2**50
    if workers:
        unbounded["workers"] = workers
    return runbook.options(batch_size=batch_size, dry_run=False, **unbounded)


def run_sweep(conn: Conn, m: Measurement, batch_size: int) -> None:
    # sweepN-tM: time-adaptive sizing with target_batch_ms=M; sweepN-fixed: no WAL budget;
    # sweepN-wK: K workers (batches written at once)
    suffixes = dict(re.findall(r"-([a-z]+)([0-9]*)", m.name))
    fixed = "fixed" in suffixes
    target = int(suffixes.get("t") or 0)
    result = call_sweep(
        conn, sweep_options(batch_size, target, fixed, int(suffixes.get("w") or 0)), f"bench-{m.name}-{uuid.uuid4().hex[:8]}"
    )
    if result.stop_reason != "done":
        raise CheckFailed(f"{m.name}: sweep stopped with {result.stop_reason!r}, not 'done'")
    record_sweep(m, result.to_dict(), result.seconds)
    m.note = f"{result.candidates_at_start:,} in snapshot"


def record_sweep(m: Measurement, result: dict[str, Any], wall: float) -> None:
    """Fill ``m`` from a sweep's record (``SweepResult.to_dict()``); ``wall``: the time
    the variant took, of which what is not inside a batch goes to ``outside_batches``."""
    batches = result["batches"]
    m.changed = int(result["changed"])
    m.batches = [b["seconds"] for b in batches if b["changed"]]
    m.batch_rows = [b["selected"] for b in batches if b["changed"]]
    m.committed_at = [str(b["committed_at"]) for b in batches if b["changed"]]
    m.statements = len(batches)
    # With several workers batches overlap, so their times add up to more than the wall:
    # then only the time outside any batch is unknown, and is reported as 0.
    m.outside_batches = max(0.0, wall - sum(b["seconds"] for b in batches))


def run_notebook(conn: Conn, m: Measurement, batch_size: int) -> None:
    """``notebooks/03_sweep.ipynb`` as an operator runs it headless: ``python -m runbook run
    sweep`` (papermill, a fresh kernel) against this copy. Wall time is the whole process,
    kernel start, imports, record and charts included."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-notebook-"))
    env = {**os.environ, "DATABASE_URL": _url(conn)}
    params = {"batch_size": batch_size, "dry_run": False, "max_batches": 1_000_000, "max_seconds": 86400, "max_rows": 10**9}
    argv = [sys.executable, "-m", "runbook", "run", "sweep", "--run-dir", str(run_dir)]
    for key, value in params.items():
        argv += ["-p", key, repr(value)]
    try:
        t0 = time.monotonic()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        wall = time.monotonic() - t0
        # ru_maxrss of waited-for descendants: the largest is the kernel that ran the sweep.
        m.peak_rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if done.returncode != 0:
            raise CheckFailed(f"{m.name}: the notebook run failed: {done.stderr.strip()[-400:]}")
        executed = Path(done.stdout.strip().splitlines()[-1])
        record = read_record(executed)
        result = (record or {}).get("outcome", {}).get("sweep")
        if not result or result.get("stop_reason") != "done":
            raise CheckFailed(f"{m.name}: the notebook's sweep did not finish: {result and result.get('stop_reason')!r}")
        phases = _notebook_phases(executed, wall, float(result["seconds"]))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    m.wall = wall
    record_sweep(m, result, wall)
    m.note = f"{result['candidates_at_start']:,} in snapshot; {phases}"


def _notebook_phases(path: Path, wall: float, sweep_s: float) -> str:
    """Where a notebook run's wall time went, from papermill's timestamps in the notebook."""
    nb = json.loads(path.read_text())
    meta = nb["metadata"]["papermill"]
    cells = [c["metadata"]["papermill"] for c in nb["cells"] if c["cell_type"] == "code" and c["metadata"].get("papermill", {}).get("start_time")]
    sweep_cell = next(c["metadata"]["papermill"] for c in nb["cells"] if "run.sweep()" in "".join(c["source"]))
    t = datetime.fromisoformat
    kernel = (t(cells[0]["start_time"]) - t(meta["start_time"])).total_seconds()
    before = (t(sweep_cell["start_time"]) - t(cells[0]["start_time"])).total_seconds()
    shown = float(sweep_cell["duration"]) - sweep_s
    after = (t(meta["end_time"]) - t(sweep_cell["end_time"])).total_seconds()
    outside = wall - float(meta["duration"])
    return (
        f"sweep {sweep_s:.1f} s of {wall:.1f} s: process + papermill {outside:.1f}, kernel start {kernel:.1f}, "
        f"cells before {before:.1f}, report + chart {shown:.1f}, record + shutdown {after:.1f}"
    )


def _url(conn: Conn) -> str:
    """A DSN for this connection (the embedded server needs no password; host may be a socket folder)."""
    i = conn.info
    return psycopg.conninfo.make_conninfo(host=i.host, port=str(i.port), user=i.user, dbname=i.dbname)


Runner = Callable[[Conn, Measurement, int], None]


def measure(admin: Conn, server: EmbeddedServer, name: str, runner: Runner, batch_size: int, expected: Histogram, candidates: int, cutoff: datetime) -> Measurement:
    """Run one variant on a fresh copy of the base database and check what it changed."""
    copy = f"bench_{name}"
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))
    t0 = time.monotonic()
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(copy), sql.Identifier(BASE_DB)))
    log(f"{name}: copy of the base made in {time.monotonic() - t0:.1f} s")
    m = Measurement(name)
    try:
        with connect(server.dsn(copy)) as conn:
            admin.execute("CHECKPOINT")
            before = table_stats(conn)
            lsn = wal_lsn(conn)
            checkpoints = checkpoint_count(conn)
            buffers_full = wal_buffers_full(conn)
            temp_before = temp_usage(conn)
            log(f"{name}: running")
            meter = CpuMeter(server)
            meter.start()
            m.started_utc = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            t0 = time.monotonic()
            runner(conn, m, batch_size)
            m.wall = m.wall or time.monotonic() - t0  # a runner may time its own part
            m.cpu_ours, m.cpu_others = meter.stop()
            m.wal_bytes = wal_diff(conn, lsn)
            m.checkpoints = checkpoint_count(conn) - checkpoints
            m.wal_buffers_full = wal_buffers_full(conn) - buffers_full
            time.sleep(0.2)
            after = table_stats(conn)
            temp_after = temp_usage(conn)
            m.temp_files, m.temp_bytes = temp_after[0] - temp_before[0], temp_after[1] - temp_before[1]
            m.rows_read = (after.seq_tup_read - before.seq_tup_read) + (after.idx_tup_fetch - before.idx_tup_fetch)
            m.seq_scans = after.seq_scan - before.seq_scan
            m.idx_scans = after.idx_scan - before.idx_scan
            m.hot_updates = after.n_tup_hot_upd - before.n_tup_hot_upd
            log(f"{name}: {m.changed:,} rows in {m.wall:.1f} s; checking")
            got = histogram(conn, cutoff)
        if m.changed != candidates:
            raise CheckFailed(f"{name} reported {m.changed:,} rows changed; the candidates are {candidates:,}")
        if got != expected:
            diff = {k: (expected.get(k, 0), got.get(k, 0)) for k in set(got) | set(expected) if got.get(k, 0) != expected.get(k, 0)}
            raise CheckFailed(f"{name} changed other rows than exactly the candidates: (expected, got) {diff}")
        m.checked = True
        return m
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))


def measure_inspect(server: EmbeddedServer, candidates: int) -> Measurement:
    """Time ``runbook.inspect`` on the base database (read-only)."""
    m = Measurement("inspect")
    with connect(server.dsn(BASE_DB)) as conn:
        before = table_stats(conn)
        meter = CpuMeter(server)
        meter.start()
        t0 = time.monotonic()
        report = runbook.inspect(conn, runbook.Target(), runbook.options())
        m.wall = time.monotonic() - t0
        m.cpu_ours, m.cpu_others = meter.stop()
        after = table_stats(conn)
    m.rows_read = (after.seq_tup_read - before.seq_tup_read) + (after.idx_tup_fetch - before.idx_tup_fetch)
    m.seq_scans = after.seq_scan - before.seq_scan
    m.statements = 1
    m.batches = [m.wall]
    if report.candidates != candidates:
        raise CheckFailed(f"inspect counted {report.candidates:,} candidates; there are {candidates:,}")
    m.checked = True
    m.note = f"counted {report.candidates:,}; full_scan={report.full_scan}"
    return m


class ProfilingConnection(psycopg.Connection[tuple[Any, ...]]):
    """A connection that times every statement the sweep runs, by kind, and EXPLAINs
    (ANALYZE, BUFFERS, WAL) chosen executions of the batch UPDATE in a savepoint that is
    rolled back before the real statement runs. Statements are recognised by comparing
    them with what ``runbook.sql.candidates`` builds, so the sweep's code is used unchanged."""

    explain_batches: set[int]
    timings: dict[str, list[float]]
    plans: list[tuple[str, list[str]]]
    _kinds: list[tuple[str, Any]]

    def setup(self, target: runbook.Target, explain_batches: set[int]) -> None:
        self.explain_batches = explain_batches
        self.timings = {}
        self.plans = []
        snap = candidate_sql.snapshot(target)
        self._kinds = [
            ("batch_update", candidate_sql.batch_update(target)),
            ("snapshot_next (keyset step)", candidate_sql.snapshot_next()),
            ("snapshot: CREATE TEMP TABLE AS (full scan)", snap[1]),
            ("snapshot: CREATE INDEX", snap[2]),
            ("snapshot: ANALYZE", snap[3]),
            ("snapshot: DROP TABLE", snap[0]),
            ("candidate_count (full scan)", candidate_sql.candidate_count(target)),
        ]

    def kind(self, query: Any) -> str:
        for name, known in getattr(self, "_kinds", []):
            if query == known:
                return str(name)
        text = query if isinstance(query, str) else query.as_string(self) if isinstance(query, sql.Composable) else ""
        return "other: " + " ".join(str(text).split())[:50]

    @contextmanager
    def transaction(self, savepoint_name: str | None = None, force_rollback: bool = False) -> Iterator[psycopg.Transaction]:
        """Times BEGIN and COMMIT of top-level transactions (not savepoints)."""
        outer = self.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        t0 = time.monotonic()
        with super().transaction(savepoint_name, force_rollback) as tx:
            if outer:
                self.timings.setdefault("BEGIN", []).append(time.monotonic() - t0)
            yield tx
            t1 = time.monotonic()
        if outer:
            self.timings.setdefault("COMMIT", []).append(time.monotonic() - t1)

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool = False) -> Any:
        kind = self.kind(query)
        if kind == "batch_update":
            n = len(self.timings.get(kind, [])) + 1
            if n in self.explain_batches:
                try:
                    with self.transaction():
                        rows = super().execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, WAL, VERBOSE false) ") + query, params).fetchall()
                        self.plans.append((f"batch_update, batch {n}", [str(r[0]) for r in rows]))
                        raise _Rollback
                except _Rollback:
                    pass
        t0 = time.monotonic()
        cur = super().execute(query, params, prepare=prepare, binary=binary)
        self.timings.setdefault(kind, []).append(time.monotonic() - t0)
        return cur


class _Rollback(Exception):
    pass


def explain_sweep(admin: Conn, server: EmbeddedServer, batch_size: int, candidates: int) -> None:
    """Run the sweep at ``batch_size`` on a copy with every statement timed, print where
    the time goes, the plans of batches 1, 2 and the one at 90%, and which plans the
    server cached (psycopg prepares a statement after 5 executions)."""
    copy = "bench_explain"
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(copy), sql.Identifier(BASE_DB)))
    admin.execute("CHECKPOINT")
    batches = math.ceil(candidates / batch_size)
    late = max(3, math.ceil(batches * 0.9))
    try:
        with ProfilingConnection.connect(server.dsn(copy), autocommit=True, options="-c TimeZone=UTC") as conn:
            conn.setup(runbook.Target(), {1, 2, late})
            # LiteLLM's statement, once, for comparison (rolled back).
            cutoff = datetime.now(timezone.utc) - timedelta(days=STALE_DAYS)
            try:
                with conn.transaction():
                    rows = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, WAL) ") + PEER_SQL, [cutoff, 1000]).fetchall()
                    conn.plans.append(("peer (LiteLLM's statement), first batch of 1000", [str(r[0]) for r in rows]))
                    raise _Rollback
            except _Rollback:
                pass
            conn.timings.clear()
            t0 = time.monotonic()
            result = call_sweep(conn, sweep_options(batch_size), f"bench-explain-{uuid.uuid4().hex[:8]}")
            wall = time.monotonic() - t0
            prepared = conn.execute(
                "SELECT left(regexp_replace(statement, '\\s+', ' ', 'g'), 60), generic_plans, custom_plans"
                " FROM pg_prepared_statements ORDER BY 2 DESC, 3 DESC"
            ).fetchall()
        print(f"\n## explain: sweep at batch size {batch_size:,} on a copy, every statement timed ({wall:.2f} s wall, "
              f"{result.changed:,} rows, {len(result.batches)} batches, stop {result.stop_reason}; batches 1, 2, {late} "
              "were also EXPLAIN ANALYZEd and rolled back first, so their batch times include that)\n")
        print("| statement kind | executions | total s | share of wall | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|---|")
        accounted = 0.0
        for kind, values in sorted(conn.timings.items(), key=lambda kv: -sum(kv[1])):
            accounted += sum(values)
            print(f"| {kind} | {len(values)} | {sum(values):.2f} | {sum(values) / wall:.0%} | {percentile(values, 0.5) * 1000:.1f} "
                  f"| {percentile(values, 0.99) * 1000:.1f} | {max(values) * 1000:.1f} |")
        print(f"| (python and round trips not inside execute, BEGIN or COMMIT) | - | {wall - accounted:.2f} | {(wall - accounted) / wall:.0%} | | | |")
        print("\nprepared statements on the sweep's connection (generic vs custom plans):")
        for p in prepared:
            print(f"  generic={p[1]} custom={p[2]}  {p[0]}")
        for label, plan in conn.plans:
            print(f"\n### {label}\n")
            print("\n".join("    " + (line if len(line) <= 240 else line[:200] + f"... ({len(line):,} chars)") for line in plan))
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))


# --------------------------------------------------------------------------------------
# Report


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def late_early(values: Sequence[float]) -> float | None:
    """p50 of the last 10% of batches over p50 of the first 10% (None for fewer than 2 batches)."""
    if len(values) < 2:
        return None
    k = max(1, len(values) // 10)
    return percentile(values[-k:], 0.5) / percentile(values[:k], 0.5)


def per_row(m: Measurement) -> list[float]:
    """Seconds per row of each batch (empty when rows per batch were not recorded)."""
    return [t / n for t, n in zip(m.batches, m.batch_rows, strict=True) if n] if len(m.batch_rows) == len(m.batches) else []


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_int(n: int) -> str:
    return f"{n:,}"


def render(results: list[Measurement], candidates: int, baseline: dict[str, dict[str, Any]] | None = None) -> str:
    """The tables and targets; ``baseline``: another run's measurements by variant (its
    ``--json``), whose cost per row each variant of the same name is compared with."""
    floor = next((m for m in results if m.name == "floor"), None)

    def ratio(value: float, base: float | None) -> str:
        return "-" if not base else f"{value / base:.2f}x"

    header = ["variant", "wall s", "rows/s", "batches", "rows/batch p50", "p50 ms", "p99 ms", "late/early", "late/early per row",
              "WAL MB", "rows read", "wall vs floor", "WAL vs floor", "read vs floor"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for m in results:
        is_inspect = m.name == "inspect"
        lines.append(
            "| " + " | ".join([
                m.name,
                f"{m.wall:.2f}",
                "-" if is_inspect or not m.wall else fmt_int(round(m.changed / m.wall)),
                str(len(m.batches)) if not is_inspect else "-",
                fmt_int(round(percentile(m.batch_rows, 0.5))) if m.batch_rows else "-",
                f"{percentile(m.batches, 0.5) * 1000:.1f}" if m.batches else "-",
                f"{percentile(m.batches, 0.99) * 1000:.1f}" if m.batches else "-",
                fmt_ratio(late_early(m.batches)),
                fmt_ratio(late_early(per_row(m))),
                f"{m.wal_bytes / 1e6:,.1f}" if not is_inspect else "-",
                fmt_int(m.rows_read),
                ratio(m.wall, floor.wall if floor else None),
                ratio(m.wal_bytes, floor.wal_bytes if floor else None) if not is_inspect else "-",
                ratio(m.rows_read, floor.rows_read if floor else None),
            ]) + " |"
        )  # fmt: skip
    lines.append("")
    lines.append(
        "| variant | changed | statements | seq scans | index scans | HOT updates | checkpoints | WAL buffers full "
        "| outside batches s | CPU s (ours) | CPU s (other processes) | temp files (MB) | peak RSS MB | check | note |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in results:
        lines.append(
            f"| {m.name} | {fmt_int(m.changed)} | {m.statements} | {m.seq_scans} | {m.idx_scans} | {fmt_int(m.hot_updates)} "
            f"| {m.checkpoints} | {fmt_int(m.wal_buffers_full)} | {m.outside_batches:.2f} | {m.cpu_ours:.1f} | {m.cpu_others:.1f} "
            f"| {m.temp_files} ({m.temp_bytes / 1e6:,.1f}) | {m.peak_rss_kb / 1024:,.0f} "
            f"| {'exactly the ' + fmt_int(candidates) + ' candidates' if m.checked else 'FAILED'} | {m.note} |"
        )
    busy = [m for m in results if m.wall and m.cpu_others > 0.1 * m.wall]
    if busy:
        lines.append("")
        lines.append(
            "WARNING: other processes used more than 10% of one CPU during "
            + ", ".join(f"{m.name} ({m.cpu_others:.1f} CPU s in {m.wall:.1f} s)" for m in busy)
            + ": those timings are not clean; rerun on a quiet machine."
        )
    by_name = {m.name: m for m in results}
    lines.append("")
    lines.append("| target | measured | result |")
    lines.append("|---|---|---|")

    def row(label: str, value: float | None, limit: float, unit: str) -> None:
        if value is None:
            lines.append(f"| {label} | not measured | - |")
        else:
            lines.append(f"| {label} | {value:.2f}{unit} | {'PASS' if value < limit or math.isclose(value, limit) else 'FAIL'} |")

    s1, s10 = by_name.get("sweep1000"), by_name.get("sweep10000")
    fw = floor.wall if floor else None
    row(f"sweep1000 wall <= {TARGET_WALL_1000}x floor", s1.wall / fw if s1 and fw else None, TARGET_WALL_1000, "x")
    row(f"sweep1000 per-batch p99 < {TARGET_P99_MS:.0f} ms", percentile(s1.batches, 0.99) * 1000 if s1 and s1.batches else None, TARGET_P99_MS, " ms")
    row(f"sweep1000 late/early p50 < {TARGET_LATE_EARLY}", late_early(s1.batches) if s1 else None, TARGET_LATE_EARLY, "")
    # Batch sizes follow the WAL budget, so a batch's time also says how many rows it took:
    # time per row is what shows whether the last batches are slower than the first.
    row(f"sweep1000 late/early p50 per row < {TARGET_LATE_EARLY}", late_early(per_row(s1)) if s1 else None, TARGET_LATE_EARLY, "")
    row(f"sweep10000 wall <= {TARGET_WALL_10000}x floor", s10.wall / fw if s10 and fw else None, TARGET_WALL_10000, "x")
    nb = by_name.get("notebook1000")
    if nb:  # the second check: 03_sweep.ipynb run headless, kernel start included
        row(f"notebook1000 wall <= {TARGET_WALL_1000}x floor", nb.wall / fw if fw else None, TARGET_WALL_1000, "x")
        if nb.peak_rss_kb:
            row(f"notebook1000 kernel peak RSS < {TARGET_RSS_MB} MB", nb.peak_rss_kb / 1024, TARGET_RSS_MB, " MB")
    ins = by_name.get("inspect")
    if ins and ins.checked:
        row(f"inspect < {TARGET_INSPECT_S:.0f} s", ins.wall, TARGET_INSPECT_S, " s")
    for name, base in (baseline or {}).items():
        got = by_name.get(name)
        if got and got.checked and got.changed and base.get("changed") and base.get("wall"):
            here, there = got.wall / got.changed, base["wall"] / base["changed"]
            row(f"{name} cost per row <= {TARGET_SCALE_PER_ROW}x the baseline's ({there * 1e6:.1f} us a row there, "
                f"{here * 1e6:.1f} here)", here / there, TARGET_SCALE_PER_ROW, "x")  # fmt: skip
    return "\n".join(lines)


def machine(admin: Conn) -> str:
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    settings = []
    for name in SHOWN_SETTINGS:
        settings.append(f"{name}={one(admin, sql.SQL('SELECT current_setting({})').format(sql.Literal(name)))}")
    jit = one(admin, "SELECT pg_jit_available()")
    revision = code_revision()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    return (
        f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; host: {platform.node()}; {os.cpu_count()} CPUs ({cpu}); "
        f"RAM {mem}; load average {load}; {platform.platform()}; Python {platform.python_version()}; psycopg {psycopg.__version__}\n"
        f"PostgreSQL settings: {', '.join(settings)}, jit_available={jit}\n"
        f"code: {revision}"
    )


def code_revision() -> str:
    """The commit of this checkout, and a digest of uncommitted changes to runbook/ and bench/."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    diff = git("diff", "HEAD", "--", "runbook")
    dirty = f"; runbook/ has uncommitted changes (diff sha256 {hashlib.sha256(diff.encode()).hexdigest()[:12]})" if diff else "; runbook/ as committed"
    return f"commit {head}{dirty}"


def sizes(conn: Conn) -> str:
    row = conn.execute(
        "SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(c.reltoastrelid), 0), pg_indexes_size(c.oid),"
        " (SELECT avg(pg_column_size(file_object))::int FROM \"LiteLLM_ManagedObjectTable\"),"
        " (SELECT avg(octet_length(file_object::text))::int FROM \"LiteLLM_ManagedObjectTable\")"
        " FROM pg_class c WHERE c.oid = '\"LiteLLM_ManagedObjectTable\"'::regclass"
    ).fetchone()
    assert row is not None
    heap, toast, idx, stored, text = (int(v) for v in row)
    return (
        f"table: heap {heap / 2**20:,.0f} MiB, TOAST {toast / 2**20:,.0f} MiB, indexes {idx / 2**20:,.0f} MiB; "
        f"file_object: {text:,} bytes as text, {stored:,} bytes stored (avg)"
    )


# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    plan: Plan
    expected: Histogram  # rows by (purpose, status, old) once exactly the candidates are swept
    candidates: int
    load_s: float
    sizes: str


def build(server: EmbeddedServer, rows: int, wanted: int, seed: int, index: bool = False) -> Built:
    """Start ``server`` with the loading settings, build LiteLLM's schema in BASE_DB, load,
    VACUUM ANALYZE and CHECKPOINT; with ``index``, then build the runbook's partial index
    (05_create_index's step, CONCURRENTLY) so that every variant's copy has it. Raises
    CheckFailed unless exactly ``wanted`` candidates."""
    server.start()
    restart(server, LOAD_SETTINGS)
    t0 = time.monotonic()
    base = reset_database(server.dsn(), BASE_DB)
    log(f"LiteLLM schema from litellm-proxy-extras {migrations_version()} in {time.monotonic() - t0:.1f} s")
    with connect(base) as conn:
        now = db_now_utc(conn)
    plan = Plan(rows, wanted, now, now - timedelta(days=STALE_DAYS))
    log(f"loading {rows:,} rows ({wanted:,} candidates) with COPY")
    load_s = load(base, plan, seed)
    log(f"loaded in {load_s:.1f} s; VACUUM ANALYZE")
    with connect(base) as conn:
        t0 = time.monotonic()
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(TABLE))
        conn.execute("CHECKPOINT")
        log(f"vacuumed in {time.monotonic() - t0:.1f} s")
        index_note = ""
        if index:
            made = runbook.create_index(conn, runbook.Target(), dry_run=False)
            if not made.valid:
                raise CheckFailed(f"the runbook's index: {made.note}")
            conn.execute("CHECKPOINT")
            index_note = f"; the runbook's partial index built in {made.seconds:.1f} s before the copies"
            log(f"index: {made.statement} in {made.seconds:.1f} s")
        before = histogram(conn, plan.cutoff)
        table_sizes = sizes(conn) + index_note
    candidates = sum(n for k, n in before.items() if is_candidate(k))
    if candidates != wanted:
        raise CheckFailed(f"loaded {candidates:,} candidates, wanted {wanted:,}")
    log(table_sizes)
    return Built(plan, expected_after(before), candidates, load_s, table_sizes)


VARIANTS = ("floor", "peer", "sweep1000", "sweep1000-w1", "sweep10000", "notebook1000", "inspect")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--candidates", type=int, default=300_000)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}, sweepN, notebookN, explain")
    p.add_argument("--peer-batch-size", type=int, default=1000, help="LIMIT of LiteLLM's statement (its default: 1000)")
    p.add_argument("--explain-batch-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fast", action="store_true", help="measure with fsync/synchronous_commit/full_page_writes off")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a PostgreSQL setting for the measurements")
    p.add_argument("--index", action="store_true", help="build the runbook's partial index (05_create_index) in the base first")
    p.add_argument("--keep", action="store_true", help="keep the server and its data (prints where)")
    p.add_argument("--json", type=Path, help="also write the measurements as JSON here")
    p.add_argument("--baseline", type=Path, help="another run's --json (e.g. the default 1M-row run): cost per row compared")
    args = p.parse_args(argv)
    if args.rows < 100 or not 1 <= args.candidates < args.rows:
        p.error("need --rows >= 100 and 1 <= --candidates < --rows")
    for v in args.variants.split(","):
        if v not in VARIANTS and v != "explain" and not re.fullmatch(r"(sweep[1-9][0-9]*(-t[1-9][0-9]*)?(-w[1-4])?(-fixed)?|notebook[1-9][0-9]*)", v):
            p.error(f"unknown variant {v!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    # kill / timeout: unwind through the finally below, which stops and removes the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    variants = [v for v in args.variants.split(",") if v]
    settings = dict(FAST_SETTINGS if args.fast else MEASURE_SETTINGS)
    for item in args.set:
        name, _, value = item.partition("=")
        settings[name] = value
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="litellm-runbook-bench-"))
    server = EmbeddedServer(home)
    failed = False
    results: list[Measurement] = []
    try:
        log(f"server in {home}")
        built = build(server, args.rows, args.candidates, args.seed, index=args.index)
        plan, expected, candidates, load_s, table_sizes = built.plan, built.expected, built.candidates, built.load_s, built.sizes
        restart(server, settings)
        with connect(server.dsn()) as admin:
            info = machine(admin)
            log(info)
            for name in variants:
                if name == "inspect":
                    results.append(measure_inspect(server, candidates))
                elif name == "explain":
                    explain_sweep(admin, server, args.explain_batch_size, candidates)
                else:
                    runner: Runner
                    if name == "floor":
                        runner, batch = run_floor, 0
                    elif name == "peer":
                        runner, batch = run_peer, args.peer_batch_size
                    elif name.startswith("notebook"):
                        runner, batch = run_notebook, int(name.removeprefix("notebook"))
                    else:
                        runner, batch = run_sweep, int(name.removeprefix("sweep").partition("-")[0])
                    try:
                        results.append(measure(admin, server, name, runner, batch, expected, candidates, plan.cutoff))
                    except Exception as exc:  # noqa: BLE001 - one variant's failure must not lose the others' (or a 30-min build)
                        failed = True
                        log(f"FAILED: {name}: {type(exc).__name__}: {exc}")
                        results.append(Measurement(name, note=f"{type(exc).__name__}: {exc}"[:200]))
                log(f"{name}: done")
        total = time.monotonic() - started
        command = "python bench/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
        print(f"\n{info}\nrows: {args.rows:,}, candidates: {candidates:,}, load (COPY): {load_s:.0f} s; {table_sizes}")
        print(f"command: {command}; total run time {total / 60:.1f} min\n")
        baseline = {m["name"]: m for m in json.loads(args.baseline.read_text())} if args.baseline else None
        print(render(results, candidates, baseline))
        if args.json:
            args.json.write_text(json.dumps([m.__dict__ for m in results], indent=1))
            shutil.copyfile(server.log, args.json.with_suffix(".server.log"))  # checkpoints, to match batch times
        if failed:
            print("\nFAILED: at least one variant did not change exactly the candidate rows (see above)", file=sys.stderr)
            return 1
        return 0
    except CheckFailed as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            log(f"kept: server in {home}, DSN {server.dsn(BASE_DB) if server.initialised() else '-'}")
        else:
            server.destroy()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
