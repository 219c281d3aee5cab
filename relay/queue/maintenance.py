"""When each daily job last ran (``maintenance_runs``, migration 13).

The jobs themselves (renewal, retention) are :mod:`relay.certify.maintenance`'s; this
module only remembers their last run, so a restart does not run them again at once and
a day missed while the gateway was stopped is made up at the next start.
"""

from __future__ import annotations

from relay.queue.db import Database


class MaintenanceRuns(Database):
    """The ``maintenance_runs`` table: one row per daily job."""

    async def last_maintenance(self, task: str) -> float | None:
        """When ``task`` last ran (its start), or None if it never did."""

        def get() -> float | None:
            row = self._conn.execute(
                "SELECT last_run FROM maintenance_runs WHERE task = ?", (task,)
            ).fetchone()
            return float(row[0]) if row else None

        return await self._read(get)

    async def record_maintenance(self, task: str, started: float, result: str) -> None:
        """Remember that ``task`` ran, started at ``started``, and what it said."""

        def put() -> None:
            self._conn.execute(
                "INSERT INTO maintenance_runs (task, last_run, result) VALUES (?, ?, ?)"
                " ON CONFLICT(task) DO UPDATE SET last_run = excluded.last_run,"
                " result = excluded.result",
                (task, started, result),
            )

        await self._run(put)
