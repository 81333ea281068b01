"""Periodic jobs, run by the relays: each job once per period, by whichever relay gets there first.

`OUTBOX_PERIODIC_JOBS` names the jobs: a dotted callable, the time of day (UTC) from which it is
due, and keyword arguments. Every relay looks at the schedule between batches; a relay that finds
a job due inserts its `JobRun(job, period)` row, which is unique, and only the relay whose insert
succeeded runs it. The run happens on a thread of the relay process, so that a long job (the
retention purge) does not hold up relaying. Its outcome is recorded on the row; a failure is
logged and recorded, and never stops the relay.

A period with no relay running while the job was due is not caught up on: the job runs again the
next period. A relay killed during a run leaves the row unfinished (`finished_at` empty).
"""

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, time
from datetime import timezone as dt_timezone
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.module_loading import import_string

from outbox import conf
from outbox.models import JobRun

logger = logging.getLogger(__name__)

OUTCOME_OK = "ok"
OUTCOME_FAILED = "failed"


@dataclass(frozen=True)
class Job:
    """One entry of OUTBOX_PERIODIC_JOBS."""

    name: str
    callable: str
    daily_at: time
    kwargs: dict[str, Any] = field(default_factory=dict)

    def due_period(self, now: datetime) -> str | None:
        """Return the period that is due at `now` (the UTC date), or None before today's time."""
        now = now.astimezone(dt_timezone.utc)
        if now.time() < self.daily_at:
            return None
        return now.date().isoformat()


def jobs_configured() -> list[Job]:
    """Return the jobs of OUTBOX_PERIODIC_JOBS, checked; raise ImproperlyConfigured on a bad entry."""
    jobs = []
    for name, spec in sorted(conf.periodic_jobs().items()):
        where = f"OUTBOX_PERIODIC_JOBS[{name!r}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("callable"), str):
            raise ImproperlyConfigured(f"{where} needs a 'callable': the dotted path of a function.")
        try:
            daily_at = time.fromisoformat(str(spec.get("daily_at", "")))
        except ValueError as e:
            raise ImproperlyConfigured(
                f"{where}['daily_at'] must be a time of day in UTC such as '03:30' (got {spec.get('daily_at')!r})."
            ) from e
        unknown = set(spec) - {"callable", "daily_at", "kwargs"}
        if unknown:
            raise ImproperlyConfigured(f"{where} has unknown keys: {', '.join(sorted(unknown))}.")
        jobs.append(Job(name=name, callable=spec["callable"], daily_at=daily_at, kwargs=dict(spec.get("kwargs", {}))))
    return jobs


def job_claim(*, job: str, period: str, runner: str) -> JobRun | None:
    """Record that `runner` runs `job` for `period`; return the run, or None if another has it."""
    try:
        with transaction.atomic():
            return JobRun.objects.create(job=job, period=period, runner=runner)
    except IntegrityError:
        return None


def job_run(*, job: Job, run: JobRun) -> str:
    """Run the job now, record its outcome and finish time on `run`; return the outcome."""
    logger.info("Job %s for %s started", job.name, run.period, extra={"job": job.name, "period": run.period})
    try:
        result = import_string(job.callable)(**job.kwargs)
    except Exception as e:  # whatever the job raises is its failure, recorded; the relay goes on
        logger.exception("Job %s for %s failed", job.name, run.period, extra={"job": job.name, "period": run.period})
        outcome = f"{OUTCOME_FAILED}: {type(e).__name__}: {e}"
    else:
        outcome = OUTCOME_OK if result is None else f"{OUTCOME_OK}: {result}"
        logger.info("Job %s for %s done: %s", job.name, run.period, outcome, extra={"job": job.name})
    JobRun.objects.filter(pk=run.pk).update(finished_at=Now(), outcome=outcome[:4000])
    return outcome


@dataclass
class JobRunner:
    """A relay's side of the periodic jobs: claims due runs and runs them on a thread, one at a time."""

    jobs: list[Job] = field(default_factory=jobs_configured)
    # The period of each job that this process has already claimed or seen claimed by another.
    handled: dict[str, str] = field(default_factory=dict)
    thread: threading.Thread | None = None

    def run_due(self, *, runner: str, now: datetime | None = None) -> JobRun | None:
        """Claim, for `runner`, the first due job unclaimed for its period and start it; return its run.

        Database errors propagate, so that the relay's outage handling covers them; the period is
        then tried again.
        """
        if self.thread is not None and self.thread.is_alive():
            return None
        now = now or timezone.now()
        for job in self.jobs:
            period = job.due_period(now)
            if period is None or self.handled.get(job.name) == period:
                continue
            run = job_claim(job=job.name, period=period, runner=runner)
            self.handled[job.name] = period
            if run is None:
                continue
            self.thread = threading.Thread(target=self._run, args=(job, run), name=f"outbox-job-{job.name}")
            self.thread.start()
            return run
        return None

    def wait(self) -> None:
        """Wait for the job in hand, if any, to finish."""
        if self.thread is not None and self.thread.is_alive():
            logger.info("Waiting for job %s to finish", self.thread.name.removeprefix("outbox-job-"))
            self.thread.join()

    def _run(self, job: Job, run: JobRun) -> None:
        try:
            job_run(job=job, run=run)
        except Exception:  # recording the outcome failed (database down): the row stays unfinished
            logger.exception("Job %s for %s: its outcome could not be recorded", job.name, run.period)
        finally:
            connection.close()  # this thread's own connection
