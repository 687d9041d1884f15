"""How big the next batch is: sized to a WAL budget, and optionally to a time target. Pure arithmetic."""

from __future__ import annotations

from .params import Options

__all__ = ["ARCHIVE_BUDGET_BYTES", "next_batch_size"]


# What one batch of a delete or clear may archive, before compression: its rows are locked
# while the server writes them as JSON and the runbook compresses and fsyncs them. Measured
# on SpendLogs rows of ~4 KB (bench/RESULTS.md): 1,000-row batches (4.3 MB) had a p99 of
# 304 ms; ~490-row batches (2 MiB), 128-167 ms on a busy machine; 1.5 MiB leaves a margin.
ARCHIVE_BUDGET_BYTES = 3 * 512 * 1024


def next_batch_size(
    opts: Options, planned: int, used: int, seconds: float, wal_bytes: int = 0, wal_budget: int = 0,
    archive_bytes: int = 0,
) -> int:  # fmt: skip
    """The size of the next batch, given the last one's ``used`` rows, time and WAL.

    Never above ``batch_size``, never below 50 rows (or ``batch_size`` when smaller).

    WAL: when a batch wrote more than ``wal_budget`` bytes (the server's ``wal_buffers``
    divided by ``workers``, by default), the next one takes as many rows as fit in the budget at the last batch's
    WAL per row; it grows back by 5% a batch. ``wal_bytes`` counts every session's WAL
    during the batch, so with two workers it includes the round partner's, and the pair
    together is sized to the budget (about half the rows each). Why: a transaction that writes more WAL
    than the WAL buffers hold makes its own backend write and fsync WAL segments
    mid-statement, and those waits are the slowest batches (measured: bench/RESULTS.md).
    Rows cost most WAL right after a checkpoint (a full-page image per first-touched
    page); growing back slowly keeps batches near the size that fits that worst case,
    so batch times stay even instead of see-sawing with each checkpoint.

    Time (opt-in, ``target_batch_ms``): a batch slower than 1.5x the target halves the
    next one; once rows get cheap again, batches grow back.

    Archive (delete and clear): a batch whose archive lines passed ``ARCHIVE_BUDGET_BYTES``
    makes the next one as many rows as fit it, at the last batch's bytes per row.
    """
    if used == 0:
        return planned
    floor = min(opts.batch_size, 50)
    by_wal = by_time = opts.batch_size
    if wal_budget and wal_bytes:
        by_wal = max(floor, min(opts.batch_size, int(wal_budget * used / wal_bytes), planned + max(1, planned // 20)))
    elif wal_budget:
        by_wal = planned  # nothing measured: keep the size rather than jump back to batch_size
    if opts.target_batch_ms:
        ms = seconds * 1000
        if ms > 1.5 * opts.target_batch_ms:
            by_time = max(floor, planned // 2)
        elif planned < opts.batch_size and ms > 0:
            by_time = max(planned, min(opts.batch_size, int(opts.target_batch_ms / (ms / used)), planned * 2))
        else:
            by_time = planned
    by_archive = opts.batch_size
    if archive_bytes > ARCHIVE_BUDGET_BYTES:
        by_archive = max(floor, int(ARCHIVE_BUDGET_BYTES * used / archive_bytes))
    elif archive_bytes:
        by_archive = max(planned, min(opts.batch_size, int(ARCHIVE_BUDGET_BYTES * used / archive_bytes)))
    return min(by_wal, by_time, by_archive)
