#!/usr/bin/env python3
"""Benchmark: the runbook's ``spend_logs`` sweep (delete, archived) against one unbounded
DELETE and LiteLLM's own retention loop, on a LiteLLM_SpendLogs table built by LiteLLM's
migrations.

One command, nothing to set up beyond ``make venv``::

    .venv/bin/python bench/spendlogs.py                                # 3M rows, 1M older than the cutoff
    .venv/bin/python bench/spendlogs.py --rows 30000 --old 10000       # smoke run, < 1 minute

What it does, in order:

1. starts its own PostgreSQL 16 (``runbook.db.embedded``) in a fresh folder under /var/tmp
   with the loading settings of ``bench/bench.py`` (fsync off);
2. builds LiteLLM's schema from its migrations (``runbook.tools.demo.reset_database``):
   ``"LiteLLM_SpendLogs"`` with its primary key on request_id and its indexes on
   "startTime", ("startTime", request_id), end_user and session_id;
3. loads ``--rows`` spend logs with ``COPY ... (FREEZE)`` from a generator, in "startTime"
   order as LiteLLM inserts them, then builds the two request-log indexes LiteLLM builds
   after ``migrate deploy`` (``litellm_proxy_extras.request_log_indexes.REQUEST_LOG_INDEXES``:
   (api_key, "startTime") and litellm_call_id; here with a plain CREATE INDEX);
   "startTime" covers 90 days: the first ``--old`` rows lie between 90 and 30 days ago,
   the rest within the last 30 days, and no row is within an hour of the cutoff
   (30 days before the load), so every variant deletes exactly the same rows;
   80 % of the rows carry messages, response and proxy_server_request of 0.25-1.7 KB each
   (the request body holds the messages again), 20 % have '{}' there (payload logging off);
4. VACUUM ANALYZE, CHECKPOINT, restarts the server with ``bench.bench.MEASURE_SETTINGS``
   (fsync, synchronous_commit, full_page_writes on; autovacuum off);
5. for each variant: ``CREATE DATABASE ... TEMPLATE`` (an identical copy), CHECKPOINT, run,
   measure (wall, per-batch times, WAL, CPU of other processes), check that exactly the
   rows older than its cutoff are gone (exit status 1 otherwise), drop the copy;
6. prints the results, the targets (PASS/FAIL, never asserted) and destroys the server
   (unless ``--keep``), also after an error or Ctrl-C.

Variants:

``floor``            ``DELETE FROM "LiteLLM_SpendLogs" WHERE "startTime" < %s``, one statement (UTC session)
``floor-archive``    the unbounded equivalent of the sweep with its archive, one transaction: one COPY
                     of every old row as the sweep's archive line into one gzip file, fsync, one DELETE
``read``             the least any archive of these rows costs: one ``COPY (SELECT * ...) TO STDOUT
                     (FORMAT binary)`` of every old row, the bytes discarded by the client (no JSON,
                     no compression, no file, nothing deleted); its wall against ``floor``'s shows
                     whether an archived delete can come near the bare DELETE at all
``litellm``          LiteLLM's loop (proxy/db/db_transaction_queue/spend_log_cleanup.py): its statement,
                     LIMIT 1000, each in its own transaction, 0.1 s sleep after each, until it deletes
                     nothing; at most ``--litellm-batches`` (default 500, its SPEND_LOG_RUN_LOOPS) and the
                     rest extrapolated from its last batches (said so in the table); 0: run to the end
``sweep``            ``runbook.sweep(target_named("spend_logs"), dry_run=False)`` with its archive, in a
                     child process (peak RSS read with wait4); default workers (2)
``sweep-w1``         the same with workers=1
``sweep-noarchive``  the same with archive=False
``sweep-small``      the same as ``sweep`` with a cutoff that leaves a tenth of the backlog
                     (``--small-old``): its peak RSS against ``sweep``'s shows whether memory grows
                     with the backlog
``sweep-tN``         (not in the default list) ``sweep`` with target_batch_ms=N
``anatomy``          (not in the default list) where a 1,000-row batch's time goes: on a copy, the
                     sweep's two statements (``runbook.sql.removal.archive_rows``, then the DELETE by
                     ctid) with the archive's compression between them, the same with work_mem 64MB, one
                     ``DELETE ... RETURNING`` the archive line, and a plain DELETE of the batch's keys;
                     batches interleaved and rolled back, medians printed after the results; then
                     what reading 1,000 old rows costs: by key, detoasted, as row_to_json, fetched

The sweep's process also times, inside each batch, what happens outside PostgreSQL: the
archive file's compression, and its write and fsyncs (``runbook.audit.archive.write_batch``
and its compression wrapped), and records the code revision it imported.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
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
import types
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The script's folder (bench/, first on sys.path) holds bench.py, which would shadow the
# bench/ folder as a package: put the checkout there instead so that bench.bench imports.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from bench.bench import (  # noqa: E402
    LOAD_SETTINGS,
    MEASURE_SETTINGS,
    CpuMeter,
    checkpoint_count,
    code_revision,
    connect,
    log,
    machine,
    one,
    percentile,
    restart,
    wal_diff,
    wal_lsn,
)
from runbook.db.embedded import EmbeddedServer  # noqa: E402
from runbook.tools.demo import reset_database  # noqa: E402
from runbook.tools.migrations import migrations_version  # noqa: E402

Conn = psycopg.Connection[tuple[Any, ...]]

TABLE_NAME = "LiteLLM_SpendLogs"
TABLE = sql.Identifier("public", TABLE_NAME)
BASE_DB = "spendlogs_base"
SPAN = timedelta(days=90)
CUTOFF_AGE = timedelta(days=30)
GAP = timedelta(hours=1)  # no row this close to the cutoff, on either side
EPOCH = datetime(1970, 1, 1)

# LiteLLM's retention loop (spend_log_cleanup.py): its statement, batch size, pause, and
# SPEND_LOG_RUN_LOOPS (batches per run).
LITELLM_SQL = sql.SQL(
    'DELETE FROM "LiteLLM_SpendLogs" WHERE ("request_id","startTime") IN '
    '(SELECT "request_id","startTime" FROM "LiteLLM_SpendLogs" WHERE "startTime" < %s::timestamptz LIMIT 1000)'
)
LITELLM_PAUSE_S = 0.1
LITELLM_RUN_LOOPS = 500
FLOOR_SQL = sql.SQL('DELETE FROM "LiteLLM_SpendLogs" WHERE "startTime" < %s')

# Targets (reported, never asserted).
TARGET_VS_FLOOR = 1.3
TARGET_P99_MS = 150.0
RSS_FLAT_SHARE = 0.10  # peak RSS with the full backlog at most 10 % (and 10 MB) above a tenth's
RSS_FLAT_MB = 10.0

VARIANTS = ("floor", "floor-archive", "litellm", "sweep", "sweep-w1", "sweep-noarchive", "sweep-small")
EXTRA = ("anatomy", "read")  # not in the default list; and any sweep-tN


# --------------------------------------------------------------------------------------
# The data


@dataclass(frozen=True)
class Plan:
    """Where each row's "startTime" falls; computed before loading, from the server's clock."""

    rows: int
    old: int
    now: datetime  # naive UTC, the server's clock at load time, whole seconds

    @property
    def cutoff(self) -> datetime:
        return self.now - CUTOFF_AGE

    @property
    def start(self) -> datetime:
        return self.now - SPAN

    def _old_step_ms(self) -> float:
        return (self.cutoff - GAP - self.start) / timedelta(milliseconds=1) / self.old

    def _new_step_ms(self) -> float:
        return (self.now - timedelta(minutes=10) - self.cutoff - GAP) / timedelta(milliseconds=1) / (self.rows - self.old)

    def started_ms(self, i: int, frac: float) -> int:
        """Row ``i``'s "startTime" in ms since the epoch; ``frac`` in [0.05, 0.95) places it in its slot."""
        if i < self.old:
            base = (self.start - EPOCH) / timedelta(milliseconds=1)
            return int(base + (i + frac) * self._old_step_ms())
        base = (self.cutoff + GAP - EPOCH) / timedelta(milliseconds=1)
        return int(base + (i - self.old + frac) * self._new_step_ms())

    def cutoff_before(self, k: int) -> datetime:
        """A cutoff with exactly the first ``k`` rows (k <= old) older than it: between slots."""
        if k >= self.old:
            return self.cutoff
        ms = (self.start - EPOCH) / timedelta(milliseconds=1) + k * self._old_step_ms()
        return EPOCH + timedelta(milliseconds=int(ms))

    def check(self) -> None:
        # A slot's 5 % margins must exceed the 1 ms the timestamps are rounded to.
        if min(self._old_step_ms(), self._new_step_ms()) * 0.05 < 2:
            raise SystemExit("too many rows for 90 days at millisecond resolution: lower --rows")


