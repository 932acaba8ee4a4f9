"""Periodic jobs on APScheduler 3.x (``AsyncIOScheduler``).

The jobs never talk to a target: they refresh what the reconciler knows (a
full snapshot, the directory) or ask it to look again (time windows in rules,
expiring sessions), and the engine decides whether any request is needed. A
resync that finds nothing to change therefore sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from presence_sync.errors import PresenceSyncError
from presence_sync.ops.logging import kv

__all__ = ["Job", "Schedules", "Work", "guarded"]

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[Any]]


def guarded(what: str, job: Work) -> Work:
    """``job`` as a scheduled job: a ``PresenceSyncError`` (NFON down, say)
    is logged once when the failures start and once when the job works
    again, not with a traceback every interval. Other errors propagate."""
    failing = False

    async def run() -> None:
        nonlocal failing
        try:
            await job()
        except PresenceSyncError as exc:
            if not failing:
                log.warning("%s failed; will retry on schedule: %s", what, exc)
            failing = True
            return
        if failing:
            log.info("%s works again", what)
        failing = False

    return run


@dataclass(frozen=True, slots=True)
class Job:
    """One periodic job: ``work`` every ``interval`` seconds, first after
    ``first`` seconds (default: one interval)."""

    id: str
    work: Work
    interval: float
    first: float | None = None


class Schedules:
    """The daemon's periodic jobs. Create and ``start()`` inside the running
    event loop (APScheduler 3 binds to it at start)."""

    def __init__(self, jobs: list[Job]) -> None:
        self._scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
            timezone="UTC",
        )
        self._scheduler.add_listener(self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        self._jobs = {job.id: job for job in jobs}

    @property
    def running(self) -> bool:
        """Started and not shut down."""
        return bool(self._scheduler.running)

    def start(self) -> None:
        for job in self._jobs.values():
            self._add(job)
        self._scheduler.start()

    def _add(self, job: Job) -> None:
        first = job.interval if job.first is None else job.first
        self._scheduler.add_job(
            job.work,
            "interval",
            seconds=job.interval,
            id=job.id,
            name=job.id,
            replace_existing=True,
            next_run_time=datetime.now().astimezone() + timedelta(seconds=first),
        )

    def reschedule(self, job_id: str, interval: float) -> None:
        """Change a job's interval (SIGHUP reload); the next run moves accordingly."""
        job = self._jobs.get(job_id)
        if job is None or job.interval == interval:
            return
        self._jobs[job_id] = Job(job.id, job.work, interval)
        self._add(self._jobs[job_id])

    async def run_now(self, job_id: str) -> None:
        """Run a job at once, outside its schedule (startup, tests)."""
        await self._jobs[job_id].work()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @staticmethod
    def _on_event(event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("scheduled job missed its time", extra=kv(job=event.job_id))
        else:
            log.error(
                "scheduled job failed: %s",
                event.exception,
                extra=kv(job=event.job_id),
                exc_info=event.exception,
            )
