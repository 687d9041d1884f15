"""How big the next batch is: sized to a WAL budget, and optionally to a time target. Pure arithmetic."""

from __future__ import annotations

from .params import Options

__all__ = ["next_batch_size"]


def next_batch_size(opts: Options, planned: int, used: int, seconds: float, wal_bytes: int = 0, wal_budget: int = 0) -> int:
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
    return min(by_wal, by_time)