def _vocabulary(rng: random.Random, size: int = 6000) -> tuple[list[str], list[float]]:
    """Made-up words with Zipf weights: text that gzip compresses about as much as English
    (level 1: ~3x), unlike a short word list, which it shrinks much more."""
    cons = "b c d f g h j k l m n p r s t v w y z br cr dr fr gr pr tr st sl sp ch sh th".split()
    vow = "a e i o u ai ea ou io ee oo".split()
    words: set[str] = set()
    while len(words) < size:
        n = rng.choice((1, 1, 1, 2, 2, 2, 3))
        words.add("".join(rng.choice(cons) + rng.choice(vow) for _ in range(n)) + rng.choice(("", "", "n", "s", "t", "r", "ng")))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered, list(itertools.accumulate(1 / (k + 3) for k in range(size)))


def _text(rng: random.Random, vocab: tuple[list[str], list[float]], length: int) -> str:
    """About ``length`` characters of sentences: ASCII, no quote, backslash, tab or newline
    (so neither JSON nor COPY's text format escapes anything)."""
    words, cum = vocab
    out: list[str] = []
    size = 0
    while size < length:
        sentence = " ".join(rng.choices(words, cum_weights=cum, k=rng.randrange(5, 16))).capitalize() + rng.choice(".,.?:.!")
        out.append(sentence)
        size += len(sentence) + 1
    return " ".join(out)[: max(1, length)]


def _loguniform(rng: random.Random, low: float, high: float) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


MODELS = (
    # (model, model_group, provider, api_base, input $/token, output $/token)
    ("gpt-4o-2024-08-06", "gpt-4o", "openai", "https://api.openai.com/v1/", 2.5e-6, 1e-5),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "openai", "https://api.openai.com/v1/", 1.5e-7, 6e-7),
    ("claude-sonnet-4-20250514", "claude-sonnet-4", "anthropic", "https://api.anthropic.com/v1/messages", 3e-6, 1.5e-5),
    ("gemini-2.5-flash", "gemini-flash", "vertex_ai", "https://us-central1-aiplatform.googleapis.com/v1/", 3e-7, 2.5e-6),
    ("azure/gpt-4.1", "gpt-4.1", "azure", "https://example-eu.openai.azure.com/", 2e-6, 8e-6),
)


@dataclass(frozen=True)
class Payload:
    """One request's bodies (pooled: each row takes one and puts its own ids in)."""

    messages: str
    response_tail: str  # the response document after its "id"
    request: str  # proxy_server_request: the request body, messages included
    prompt_tokens: int
    completion_tokens: int


