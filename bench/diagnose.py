#!/usr/bin/env python3
"""Where a sweep batch's time goes: the batch statement and its alternatives, interleaved.

    .venv/bin/python bench/diagnose.py                       # 1M rows, 300K candidates, batch 1000
    .venv/bin/python bench/diagnose.py --home /var/tmp/litellm-runbook-bench-XXXX   # a server kept by bench.py --keep

On one copy of the benchmark's base database it takes one snapshot of the candidates
exactly as the sweep does, then walks it in slices of ``--batch-size`` ids and gives
slice j to alternative j mod k, each slice its own transaction. Every alternative thus
runs under the same conditions (checkpoints, cache, other load) over the same kind of
rows; the table compares their statement time and commit time per batch.

Alternatives (each sets exactly the same rows, the candidates of its slice):

    current   candidate_sql.batch_update as it is in this checkout (lock CTE with
              FOR UPDATE SKIP LOCKED, UPDATE with the predicate re-checked, ledger INSERTs)
    syncoff   the same statement in a transaction with SET LOCAL synchronous_commit = off
    noledger  the lock CTE and UPDATE (by ctid) without the ledger INSERTs
    nolock    UPDATE ... WHERE id = ANY(ids) AND predicate: no lock CTE, no ledger (what the
              writes cost on their own; not safe against two sweeps at once)

The snapshot's own cost (one full scan) and the final count's are timed once at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench  # noqa: E402
import runbook  # noqa: E402
from runbook.sql import candidates as candidate_sql  # noqa: E402
from runbook.db.embedded import EmbeddedServer  # noqa: E402

Builder = Callable[[runbook.Target], sql.Composed]


def _lock_cte(t: runbook.Target) -> sql.Composed:
    """The lock step of candidate_sql.batch_update: FOR UPDATE SKIP LOCKED, found by primary key."""
    return sql.SQL(
        "WITH locked AS (SELECT c.ctid AS tid, c.{status} FROM {table} AS c "
        "WHERE c.{key} = ANY(%(ids)s::text[]) AND {pred_c} FOR UPDATE SKIP LOCKED)"
    ).format(
        key=sql.Identifier(t.key_column),
        status=sql.Identifier(t.status_column),
        table=candidate_sql.table(t),
        pred_c=candidate_sql.predicate(t, "c"),
    )


def current(t: runbook.Target) -> sql.Composed:
    return candidate_sql.batch_update(t)


def noledger(t: runbook.Target) -> sql.Composed:
    """candidate_sql.batch_update without the ledger INSERTs (lock by primary key, update by ctid)."""
    return _lock_cte(t) + sql.SQL(
        " UPDATE {table} AS u SET {status} = %(new_status)s FROM locked WHERE u.ctid = locked.tid AND {pred_u}"
    ).format(
        table=candidate_sql.table(t),
        status=sql.Identifier(t.status_column),
        pred_u=candidate_sql.predicate(t, "u"),
    )


def nolock(t: runbook.Target) -> sql.Composed:
    return sql.SQL("UPDATE {table} SET {status} = %(new_status)s WHERE {key} = ANY(%(ids)s::text[]) AND {pred}").format(
        table=candidate_sql.table(t),
        status=sql.Identifier(t.status_column),
        key=sql.Identifier(t.key_column),
        pred=candidate_sql.predicate(t),
    )


ALTERNATIVES: dict[str, Builder] = {
    "current": current,
    "syncoff": current,  # the same statement, its transaction with SET LOCAL synchronous_commit = off
    "noledger": noledger,
    "nolock": nolock,
}
PRELUDE = {"syncoff": "SELECT set_config('synchronous_commit', 'off', true)"}


def changed_rows(cur: Any) -> int:
    """Rows changed: the ledger statements return a count, the plain UPDATEs a rowcount."""
    if cur.description:
        row = cur.fetchone()
        return int(row[0]) if row else 0
    return int(cur.rowcount)


def run(server: EmbeddedServer, candidates: int, batch_size: int, names: Sequence[str], explain: bool) -> None:
    admin_dsn = server.dsn()
    copy = "bench_diagnose"
    target = runbook.Target()
    from runbook.db import ledger
    from runbook.audit.record import operator

    with bench.connect(admin_dsn) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(copy), sql.Identifier(bench.BASE_DB))
        )
        try:
            with bench.connect(server.dsn(copy)) as conn:
                cutoff = bench.db_now_utc(conn) - timedelta(days=bench.STALE_DAYS)
                params: dict[str, Any] = {**target.predicate_params(), "cutoff": cutoff, "new_status": target.new_status}
                run_id = f"diagnose-{uuid.uuid4().hex[:8]}"
                ledger.ensure(conn)
                ledger.start_run(
                    conn, run_id=run_id, kind="sweep", target="public." + target.table, operator=operator(), parameters={},
                    identity={"kind": "sweep", "target": "public." + target.table},
                )
                t0 = time.monotonic()
                with conn.transaction():
                    for stmt in candidate_sql.snapshot(target):
                        conn.execute(stmt, params)
                snapshot_s = time.monotonic() - t0
                admin.execute("CHECKPOINT")
                stmts = {name: ALTERNATIVES[name](target) for name in names}
                times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
                after: tuple[Any, str] = (datetime.min, "")
                j = 0
                changed_total = 0
                started = time.monotonic()
                while True:
                    name = names[j % len(names)]
                    t0 = time.monotonic()
                    with conn.transaction():
                        if name in PRELUDE:
                            conn.execute(PRELUDE[name])
                        step = conn.execute(
                            candidate_sql.snapshot_next(), {"after_t": after[0], "after_k": after[1], "batch_size": batch_size}
                        ).fetchall()
                        if not step:
                            break
                        ids = [str(r[1]) for r in step]
                        t1 = time.monotonic()
                        cur = conn.execute(stmts[name], {**params, "ids": ids, "run_id": run_id, "batch": j + 1, "wal_start": "0/0"})
                        n = changed_rows(cur)
                        t2 = time.monotonic()
                    t3 = time.monotonic()
                    if n != len(ids):
                        raise SystemExit(f"{name} changed {n} of {len(ids)} rows in slice {j + 1}")
                    changed_total += n
                    times[name].append((t1 - t0, t2 - t1, t3 - t2))
                    after = (step[-1][0], ids[-1])
                    j += 1
                loop_s = time.monotonic() - started
                t0 = time.monotonic()
                left = bench.one(conn, candidate_sql.candidate_count(target), params)
                count_s = time.monotonic() - t0
                t0 = time.monotonic()
                bench.one(conn, candidate_sql.candidate_count(target), params)
                count2_s = time.monotonic() - t0
                if changed_total != candidates or left != 0:
                    raise SystemExit(f"changed {changed_total:,}, {left} left; expected {candidates:,} and 0")
                plans = []
                if explain:
                    # One more plan per alternative, on rows that are candidates again (rolled back).
                    for name in names:
                        try:
                            with conn.transaction():
                                ids = [
                                    str(r[0])
                                    for r in conn.execute(
                                        sql.SQL("SELECT k FROM {} ORDER BY t, k LIMIT %s").format(candidate_sql.SNAPSHOT_TABLE),
                                        [batch_size],
                                    )
                                ]
                                conn.execute(sql.SQL("UPDATE {} SET status = 'queued' WHERE id = ANY(%s)").format(bench.TABLE), [ids])
                                rows = conn.execute(
                                    sql.SQL("EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS false) ") + stmts[name],
                                    {**params, "ids": ids, "run_id": run_id, "batch": 10**6, "wal_start": "0/0"},
                                ).fetchall()
                                plans.append((name, [str(r[0]) for r in rows]))
                                raise _Rollback
                        except _Rollback:
                            pass
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))

    print(f"\n## diagnose: {changed_total:,} rows in slices of {batch_size:,}, alternatives interleaved ({loop_s:.1f} s)\n")
    print(f"snapshot (DROP, CREATE TEMP TABLE AS full scan, CREATE INDEX, ANALYZE): {snapshot_s:.2f} s; "
          f"final candidate_count (full scan): {count_s:.2f} s (the same count again: {count2_s:.2f} s)\n")
    print("| alternative | batches | statement p50 ms | statement p99 ms | commit p50 ms | commit p99 ms "
          "| keyset step p50 ms | total per batch p50 ms | vs nolock |")
    print("|---|---|---|---|---|---|---|---|---|")
    p50 = {name: bench.percentile([sum(x) for x in v], 0.5) for name, v in times.items() if v}
    for name, v in times.items():
        if not v:
            continue
        st = [x[1] for x in v]
        cm = [x[2] for x in v]
        ks = [x[0] for x in v]
        base = p50.get("nolock")
        print(
            f"| {name} | {len(v)} | {bench.percentile(st, 0.5) * 1000:.1f} | {bench.percentile(st, 0.99) * 1000:.1f} "
            f"| {bench.percentile(cm, 0.5) * 1000:.1f} | {bench.percentile(cm, 0.99) * 1000:.1f} "
            f"| {bench.percentile(ks, 0.5) * 1000:.2f} | {p50[name] * 1000:.1f} | {p50[name] / base:.2f}x |"
            if base
            else f"| {name} | {len(v)} | {bench.percentile(st, 0.5) * 1000:.1f} | {bench.percentile(st, 0.99) * 1000:.1f} "
            f"| {bench.percentile(cm, 0.5) * 1000:.1f} | {bench.percentile(cm, 0.99) * 1000:.1f} "
            f"| {bench.percentile(ks, 0.5) * 1000:.2f} | {p50[name] * 1000:.1f} | - |"
        )
    for name, plan in plans:
        print(f"\n### {name}\n")
        print("\n".join("    " + (line if len(line) <= 240 else line[:200] + f"... ({len(line):,} chars)") for line in plan))


class _Rollback(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--home", type=Path, help="a server kept by bench.py --keep (its base database is reused)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--candidates", type=int, default=300_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--alternatives", default=",".join(ALTERNATIVES))
    p.add_argument("--explain", action="store_true", help="also EXPLAIN ANALYZE each alternative once (rolled back)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    names = [n for n in args.alternatives.split(",") if n]
    for n in names:
        if n not in ALTERNATIVES:
            p.error(f"unknown alternative {n!r}")
    if args.home:
        server = EmbeddedServer(args.home)
        with bench.connect(server.dsn(bench.BASE_DB)) as conn:
            candidates = int(
                bench.one(conn, candidate_sql.candidate_count(runbook.Target()), {
                    **runbook.Target().predicate_params(),
                    "cutoff": bench.db_now_utc(conn) - timedelta(days=bench.STALE_DAYS),
                })
            )  # fmt: skip
        bench.restart(server, bench.MEASURE_SETTINGS)
        run(server, candidates, args.batch_size, names, args.explain)
        return 0
    home = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="litellm-runbook-bench-"))
    server = EmbeddedServer(home)
    try:
        built = bench.build(server, args.rows, args.candidates, args.seed)
        bench.restart(server, bench.MEASURE_SETTINGS)
        run(server, built.candidates, args.batch_size, names, args.explain)
        return 0
    finally:
        if args.keep:
            bench.log(f"kept: server in {home}")
        else:
            server.destroy()


if __name__ == "__main__":
    sys.exit(main())
