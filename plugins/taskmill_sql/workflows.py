"""The workflows store (``storage.workflows``): DAGs of tasks, their keys and derived status.

A workflow is a ``workflows`` row, one ``workflow_tasks`` row per task (its key and position) and
the ordinary task rows (``tasks.workflow_id``) with their edges in ``task_dependencies``; all of it
is written in the transaction that inserts the tasks (:meth:`SqlWorkflowStore.writer`).

Status is derived from the tasks while the workflow runs: ``running`` while any task is not final,
then ``completed`` or ``failed``. :meth:`finalize` (a manager duty, one statement) writes the final
status and ``finished_at`` once every task has ended; from then on the stored status is the
answer, so it survives the expiry of the tasks' rows.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column
from sqlalchemy import Connection
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import UniqueConstraint
from sqlalchemy import Uuid
from sqlalchemy import case
from sqlalchemy import exists
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import literal_column
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update

from taskmill.plugin_api import NewWorkflow
from taskmill.plugin_api import TaskStatus
from taskmill.plugin_api import Workflow
from taskmill.plugin_api import derive_status
from taskmill.plugin_api import utcnow
from taskmill_sql.tables import UTCDateTime
from taskmill_sql.tables import metadata
from taskmill_sql.tables import tasks
from taskmill_sql.task_reads import FINAL
from taskmill_sql.task_reads import TaskReads

__all__ = ["workflows", "workflow_tasks", "SqlWorkflowStore"]

workflows = Table(
    "workflows",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column("tenant", String(100), nullable=False),
    Column("name", String(200)),
    Column("task_count", Integer, nullable=False),
    Column("status", String(16), nullable=False, server_default=text("'running'")),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
)
Index("ix_workflows_tenant_created", workflows.c.tenant, workflows.c.created_at)
Index("ix_workflows_created", workflows.c.created_at)
Index(
    "ix_workflows_running",
    workflows.c.created_at,
    postgresql_where=workflows.c.status == "running",
    sqlite_where=workflows.c.status == "running",
)

workflow_tasks = Table(
    "workflow_tasks",
    metadata,
    Column("workflow_id", Uuid(), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("key", String(200), nullable=False),
    Column("task_id", Uuid(), nullable=False),
    UniqueConstraint("workflow_id", "key", name="uq_workflow_tasks_workflow_id_key"),
)

_BAD = ("failed", "cancelled")


def _aggregate() -> Any:
    """Per workflow: tasks still present, not final, failed or cancelled, and the last end."""
    wt, t = workflow_tasks, tasks
    return select(
        wt.c.workflow_id.label("workflow_id"),
        func.count().label("present"),
        func.sum(case((t.c.status.not_in(FINAL), 1), else_=0)).label("open"),
        func.sum(case((t.c.status.in_(_BAD), 1), else_=0)).label("bad"),
        func.max(t.c.finished_at).label("last_finished"),
    ).select_from(wt.join(t, t.c.id == wt.c.task_id))


def _effective(agg: Any) -> tuple[Any, Any]:
    """SQL expressions of the status and finished_at a workflow shows."""
    w = workflows
    status = case(
        (w.c.status != "running", w.c.status),
        (func.coalesce(agg.c.open, 0) > 0, "running"),
        (func.coalesce(agg.c.bad, 0) > 0, "failed"),
        else_="completed",
    )
    finished = case(
        (w.c.status != "running", w.c.finished_at),
        (func.coalesce(agg.c.open, 0) > 0, None),
        else_=agg.c.last_finished,
    )
    return status, finished


class SqlWorkflowStore:
    """Workflows on the storage's :class:`~taskmill_sql.db.Database`."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._reads = TaskReads(db)

    # ---- writes --------------------------------------------------------------------------------
    def writer(self, workflow: NewWorkflow) -> Callable[[Connection], None]:
        """What the task insert runs in its transaction to record the workflow and its keys."""

        def write(conn: Connection) -> None:
            conn.execute(
                insert(workflows).values(
                    id=workflow.id,
                    tenant=workflow.tenant,
                    name=workflow.name,
                    task_count=len(workflow.keys),
                    status="running",
                    created_at=workflow.created_at,
                )
            )
            rows = [
                {"workflow_id": workflow.id, "position": i, "key": key, "task_id": task_id}
                for i, (key, task_id) in enumerate(workflow.keys)
            ]
            conn.execute(insert(workflow_tasks), rows)

        return write

    def finalize(self, limit: int = 1000) -> int:
        """Write the final status of running workflows whose tasks have all ended (one statement).
        Returns how many were finalized."""
        wt, t, w = workflow_tasks, tasks, workflows
        of_w = wt.c.workflow_id == w.c.id
        joined = wt.join(t, t.c.id == wt.c.task_id)
        still_open = exists(
            select(literal_column("1")).select_from(joined).where(of_w, t.c.status.not_in(FINAL))
        )
        any_bad = exists(select(literal_column("1")).select_from(joined).where(of_w, t.c.status.in_(_BAD)))
        last = select(func.max(t.c.finished_at)).select_from(joined).where(of_w).scalar_subquery()
        pick = select(w.c.id).where(w.c.status == "running").order_by(w.c.created_at).limit(limit)
        stmt = (
            update(w)
            .where(w.c.status == "running", w.c.id.in_(pick.scalar_subquery()), ~still_open)
            .values(
                status=case((any_bad, "failed"), else_="completed"), finished_at=func.coalesce(last, utcnow())
            )
        )
        with self.db.one() as conn:
            return conn.execute(stmt).rowcount or 0

    # ---- reads ---------------------------------------------------------------------------------
    def get(self, workflow_id: uuid.UUID, *, tenant: str | None) -> Workflow | None:
        """One workflow with its tasks in request order (None when not in ``tenant``)."""
        stmt = select(workflows).where(workflows.c.id == workflow_id)
        if tenant is not None:
            stmt = stmt.where(workflows.c.tenant == tenant)
        task_rows = (
            select(tasks, workflow_tasks.c.key.label("wf_key"))
            .select_from(workflow_tasks.join(tasks, tasks.c.id == workflow_tasks.c.task_id))
            .where(workflow_tasks.c.workflow_id == workflow_id)
            .order_by(workflow_tasks.c.position)
        )
        with self.db.one() as conn:
            row = conn.execute(stmt).first()
            if row is None:
                return None
            rows = conn.execute(task_rows).all()
            task_list = self._reads.with_deps(conn, rows)
        m = row._mapping
        pairs = [(r._mapping["wf_key"], task) for r, task in zip(rows, task_list, strict=True)]
        status, finished = m["status"], m["finished_at"]
        if status == "running":
            status = derive_status([task.status for _, task in pairs]) if pairs else "running"
            if status != "running":
                ends = [task.finished_at for _, task in pairs if task.finished_at is not None]
                finished = max(ends) if ends else None
        return Workflow(
            id=m["id"],
            tenant=m["tenant"],
            name=m["name"],
            created_at=m["created_at"],
            status=status,
            finished_at=finished,
            tasks=pairs,
            task_count=m["task_count"],
        )

    def list(
        self, *, tenant: str | None, status: str | None, offset: int, limit: int
    ) -> tuple[list[Workflow], int]:
        """A page of workflows, newest first, without their tasks, and the total."""
        w = workflows
        conds = [w.c.tenant == tenant] if tenant is not None else []
        scope = select(w.c.id).where(*conds)
        agg = (
            _aggregate().where(workflow_tasks.c.workflow_id.in_(scope)).group_by(workflow_tasks.c.workflow_id)
        )
        agg = agg.subquery("agg")
        eff_status, eff_finished = _effective(agg)
        base = select(
            w.c.id,
            w.c.tenant,
            w.c.name,
            w.c.task_count,
            w.c.created_at,
            eff_status.label("eff_status"),
            eff_finished.label("eff_finished"),
        ).select_from(w.outerjoin(agg, agg.c.workflow_id == w.c.id))
        base = base.where(*conds)
        if status is not None:
            base = base.where(eff_status == status)
        page = base.order_by(w.c.created_at.desc(), w.c.id.desc()).offset(offset).limit(limit)
        with self.db.one() as conn:
            rows = conn.execute(page).all()
            if status is None:
                total = conn.execute(select(func.count()).select_from(w).where(*conds)).scalar_one()
            else:
                total = conn.execute(select(func.count()).select_from(base.subquery())).scalar_one()
        items = [
            Workflow(
                id=r.id,
                tenant=r.tenant,
                name=r.name,
                created_at=r.created_at,
                status=r.eff_status,
                finished_at=_aware(r.eff_finished),
                task_count=r.task_count,
            )
            for r in rows
        ]
        return items, total

    def task_statuses(self, workflow_id: uuid.UUID) -> list[TaskStatus]:
        """The statuses of a workflow's tasks still present."""
        stmt = (
            select(tasks.c.status)
            .select_from(workflow_tasks.join(tasks, tasks.c.id == workflow_tasks.c.task_id))
            .where(workflow_tasks.c.workflow_id == workflow_id)
        )
        with self.db.one() as conn:
            return [TaskStatus(r[0]) for r in conn.execute(stmt)]


def _aware(value: Any) -> dt.datetime | None:
    """A CASE expression loses the column type: SQLite hands back text, PostgreSQL naive or aware."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