def _payload_pool(rng: random.Random, size: int) -> list[Payload]:
    vocab = _vocabulary(rng)
    pool = []
    for n in range(size):
        model, group, _provider, _base, _pi, _po = MODELS[n % len(MODELS)]
        m_len = _loguniform(rng, 250, 1500)
        system = _text(rng, vocab, rng.randrange(60, max(61, m_len // 3)))
        messages = [{"role": "system", "content": system}]
        rest = m_len - len(system) - 80
        turns = 1 if rest < 600 else rng.choice((1, 1, 3))
        for t in range(turns):
            messages.append({"role": "user" if t % 2 == 0 else "assistant", "content": _text(rng, vocab, max(20, rest // turns - 40))})
        messages_json = json.dumps(messages)
        answer = _text(rng, vocab, max(40, _loguniform(rng, 250, 1500) - 420))
        prompt_tokens, completion_tokens = len(messages_json) // 4, len(answer) // 4
        usage = {
            "completion_tokens": completion_tokens, "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens_details": {"accepted_prediction_tokens": 0, "audio_tokens": 0, "reasoning_tokens": 0, "rejected_prediction_tokens": 0},
            "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
        }  # fmt: skip
        response = json.dumps({
            "created": 1700000000 + n, "model": model, "object": "chat.completion",
            "system_fingerprint": "fp_" + "%010x" % rng.getrandbits(40),
            "choices": [{"finish_reason": "stop", "index": 0, "message": {
                "content": answer, "role": "assistant", "tool_calls": None, "function_call": None, "annotations": []}}],
            "usage": usage, "service_tier": "default",
        })  # fmt: skip
        request = json.dumps({
            "model": group, "messages": messages, "temperature": rng.choice((0, 0.2, 0.7, 1.0)),
            "stream": rng.random() < 0.4, "max_tokens": rng.choice((None, 1024, 4096)), "user": "default_user_id",
            "metadata": {"tags": [], "requester_metadata": {}},
        })  # fmt: skip
        for text in (messages_json, response, request):
            assert "\\" not in text and "\t" not in text and "\n" not in text, "payload needs COPY escaping"
        pool.append(Payload(messages_json, ", " + response[1:], request, prompt_tokens, completion_tokens))
    return pool


COPY_COLUMNS = (
    "request_id", "call_type", "api_key", "spend", "total_tokens", "prompt_tokens", "completion_tokens", "startTime",
    "endTime", "completionStartTime", "model", "model_id", "model_group", "custom_llm_provider", "api_base", "user",
    "metadata", "cache_hit", "cache_key", "request_tags", "team_id", "end_user", "requester_ip_address", "messages",
    "response", "proxy_server_request", "session_id", "status", "organization_id", "request_duration_ms", "created_at",
    "updated_at", "litellm_call_id",
)  # fmt: skip


def _ts(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(sep=" ", timespec="milliseconds")


def generate(plan: Plan, seed: int, chunk_bytes: int = 4 << 20) -> Iterator[bytes]:
    """COPY text-format chunks of every row, in "startTime" order."""
    rng = random.Random(seed)
    pool = _payload_pool(rng, 3000)
    teams = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(20)]
    orgs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(4)]
    keys = [hashlib.sha256(f"sk-bench-{n}".encode()).hexdigest() for n in range(300)]
    users = ["default_user_id"] + [f"user-{n:04d}@example.com" for n in range(80)]
    model_ids = [hashlib.sha256(m[0].encode()).hexdigest() for m in MODELS]
    ips = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(50)]
    sessions: list[str] = []
    buf: list[str] = []
    size = 0
    for i in range(plan.rows):
        started = plan.started_ms(i, 0.05 + 0.9 * rng.random())
        duration = _loguniform(rng, 200, 60_000)
        ended = started + duration
        k = rng.randrange(len(keys))
        n = rng.randrange(len(pool))
        p, m = pool[n], n % len(MODELS)  # the pooled payload was written for this model
        model, group, provider, api_base, price_in, price_out = MODELS[m]
        request_id = "chatcmpl-" + str(uuid.UUID(int=rng.getrandbits(128), version=4))
        call_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if sessions and rng.random() < 0.3:
            session = sessions[rng.randrange(len(sessions))]
        else:
            session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            sessions.append(session)
            if len(sessions) > 200:
                sessions.pop(0)
        team = teams[k % len(teams)]
        org = orgs[k % len(orgs)] if k % 3 else "\\N"
        user = users[k % len(users)]
        end_user = f"customer-{rng.randrange(5000)}" if rng.random() < 0.25 else ""
        failed = rng.random() < 0.03
        empty = rng.random() < 0.2
        prompt, completion = p.prompt_tokens, 0 if failed else p.completion_tokens
        spend = 0.0 if failed else prompt * price_in + completion * price_out
        if empty:
            messages = response = request = "{}"
        else:
            messages, request = p.messages, p.request
            response = "{}" if failed else '{"id": "' + request_id + '"' + p.response_tail
        stream = rng.random() < 0.4
        ttft = started + duration // 4 if stream and not failed else None
        usage = '{"prompt_tokens": %d, "completion_tokens": %d, "total_tokens": %d}' % (prompt, completion, prompt + completion)
        error = (
            '{"error_class": "RateLimitError", "error_code": "429", "error_message": "litellm.RateLimitError: '
            + provider + 'Exception - Rate limit reached for requests", "llm_provider": "' + provider + '"}'
            if failed else "null"
        )  # fmt: skip
        metadata = (
            '{"user_api_key": "' + keys[k] + '", "user_api_key_alias": "key-' + str(k) + '", "user_api_key_team_id": "'
            + team + '", "user_api_key_org_id": ' + ('"' + org + '"' if org != "\\N" else "null")
            + ', "user_api_key_user_id": "' + user + '", "user_api_key_team_alias": "team-' + str(k % len(teams))
            + '", "user_api_key_end_user_id": ' + ('"' + end_user + '"' if end_user else "null")
            + ', "requester_ip_address": "' + ips[k % len(ips)] + '", "spend_logs_metadata": null, "applied_guardrails": [], '
            '"batch_models": null, "mcp_tool_call_metadata": null, "vector_store_request_metadata": null, '
            '"guardrail_information": null, "status": "' + ("failure" if failed else "success") + '", "attempted_retries": 0, '
            '"max_retries": 2, "litellm_overhead_time_ms": ' + str(rng.randrange(2, 40)) + ', "additional_usage_values": {}, '
            '"cold_storage_object_key": null, "usage_object": ' + usage + ', "model_map_information": {"model_map_key": "'
            + model + '", "model_map_value": null}, "hidden_params": {"model_id": "' + model_ids[m] + '", "api_base": "'
            + api_base + '", "response_cost": ' + repr(spend) + ', "litellm_call_id": "' + call_id + '"}, "error_information": '
            + error + "}"
        )  # fmt: skip
        line = "\t".join((
            request_id, "acompletion", keys[k], repr(spend), str(prompt + completion), str(prompt), str(completion),
            _ts(started), _ts(ended), _ts(ttft) if ttft is not None else "\\N", model, model_ids[m], group, provider,
            api_base, user, metadata, "False", "Cache OFF", "[]", team, end_user, ips[k % len(ips)],
            messages, response, request, session, "failure" if failed else "success", org, str(duration),
            _ts(ended), _ts(ended), call_id,
        ))  # fmt: skip
        buf.append(line)
        size += len(line) + 1
        if size >= chunk_bytes:
            yield ("\n".join(buf) + "\n").encode()
            buf, size = [], 0
    if buf:
        yield ("\n".join(buf) + "\n").encode()


def load(dsn: str, plan: Plan, seed: int) -> tuple[float, int]:
    """TRUNCATE and COPY (FREEZE) every row in one transaction; return (seconds, bytes sent).

    FREEZE: the rows arrive frozen and all-visible, as rows months old are in production
    (and nothing rewrites 10 GB of pages for hint bits afterwards)."""
    t0 = time.monotonic()
    columns = sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS))
    sent = 0
    with connect(dsn) as conn:
        with conn.transaction():
            conn.execute(sql.SQL("TRUNCATE {}").format(TABLE))
            with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FREEZE)").format(TABLE, columns)) as copy:
                done = reported = 0
                for chunk in generate(plan, seed):
                    copy.write(chunk)
                    sent += len(chunk)
                    done += chunk.count(b"\n")
                    if done - reported >= 250_000:
                        elapsed = time.monotonic() - t0
                        log(f"  {done:,} rows sent ({sent / 2**20:,.0f} MiB, {done / elapsed:,.0f} rows/s)")
                        reported = done
    return time.monotonic() - t0, sent


def request_log_indexes(conn: Conn) -> list[str]:
    """Build the indexes LiteLLM builds after migrate deploy (its REQUEST_LOG_INDEXES list),
    with a plain CREATE INDEX (the bench owns the table); return their names."""
    from litellm_proxy_extras.request_log_indexes import REQUEST_LOG_INDEXES

    built = []
    for index in REQUEST_LOG_INDEXES:
        if index.table != TABLE_NAME:
            continue
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} {}").format(
                sql.Identifier(index.name), TABLE, sql.SQL(index.definition)
            )
        )
        built.append(index.name)
    return built


def describe_table(conn: Conn, rows: int) -> dict[str, Any]:
    """Sizes, indexes and payload statistics of the loaded table (from a sample of ~60K rows)."""
    sample_pct = min(100.0, max(1.0, 100 * 60_000 / rows))
    heap, toast, idx = conn.execute(
        "SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0), pg_indexes_size(c.oid)"
        " FROM pg_class c WHERE c.oid = %s::regclass",
        [f'"{TABLE_NAME}"'],
    ).fetchone() or (0, 0, 0)
    sample = conn.execute(
        sql.SQL(
            "SELECT avg(pg_column_size(t.*))::int, avg(octet_length(t::text))::int, "
            "avg(octet_length(messages::text) + octet_length(response::text) + octet_length(proxy_server_request::text))::int, "
            "avg(octet_length(messages::text) + octet_length(response::text) + octet_length(proxy_server_request::text)) "
            "FILTER (WHERE messages <> '{{}}')::int, "
            "(count(*) FILTER (WHERE messages = '{{}}' AND response = '{{}}' AND proxy_server_request = '{{}}'))::float / count(*), "
            "avg(octet_length(to_jsonb(t)::text))::int "
            "FROM {} AS t TABLESAMPLE SYSTEM ({}) REPEATABLE (7)"
        ).format(TABLE, sql.Literal(sample_pct))
    ).fetchone()
    indexes = [
        r[0]
        for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s ORDER BY indexname", [TABLE_NAME]
        ).fetchall()
    ]
    stored, text, payload, payload_nonempty, empty_share, archive_line = (v or 0 for v in sample or (0,) * 6)
    return {
        "heap_bytes": int(heap), "toast_bytes": int(toast), "index_bytes": int(idx), "row_stored_bytes": stored,
        "row_text_bytes": text, "payload_text_bytes": payload, "payload_text_bytes_nonempty": payload_nonempty,
        "empty_payload_share": round(float(empty_share or 0), 3), "archive_line_bytes": archive_line, "indexes": indexes,
    }  # fmt: skip


@dataclass(frozen=True)
class Built:
    plan: Plan
    load_s: float
    copy_s: float
    index_s: float
    vacuum_s: float
    sent_bytes: int
    table: dict[str, Any]


BUILT_FILE = "spendlogs-built.json"  # in a kept server's folder: what --home reuses


def save_built(home: Path, built: Built, seed: int) -> None:
    data = asdict(built)
    data["plan"]["now"] = built.plan.now.isoformat()
    data["seed"] = seed
    (home / BUILT_FILE).write_text(json.dumps(data, indent=1))


def load_built(home: Path) -> tuple[Built, int]:
    """The base database a run with --keep left in ``home``: its plan and build numbers."""
    try:
        data = json.loads((home / BUILT_FILE).read_text())
    except OSError as exc:
        raise SystemExit(f"--home {home}: no {BUILT_FILE} there ({exc.strerror}): not a server kept by this bench") from None
    plan = data.pop("plan")
    seed = data.pop("seed")
    return Built(plan=Plan(plan["rows"], plan["old"], datetime.fromisoformat(plan["now"])), **data), seed


def build(server: EmbeddedServer, rows: int, old: int, seed: int) -> Built:
    server.start()
    restart(server, LOAD_SETTINGS)
    t_build = time.monotonic()
    base = reset_database(server.dsn(), BASE_DB)
    log(f"LiteLLM schema from litellm-proxy-extras {migrations_version()} in {time.monotonic() - t_build:.1f} s")
    with connect(base) as conn:
        now = one(conn, "SELECT date_trunc('second', statement_timestamp() AT TIME ZONE 'UTC')")
    plan = Plan(rows, old, now)
    plan.check()
    log(f"loading {rows:,} rows ({old:,} older than the cutoff {plan.cutoff:%Y-%m-%d %H:%M:%S} UTC) with COPY")
    copy_s, sent = load(base, plan, seed)
    log(f"COPY done in {copy_s:.1f} s ({sent / 2**20:,.0f} MiB of COPY text); the request-log indexes")
    with connect(base) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        t0 = time.monotonic()
        built = request_log_indexes(conn)
        index_s = time.monotonic() - t0
        log(f"{', '.join(built)} in {index_s:.1f} s; VACUUM ANALYZE")
        t0 = time.monotonic()
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(TABLE))
        conn.execute("CHECKPOINT")
        vacuum_s = time.monotonic() - t0
        table = describe_table(conn, rows)
        counts = conn.execute(
            sql.SQL('SELECT count(*) FILTER (WHERE "startTime" < %s), count(*) FROM {}').format(TABLE), [plan.cutoff]
        ).fetchone()
    if counts != (old, rows):
        raise CheckFailed(f"loaded (older than the cutoff, all) = {counts}, wanted ({old}, {rows})")
    load_s = time.monotonic() - t_build
    log(f"built in {load_s:.1f} s: {sizes_line(table)}")
    return Built(plan, load_s, copy_s, index_s, vacuum_s, sent, table)


def sizes_line(t: dict[str, Any]) -> str:
    mib = 2**20
    return (
        f"heap {t['heap_bytes'] / mib:,.0f} MiB, TOAST {t['toast_bytes'] / mib:,.0f} MiB, indexes {t['index_bytes'] / mib:,.0f} MiB "
        f"({len(t['indexes'])}); a row: {t['row_text_bytes']:,} bytes as text, {t['row_stored_bytes']:,} stored (avg of a sample), "
        f"messages + response + proxy_server_request {t['payload_text_bytes']:,} bytes as text "
        f"({t['payload_text_bytes_nonempty']:,} where not '{{}}'; '{{}}' in {t['empty_payload_share']:.0%} of rows), "
        f"archive line {t['archive_line_bytes']:,} bytes"
    )


# --------------------------------------------------------------------------------------
# Measuring


class CheckFailed(Exception):
    pass


@dataclass
class Measurement:
    name: str
    backlog: int = 0  # rows older than this variant's cutoff
    wall: float = 0.0
    changed: int = 0
    batches: list[float] = field(default_factory=list)  # seconds per batch that deleted rows
    batch_rows: list[int] = field(default_factory=list)
    wal_bytes: int = 0
    checkpoints: int = 0
    cpu_ours: float = 0.0
    cpu_others: float = 0.0
    archive_bytes: int = 0
    archive_files: int = 0
    peak_rss_kb: int = 0  # the sweep's child process: ru_maxrss from wait4
    rss: dict[str, Any] = field(default_factory=dict)  # the child's own readings
    extrapolated_wall: float | None = None  # litellm capped: the wall to delete the whole backlog
    note: str = ""
    checked: bool = False
    outside_batches: float = 0.0
    profile: dict[str, float] = field(default_factory=dict)  # sweep: where batch time went


def cutoff_aware(cutoff: datetime) -> datetime:
    return cutoff.replace(tzinfo=timezone.utc)


def run_floor(conn: Conn, m: Measurement, cutoff: datetime, args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    m.changed = conn.execute(FLOOR_SQL, [cutoff_aware(cutoff)]).rowcount
    m.batches.append(time.monotonic() - t0)
    m.batch_rows.append(m.changed)
    m.wall = time.monotonic() - t0


def run_floor_archive(conn: Conn, m: Measurement, cutoff: datetime, args: argparse.Namespace) -> None:
    """The unbounded equivalent of the sweep with its archive, in one transaction: every old
    row as the sweep's archive line (``runbook.sql.removal._line``) streamed out with one
    COPY into one gzip file (ISA-L level 2 as the archive, or zlib level 1), fsynced, then
    one DELETE, then COMMIT. What the archive costs with no batching at all. (COPY's text
    format would double a backslash in a line; this data has none, so the bytes are the
    archive's.)"""
    from runbook.db.transactions import table_columns
    from runbook.rules.targets import target_named
    from runbook.sql import removal

    target = target_named("spend_logs")
    json_columns = tuple(n for n, type_, _ in table_columns(conn, target) if type_ in ("json", "jsonb"))
    path = args._work / "floor-archive.jsonl.gz"
    try:
        from isal import igzip

        opened: Any = igzip.open(path, "wb", compresslevel=2)  # type: ignore[no-untyped-call]
    except ImportError:
        opened = gzip.open(path, "wb", compresslevel=1)
    export = sql.SQL('COPY (SELECT {} FROM {} AS c WHERE "startTime" < %s) TO STDOUT').format(removal._line(json_columns), TABLE)
    t0 = time.monotonic()
    with conn.transaction():
        conn.execute("SET LOCAL extra_float_digits = 3")
        with opened as out, conn.cursor() as cur, cur.copy(export, [cutoff_aware(cutoff)]) as copy:
            for data in copy:
                out.write(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        t1 = time.monotonic()
        m.changed = conn.execute(FLOOR_SQL, [cutoff_aware(cutoff)]).rowcount
    m.wall = time.monotonic() - t0
    m.batches.append(m.wall)
    m.batch_rows.append(m.changed)
    m.archive_files, m.archive_bytes = 1, path.stat().st_size
    m.note = f"COPY out + compression + fsync {t1 - t0:.1f} s, then the DELETE and COMMIT {m.wall - (t1 - t0):.1f} s"
    path.unlink()


def run_read(conn: Conn, m: Measurement, cutoff: datetime, args: argparse.Namespace) -> None:
    """Every old row read once in the cheapest form PostgreSQL offers (binary COPY, which
    detoasts each payload but converts nothing to text), bytes counted and dropped."""
    export = sql.SQL('COPY (SELECT * FROM {} WHERE "startTime" < %s) TO STDOUT (FORMAT binary)').format(TABLE)
    read = 0
    t0 = time.monotonic()
    with conn.transaction(), conn.cursor() as cur, cur.copy(export, [cutoff_aware(cutoff)]) as copy:
        for data in copy:
            read += len(data)
    m.wall = time.monotonic() - t0
    m.batches.append(m.wall)
    m.batch_rows.append(0)
    m.note = f"read {read / 1e6:,.0f} MB (binary COPY) in {m.wall:.1f} s; nothing deleted"


def run_litellm(conn: Conn, m: Measurement, cutoff: datetime, args: argparse.Namespace) -> None:
    """LiteLLM's loop: the statement in autocommit (its own transaction), then 0.1 s."""
    cap = args.litellm_batches or 10**9
    ends: list[float] = []
    t0 = time.monotonic()
    while len(m.batches) < cap:
        t1 = time.monotonic()
        n = conn.execute(LITELLM_SQL, [cutoff_aware(cutoff)]).rowcount
        if n == 0:
            break
        m.batches.append(time.monotonic() - t1)
        m.batch_rows.append(n)
        m.changed += n
        time.sleep(LITELLM_PAUSE_S)
        ends.append(time.monotonic())
        if len(m.batches) % 100 == 0:
            log(f"  litellm: {len(m.batches)} batches, {m.changed:,} rows, last {m.batches[-1] * 1000:.0f} ms")
    m.wall = time.monotonic() - t0
    left = m.backlog - m.changed
    if left > 0:
        # The rest at the pace of its last 10 % of batches (statement + pause + round trip):
        # its batches get slower as dead rows pile up at the front of the table, so this
        # is, if anything, low.
        k = max(2, len(ends) // 10)
        cycle = (ends[-1] - ends[-k]) / (k - 1)
        per_batch_rows = sum(m.batch_rows[-k:]) / k
        m.extrapolated_wall = m.wall + left / per_batch_rows * cycle
        m.note = (
            f"capped at {len(m.batches)} batches (--litellm-batches; LiteLLM's SPEND_LOG_RUN_LOOPS is {LITELLM_RUN_LOOPS}): "
            f"{m.changed:,} of {m.backlog:,} rows in {m.wall:.1f} s; the other {left:,} extrapolated at its last "
            f"{k} batches' pace ({cycle * 1000:.0f} ms a batch incl. the {LITELLM_PAUSE_S:.1f} s pause)"
        )


def _child_spec(server: EmbeddedServer, db: str, cutoff: datetime, variant: str, home: Path) -> dict[str, Any]:
    archive = variant != "sweep-noarchive"
    return {
        "dsn": server.dsn(db),
        "cutoff": cutoff.isoformat(timespec="milliseconds") + "Z",
        "workers": 1 if variant == "sweep-w1" else 0,
        "target_batch_ms": int(variant[len("sweep-t"):]) if re.fullmatch(r"sweep-t[1-9][0-9]*", variant) else 0,
        "archive": archive,
        "archive_dir": str(home / f"archive-{variant}") if archive else "",
        "run_id": f"bench-spendlogs-{variant}"[:36],
        "out": str(home / f"child-{variant}.json"),
    }


def run_sweep(conn: Conn, m: Measurement, cutoff: datetime, args: argparse.Namespace) -> None:
    """The sweep in a child process (a fresh interpreter): its wall around connect + sweep,
    its peak RSS from wait4."""
    spec = args._spec
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=ROOT)
    args._child = proc
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    args._child = None
    if proc.returncode != 0:
        raise CheckFailed(f"{m.name}: the sweep's process exited with {proc.returncode}")
    out = json.loads(Path(spec["out"]).read_text())
    result = out["result"]
    if result["stop_reason"] != "done":
        raise CheckFailed(f"{m.name}: the sweep stopped with {result['stop_reason']!r} ({result['stop_detail']}), not 'done'")
    batches = result["batches"]
    m.wall = out["wall"]
    m.changed = int(result["changed"])
    m.batches = [b["seconds"] for b in batches if b["changed"]]
    m.batch_rows = [b["changed"] for b in batches if b["changed"]]
    m.outside_batches = max(0.0, out["sweep_s"] - sum(b["seconds"] for b in batches))
    m.peak_rss_kb = usage.ru_maxrss
    m.rss = out["rss"]
    m.profile = out["profile"]
    m.note = f"{result['candidates_at_start']:,} in snapshot; process {out['process_s']:.1f} s (imports {out['import_s']:.1f} s); {out.get('code', '')}"
    if spec["archive_dir"]:
        files = [p for p in Path(spec["archive_dir"]).rglob("*") if p.is_file()]
        m.archive_files = len(files)
        m.archive_bytes = sum(p.stat().st_size for p in files)
        shutil.rmtree(spec["archive_dir"], ignore_errors=True)


Runner = Callable[[Conn, Measurement, datetime, argparse.Namespace], None]


def measure(admin: Conn, server: EmbeddedServer, home: Path, name: str, built: Built, args: argparse.Namespace) -> Measurement:
    """Run one variant on a fresh copy of the base database and check what it deleted."""
    plan = built.plan
    backlog = args.small_old if name == "sweep-small" else plan.old
    cutoff = plan.cutoff_before(backlog)
    runners: dict[str, Runner] = {"floor": run_floor, "floor-archive": run_floor_archive, "litellm": run_litellm,
                                 "read": run_read}
    runner = runners.get(name, run_sweep)
    args._work = home
    copy = "bench_" + name.replace("-", "_")
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))
    t0 = time.monotonic()
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(copy), sql.Identifier(BASE_DB)))
    log(f"{name}: copy of the base made in {time.monotonic() - t0:.1f} s")
    m = Measurement(name, backlog=backlog)
    if runner is run_sweep:
        args._spec = _child_spec(server, copy, cutoff, name, home)
    try:
        with connect(server.dsn(copy)) as conn:
            admin.execute("CHECKPOINT")
            lsn = wal_lsn(conn)
            checkpoints = checkpoint_count(conn)
            log(f"{name}: running (backlog {backlog:,} rows, cutoff {cutoff.isoformat(timespec='milliseconds')}Z)")
            meter = CpuMeter(server)
            meter.start()
            runner(conn, m, cutoff, args)
            m.cpu_ours, m.cpu_others = meter.stop()
            m.wal_bytes = wal_diff(conn, lsn)
            m.checkpoints = checkpoint_count(conn) - checkpoints
            log(f"{name}: {m.changed:,} rows in {m.wall:.1f} s; checking")
            older, total = conn.execute(
                sql.SQL('SELECT count(*) FILTER (WHERE "startTime" < %s), count(*) FROM {}').format(TABLE), [cutoff]
            ).fetchone() or (-1, -1)
        want_older = backlog - m.changed if m.extrapolated_wall is not None or runner is run_read else 0
        if m.extrapolated_wall is None and runner is not run_read and m.changed != backlog:
            raise CheckFailed(f"{name} reported {m.changed:,} rows deleted; {backlog:,} are older than its cutoff")
        if older != want_older or total != plan.rows - m.changed:
            raise CheckFailed(
                f"{name}: {older:,} rows older than the cutoff remain (want {want_older:,}), {total:,} rows in all "
                f"(want {plan.rows - m.changed:,}): it deleted other rows than the old ones"
            )
        m.checked = True
        return m
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))


def anatomy(admin: Conn, server: EmbeddedServer, built: Built, batches: int = 12) -> str:
    """Where a 1,000-row batch of the spend_logs sweep spends its time, on a copy: the
    oldest candidates in sweep order, batch j given to alternative j mod k (so each meets
    the same checkpoints and cache), each in a transaction rolled back. Returns a table."""
    from runbook.audit import archive
    from runbook.db.transactions import table_columns
    from runbook.rules.targets import target_named
    from runbook.sql import candidates, removal

    # The archive's own compression (ISA-L since 26ece20), else zlib level 1 as before it.
    compress: Callable[[bytes], bytes] = getattr(archive, "_compress", lambda raw: gzip.compress(raw, compresslevel=1, mtime=0))

    target = target_named("spend_logs")
    copy = "bench_anatomy"
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(copy), sql.Identifier(BASE_DB)))
    try:
        with connect(server.dsn(copy)) as conn:
            admin.execute("CHECKPOINT")
            json_columns = tuple(n for n, type_, _ in table_columns(conn, target) if type_ in ("json", "jsonb"))
            params = {**target.predicate_params(), "cutoff": built.plan.cutoff}
            alternatives = ("sweep's statements", "same, work_mem 64MB", "DELETE ... RETURNING line", "plain DELETE (no archive)")
            wanted = batches * len(alternatives) * 1000
            keys = [r[0] for r in conn.execute(
                sql.SQL('SELECT request_id FROM {} WHERE "startTime" < %s ORDER BY "startTime", request_id LIMIT %s').format(TABLE),
                [built.plan.cutoff, wanted],
            ).fetchall()]  # fmt: skip
            pred, table = candidates.predicate(target, "c"), candidates.table(target)
            archive_sql = removal.archive_rows(target, json_columns)
            by_ctid = sql.SQL("DELETE FROM {} WHERE ctid = ANY(%s::tid[])").format(table)
            returning = sql.SQL('DELETE FROM {} AS c WHERE {} AND {} RETURNING c."startTime", c.request_id, {}').format(
                table, candidates.key_match(target, "c"), pred, removal._line(json_columns)
            )
            plain = sql.SQL("DELETE FROM {} AS c WHERE {} AND {}").format(table, candidates.key_match(target, "c"), pred)
            times: dict[str, list[tuple[float, float, float, int]]] = {a: [] for a in alternatives}
            sort_method = ""
            for j in range(len(keys) // 1000):
                alt = alternatives[j % len(alternatives)]
                ids = keys[j * 1000 : (j + 1) * 1000]
                with conn.transaction(force_rollback=True):
                    t0 = time.monotonic()
                    raw = 0
                    if alt == "same, work_mem 64MB":
                        conn.execute("SET LOCAL work_mem = '64MB'")
                    if alt in ("sweep's statements", "same, work_mem 64MB"):
                        tids, lines, _ = conn.execute(archive_sql, {**params, "ids": ids}).fetchone() or ("{}", "", 0)
                        t1 = time.monotonic()
                        data = (lines + "\n").encode()
                        compress(data)
                        t2 = time.monotonic()
                        conn.execute(by_ctid, [tids])
                    elif alt == "DELETE ... RETURNING line":
                        rows = conn.execute(returning, {**params, "ids": ids}).fetchall()
                        rows.sort(key=lambda r: (r[0], r[1]))
                        data = ("\n".join(r[2] for r in rows) + "\n").encode()
                        t1 = time.monotonic()
                        compress(data)
                        t2 = time.monotonic()
                    else:
                        conn.execute(plain, {**params, "ids": ids})
                        data = b""
                        t1 = t2 = time.monotonic()
                    raw = len(data)
                    t3 = time.monotonic()
                times[alt].append((t1 - t0, t2 - t1, t3 - t2, raw))
            # Reading alone: what an archive must do that a DELETE does not (read-only).
            reads = {
                "look up by key (count)": "count(*)",
                "+ detoast every value (sum of pg_column_size(row))": "sum(pg_column_size(c.*))",
                "+ as row_to_json (sum of lengths)": "sum(octet_length(row_to_json(c)::text))",
                "+ all lines fetched into Python (string_agg)": "string_agg(row_to_json(c)::text, E'\\n')",
            }
            read_times: dict[str, list[float]] = {k: [] for k in reads}
            for j in range(min(len(keys) // 1000, batches * len(reads))):
                label = list(reads)[j % len(reads)]
                t0 = time.monotonic()
                conn.execute(
                    sql.SQL("SELECT " + reads[label] + " FROM {} AS c WHERE request_id = ANY(%s)").format(TABLE),
                    [keys[j * 1000 : (j + 1) * 1000]],
                ).fetchall()
                read_times[label].append(time.monotonic() - t0)
            with conn.transaction(force_rollback=True):
                plan = conn.execute(
                    sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + archive_sql, {**params, "ids": keys[-1000:]}
                ).fetchall()
                sort_method = "; ".join(str(r[0]).strip() for r in plan if "Sort Method" in str(r[0]))
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))

    def med(values: list[float]) -> str:
        return f"{sorted(values)[len(values) // 2] * 1000:.1f}"

    lines = [
        f"where a 1,000-row batch's time goes ({batches} batches each, interleaved, rolled back; medians; "
        f"archive_rows' sort: {sort_method or '-'})",
        "",
        "| alternative | statement(s) before compressing ms | compression ms | DELETE by ctid ms | total ms | archive text MB |",
        "|---|---|---|---|---|---|",
    ]
    for alt, rows in times.items():
        lines.append(
            f"| {alt} | {med([r[0] for r in rows])} | {med([r[1] for r in rows])} | {med([r[2] for r in rows])} "
            f"| {med([r[0] + r[1] + r[2] for r in rows])} | {sum(r[3] for r in rows) / len(rows) / 1e6:.1f} |"
        )
    lines += ["", "| reading 1,000 old rows, nothing written | ms (median) |", "|---|---|"]
    lines += [f"| {label} | {med(values)} |" for label, values in read_times.items() if values]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The sweep's process


def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def child(spec: dict[str, Any]) -> int:
    """Run the sweep as the issue gives it; write wall, result, RSS readings and where the
    archive's time went to spec["out"]."""
    t_process = time.monotonic()
    from runbook import options, sweep
    from runbook.audit import archive as archive_module
    from runbook.rules.targets import target_named

    import_s = time.monotonic() - t_process
    code = code_revision()  # the runbook/ this process imported (another session may commit meanwhile)
    # Where batch time goes outside PostgreSQL: the archive's compression, and its write +
    # fsyncs. The archive compresses in _compress (ISA-L, or zlib without it) or, before
    # that existed, with gzip.compress: whichever this checkout has is timed.
    spent = {"archive_s": 0.0, "gzip_s": 0.0, "archive_raw_bytes": 0.0, "archive_batches": 0.0}
    lock = threading.Lock()
    real_write = archive_module.write_batch
    real_compress: Callable[..., bytes] = getattr(archive_module, "_compress", gzip.compress)

    def timed_compress(data: bytes, *a: Any, **kw: Any) -> bytes:
        t = time.monotonic()
        out = real_compress(data, *a, **kw)
        with lock:
            spent["gzip_s"] += time.monotonic() - t
            spent["archive_raw_bytes"] += len(data)
        return out

    def timed_write(*a: Any, **kw: Any) -> Any:
        t = time.monotonic()
        out = real_write(*a, **kw)
        with lock:
            spent["archive_s"] += time.monotonic() - t
            spent["archive_batches"] += 1
        return out

    archive_module.write_batch = timed_write
    if hasattr(archive_module, "_compress"):
        setattr(archive_module, "_compress", timed_compress)
    else:
        setattr(archive_module, "gzip", types.SimpleNamespace(compress=timed_compress))

    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    rss_imports = _status_kb("VmRSS")

    def sample() -> None:
        while not stop.wait(0.2):
            samples.append((time.monotonic() - t0, _status_kb("VmRSS")))

    opts: dict[str, Any] = {
        "cutoff": spec["cutoff"], "dry_run": False, "max_rows": 10**8, "max_seconds": 86400, "max_batches": 1_000_000,
        "archive": spec["archive"],
    }  # fmt: skip
    if spec["archive_dir"]:
        opts["archive_dir"] = spec["archive_dir"]
    if spec["workers"]:
        opts["workers"] = spec["workers"]
    if spec["target_batch_ms"]:
        opts["target_batch_ms"] = spec["target_batch_ms"]
    t0 = time.monotonic()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with psycopg.connect(spec["dsn"], autocommit=True) as c:
        t1 = time.monotonic()
        result = sweep(c, target_named("spend_logs"), options(**opts), run_id=spec["run_id"])
        sweep_s = time.monotonic() - t1
    wall = time.monotonic() - t0
    stop.set()
    sampler.join()
    samples.append((wall, _status_kb("VmRSS")))
    # RSS once a tenth of the run had passed, and the most after that: growth with the backlog.
    tenth = [kb for t, kb in samples if t >= wall * 0.1]
    out = {
        "wall": wall, "sweep_s": sweep_s, "import_s": import_s, "process_s": time.monotonic() - t_process, "code": code,
        "result": result.to_dict(), "profile": spent,
        "rss": {
            "after_imports_kb": rss_imports, "at_10pct_kb": tenth[0] if tenth else 0, "max_after_10pct_kb": max(tenth, default=0),
            "end_kb": samples[-1][1], "vmhwm_kb": _status_kb("VmHWM"), "samples": len(samples),
            # the most RSS up to each quarter of the run: growth with progress, or a warm-up step
            "max_by_quarter_kb": [max((kb for t, kb in samples if t <= wall * q / 4), default=0) for q in (1, 2, 3, 4)],
        },
    }  # fmt: skip
    Path(spec["out"]).write_text(json.dumps(out, default=str))
    return 0


# --------------------------------------------------------------------------------------
# Report


def mb(kb: int) -> str:
    return f"{kb / 1024:,.0f}" if kb else "-"


def render(results: list[Measurement]) -> str:
    by = {m.name: m for m in results}
    floor = by.get("floor")
    lines = [
        "| variant | backlog | wall s | rows/s | batches | rows/batch p50 | batch p50 ms | batch p99 ms | WAL MB | archive MB "
        "| wall vs floor | peak RSS MB | CPU s other processes | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results:
        wall = m.extrapolated_wall or m.wall
        shown = f"{m.wall:.1f}" + (f" (est. {m.extrapolated_wall:.0f} for all)" if m.extrapolated_wall else "")
        lines.append(
            "| " + " | ".join([
                m.name, f"{m.backlog:,}", shown, f"{m.changed / m.wall:,.0f}" if m.wall else "-", str(len(m.batches)),
                f"{percentile(m.batch_rows, 0.5):,}" if m.batch_rows else "-",
                f"{percentile(m.batches, 0.5) * 1000:,.1f}" if m.batches else "-",
                f"{percentile(m.batches, 0.99) * 1000:,.1f}" if m.batches else "-",
                f"{m.wal_bytes / 1e6:,.0f}", f"{m.archive_bytes / 1e6:,.0f}" if m.archive_bytes else "-",
                f"{wall / floor.wall:.2f}x" + ("*" if m.extrapolated_wall else "") if floor and floor.wall and m.wall else "-",
                mb(m.peak_rss_kb), f"{m.cpu_others:.1f}", "ok" if m.checked else "FAILED",
            ]) + " |"
        )  # fmt: skip
    notes = [f"- {m.name}: {m.note}" for m in results if m.note]
    if notes:
        lines += [""] + notes
    sweeps = [m for m in results if m.rss]
    if sweeps:
        lines += [
            "",
            "| sweep variant | batches' time outside PostgreSQL: archive s (compression s) | raw archive MB | archive / raw "
            "| time outside batches s | RSS after imports MB | RSS at 10 % of the run MB | max RSS after MB "
            "| max RSS by 1/4, 1/2, 3/4, end of the run MB | VmHWM MB | wait4 peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in sweeps:
            p, r = m.profile, m.rss
            raw = p.get("archive_raw_bytes", 0)
            lines.append(
                f"| {m.name} | {p.get('archive_s', 0):.1f} ({p.get('gzip_s', 0):.1f}) | {raw / 1e6:,.0f} "
                f"| {m.archive_bytes / raw if raw else 0:.2f} | {m.outside_batches:.1f} | {mb(r['after_imports_kb'])} "
                f"| {mb(r['at_10pct_kb'])} | {mb(r['max_after_10pct_kb'])} "
                f"| {', '.join(mb(kb) for kb in r.get('max_by_quarter_kb', []))} | {mb(r['vmhwm_kb'])} | {mb(m.peak_rss_kb)} |"
            )
    busy = [m for m in results if m.wall and m.cpu_others > 0.1 * m.wall]
    if busy:
        lines += ["", "WARNING: other processes used more than 10% of one CPU during " + ", ".join(
            f"{m.name} ({m.cpu_others:.1f} CPU s in {m.wall:.1f} s)" for m in busy) + ": those timings are not clean."]  # fmt: skip
    lines += ["", "| target | measured | result |", "|---|---|---|"]

    def row(label: str, value: float | None, ok: bool | None, shown: str) -> None:
        lines.append(f"| {label} | {shown if value is not None else 'not measured'} | {'-' if ok is None else 'PASS' if ok else 'FAIL'} |")

    s, lite, small = by.get("sweep"), by.get("litellm"), by.get("sweep-small")
    ratio = s.wall / floor.wall if s and floor and s.checked and floor.checked else None
    row(f"sweep (with its archive) <= {TARGET_VS_FLOOR}x floor", ratio, None if ratio is None else ratio <= TARGET_VS_FLOOR,
        f"{ratio:.2f}x ({s.wall:.1f} s vs {floor.wall:.1f} s)" if ratio is not None and s and floor else "")  # fmt: skip
    lw = (lite.extrapolated_wall or lite.wall) if lite and lite.checked else None
    row("sweep faster than LiteLLM's loop", lw if s and s.checked else None, None if lw is None or not s else s.wall < lw,
        f"{s.wall:.1f} s vs {lw:.1f} s{' (extrapolated)' if lite and lite.extrapolated_wall else ''}" if lw and s else "")  # fmt: skip
    fa = by.get("floor-archive")
    if fa and fa.checked and s and s.checked and floor and floor.checked:
        lines.append(
            f"| (not a target) sweep vs floor-archive, the unbounded DELETE with the same archive | "
            f"{s.wall / fa.wall:.2f}x ({s.wall:.1f} s vs {fa.wall:.1f} s; floor-archive is {fa.wall / floor.wall:.2f}x floor) | - |"
        )
    rd = by.get("read")
    if rd and rd.checked and floor and floor.checked:
        lines.append(
            f"| (not a target) reading the old rows once, binary COPY discarded, vs floor: the least any archive adds | "
            f"{rd.wall / floor.wall:.2f}x ({rd.wall:.1f} s vs {floor.wall:.1f} s) | - |"
        )
    p99 = percentile(s.batches, 0.99) * 1000 if s and s.batches else None
    row(f"sweep per-batch p99 < {TARGET_P99_MS:.0f} ms", p99, None if p99 is None else p99 < TARGET_P99_MS, f"{p99:.1f} ms" if p99 else "")
    if s and small and s.peak_rss_kb and small.peak_rss_kb:
        grow = (s.peak_rss_kb - small.peak_rss_kb) / 1024
        ok = grow <= max(RSS_FLAT_MB, RSS_FLAT_SHARE * small.peak_rss_kb / 1024)
        row(f"RSS flat: peak with {s.backlog:,} rows within {RSS_FLAT_SHARE:.0%} / {RSS_FLAT_MB:.0f} MB of peak with {small.backlog:,}",
            grow, ok, f"{mb(s.peak_rss_kb)} MB vs {mb(small.peak_rss_kb)} MB ({grow:+.1f} MB)")  # fmt: skip
    else:
        row("RSS flat (sweep vs sweep-small)", None, None, "")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rows", type=int, default=3_000_000)
    p.add_argument("--old", type=int, default=1_000_000, help="rows older than the cutoff (30 days)")
    p.add_argument("--small-old", type=int, default=0, help="backlog of sweep-small (default: --old / 10)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS + EXTRA)}, sweep-tN")
    p.add_argument("--litellm-batches", type=int, default=LITELLM_RUN_LOOPS,
                   help=f"stop LiteLLM's loop after this many batches and extrapolate (default {LITELLM_RUN_LOOPS}, "
                   "its SPEND_LOG_RUN_LOOPS); 0: run it to the end")  # fmt: skip
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a PostgreSQL setting for the measurements")
    p.add_argument("--keep", action="store_true", help="keep the server and its base database (prints where)")
    p.add_argument("--home", type=Path, help="measure on the server a run with --keep left in this folder (no build; "
                   "--rows/--old are its own); without --keep it is destroyed at the end")  # fmt: skip
    p.add_argument("--json", type=Path, help="also write the measurements as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    for v in args.variants.split(","):
        if v not in VARIANTS + EXTRA and not re.fullmatch(r"sweep-t[1-9][0-9]*", v):
            p.error(f"unknown variant {v!r}")
    if not 100 <= args.rows or not 10 <= args.old < args.rows:
        p.error("need --rows >= 100 and 10 <= --old < --rows")
    if args.home:
        args.home = args.home.resolve()
        return args
    args.small_old = args.small_old or args.old // 10
    if not 1 <= args.small_old <= args.old:
        p.error("need 1 <= --small-old <= --old")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        return child(json.loads(args.child))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args._child = None
    settings = dict(MEASURE_SETTINGS)
    for item in args.set:
        name, _, value = item.partition("=")
        settings[name] = value
    started = time.monotonic()
    home = args.home or Path(tempfile.mkdtemp(dir="/var/tmp", prefix="litellm-runbook-spendlogs-"))
    work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="litellm-runbook-spendlogs-work-"))  # archives, the child's output
    server = EmbeddedServer(home)
    results: list[Measurement] = []
    extra: list[str] = []
    failed = False
    try:
        log(f"server in {home}; archives in {work}")
        if args.home:
            built, seed = load_built(home)
            args.rows, args.old, args.small_old = built.plan.rows, built.plan.old, args.small_old or built.plan.old // 10
            log(f"reusing the base database built there: {args.rows:,} rows, {args.old:,} older than the cutoff (seed {seed})")
        else:
            built = build(server, args.rows, args.old, args.seed)
            save_built(home, built, args.seed)
        restart(server, settings)
        with connect(server.dsn()) as admin:
            info = machine(admin)
            log(info)
            for name in args.variants.split(","):
                if name == "anatomy":
                    log("anatomy: timing 1,000-row batches of each alternative on a copy")
                    extra.append(anatomy(admin, server, built))
                    continue
                try:
                    results.append(measure(admin, server, work, name, built, args))
                except CheckFailed as exc:
                    failed = True
                    log(f"CHECK FAILED: {exc}")
                    results.append(Measurement(name, note=str(exc)[:300]))
                log(f"{name}: done")
        total = time.monotonic() - started
        command = "python bench/spendlogs.py " + " ".join(sys.argv[1:] if argv is None else argv)
        print(f"\n{info}")
        print(
            f"rows: {args.rows:,}, older than the cutoff: {args.old:,} (sweep-small: {args.small_old:,}); "
            + ("reused the base database of --home; its " if args.home else "")
            + f"build {built.load_s:.0f} s "
            f"(COPY {built.copy_s:.0f} s for {built.sent_bytes / 2**20:,.0f} MiB, request-log indexes {built.index_s:.0f} s, "
            f"VACUUM ANALYZE + CHECKPOINT {built.vacuum_s:.0f} s)\ntable: {sizes_line(built.table)}"
        )
        print(f"command: {command}; total run time {total / 60:.1f} min\n")
        print(render(results))
        for block in extra:
            print("\n" + block)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "info": info, "command": command, "rows": args.rows, "old": args.old, "small_old": args.small_old,
                "build": {k: v for k, v in asdict(built).items() if k != "plan"},
                "results": [asdict(m) for m in results],
            }, indent=1, default=str))  # fmt: skip
            shutil.copyfile(server.log, args.json.with_suffix(".server.log"))
        if failed:
            print("\nFAILED: at least one variant did not delete exactly the rows older than its cutoff (see above)", file=sys.stderr)
            return 1
        return 0
    except CheckFailed as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        proc = getattr(args, "_child", None)
        if proc is not None and proc.returncode is None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
        if args.keep:
            log(f"kept: server in {home}, DSN {server.dsn(BASE_DB) if server.initialised() else '-'} (--home {home} reuses it)")
        else:
            try:
                server.destroy()
            finally:
                shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
