"""The outbox's records: events, and the per-aggregate version counter."""

import uuid
from typing import Any

from django.db import models
from django.db.models.functions import Now


class EventQuerySet(models.QuerySet["Event"]):
    def checked(self) -> "EventQuerySet":
        """Annotate each event with `copy_of`: the id of another event already sealed under its UUID
        (a copy inserted by SQL, say of a purged event), or None. outbox.eventlog.tagging.tag_valid() reads it."""
        sealed_elsewhere = Seal.objects.filter(event_uuid=models.OuterRef("event_id")).exclude(
            event_id=models.OuterRef("id")
        )
        return self.annotate(copy_of=models.Subquery(sealed_elsewhere.values("event_id")[:1]))


class Event(models.Model):
    """A fact: one change to one aggregate, written in the transaction that made the change.

    Column names follow Debezium's outbox convention (`aggregatetype`, `aggregateid`, `type`,
    `payload`), so that change-data-capture can read this table directly.
    """

    id = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    event_type = models.CharField(max_length=100, db_column="type")
    aggregate_type = models.CharField(max_length=100, db_column="aggregatetype")
    aggregate_id = models.CharField(max_length=100, db_column="aggregateid")
    aggregate_version = models.PositiveIntegerField()
    payload = models.JSONField()
    # The version of the payload's shape (outbox/emit/schemas.py): the type's current version when
    # written. Readers bring an older payload to the current version; the row keeps what was written.
    schema_version = models.SmallIntegerField(default=1, db_default=1, editable=False)
    actor = models.CharField(max_length=200)
    correlation_id = models.CharField(max_length=64)
    source = models.CharField(max_length=100)
    created_at = models.DateTimeField(db_default=Now())
    # The writer's HMAC over the event's facts (outbox.eventlog.tagging): a row inserted by SQL has none
    # that verifies, and is refused by every consumer and by the sealer.
    tag = models.CharField(max_length=64, blank=True, db_default="", default="", editable=False)

    objects = EventQuerySet.as_manager()

    # The database grants the application's role only these on the table (outbox_grants).
    outbox_privileges = ("SELECT", "INSERT")

    class Meta:
        db_table = "outbox_event"
        constraints = [
            models.UniqueConstraint(
                fields=["aggregate_type", "aggregate_id", "aggregate_version"],
                name="outbox_event_aggregate_version_uniq",
            ),
            models.CheckConstraint(
                condition=models.Q(schema_version__gte=1), name="outbox_event_schema_version_positive"
            ),
        ]
        # Every index costs each save. The version constraint above doubles as the index of an
        # aggregate's timeline; on PostgreSQL, migration 0007 adds the event log's three (type,
        # actor, created_at). The one below holds only events above schema version 1, so that the
        # check of the versions in the log (outbox.E008) reads an index, not the table: a save
        # pays for it only once its type's version has gone up.
        indexes = [
            models.Index(
                fields=["event_type", "schema_version"],
                name="outbox_event_schema_idx",
                condition=models.Q(schema_version__gt=1),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.aggregate_type}:{self.aggregate_id} v{self.aggregate_version}"

    # What an instance's payload and schema version were as stored, once upcast_event() has brought
    # them to the current version (outbox/emit/schemas.py); None while they are as stored.
    _stored: tuple[int, Any] | None = None

    # The names a consumer's handler reads (docs/extending.md).
    @property
    def type(self) -> str:
        """The event type, such as `order.placed`."""
        return self.event_type

    @property
    def version(self) -> int:
        """The event's place in its aggregate's sequence (1, 2, ...)."""
        return self.aggregate_version

    def is_authentic(self) -> bool:
        """Whether the outbox's writer wrote this event (its tag verifies), not SQL behind its back.

        Read the event through `Event.objects.checked()` so that a copy of a sealed event is caught too.
        """
        from outbox.eventlog.tagging import tag_valid

        return tag_valid(self)

    def upcast(self) -> "Event":
        """Bring the payload to its type's current schema version, in place, and return the event.

        The row is not changed. Consumers get their events upcast already; this is for code that
        reads the log itself. Raises an OutboxError naming the event and the versions when an
        upcaster is missing or fails (outbox/emit/schemas.py).
        """
        from outbox.emit.schemas import upcast_event

        return upcast_event(self)

    def stored(self) -> tuple[int, Any]:
        """The schema version and payload as the row holds them, whatever upcasting did to this
        instance: what the write-time tag and the seal cover."""
        return self._stored or (self.schema_version, self.payload)


class AggregateVersion(models.Model):
    """The latest version of each aggregate that has events.

    An event insert increments it with an upsert, which locks the row until commit: concurrent
    changes to one aggregate therefore get consecutive versions, and a rolled-back change gives its
    number back.
    """

    pk = models.CompositePrimaryKey("aggregate_type", "aggregate_id")
    aggregate_type = models.CharField(max_length=100, db_column="aggregatetype")
    aggregate_id = models.CharField(max_length=100, db_column="aggregateid")
    version = models.PositiveIntegerField()

    # Only ever counted up (a trigger refuses anything else, migration 0010).
    outbox_privileges = ("SELECT", "INSERT", "UPDATE")

    class Meta:
        db_table = "outbox_aggregate"

    def __str__(self) -> str:
        return f"{self.aggregate_type}:{self.aggregate_id} v{self.version}"


class Pending(models.Model):
    """An event not yet handed to the broker: the relay's work queue.

    The insert of an event adds its row here in the same statement; the relay deletes it once the
    event's messages are published. The table holds only the backlog, so claiming costs the same
    with five million settled events as with none. A claim is a lease: rows whose lease has run
    out (a relay died) are claimable again.
    """

    event = models.OneToOneField(
        Event, primary_key=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    # A copy of the event's type, so that claiming and routing never read the event table.
    event_type = models.CharField(max_length=100, db_column="type")
    claimed_by = models.CharField(max_length=200, blank=True, default="")
    claimed_until = models.DateTimeField(null=True, blank=True)
    # How many times the event was claimed: above 1, an earlier claim may have published it.
    claims = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "outbox_pending"

    def __str__(self) -> str:
        return f"pending event {self.event_id}"


class Delivery(models.Model):
    """The state of one event's delivery to one consumer.

    Written by the relay when it publishes (published), and by the consumer when it has applied the
    event (done, in the same transaction as the effect: this row is the consumer's tracking record)
    or given up on it (failed, then dead). An ordered consumer's event whose predecessor is not done
    yet is waiting (outbox/consume/ordering.py), until that one is.
    """

    class Status(models.TextChoices):
        PUBLISHED = "published", "Published"
        WAITING = "waiting", "Waiting for an earlier event"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        DEAD = "dead", "Dead"

    id = models.BigAutoField(primary_key=True)
    # No index of its own: the unique (event, consumer) index below answers lookups by event.
    event = models.ForeignKey(
        Event, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="deliveries"
    )
    consumer = models.CharField(max_length=100)
    status = models.CharField(max_length=20, choices=Status.choices)
    # Times the relay (or the sweeper) handed it to the broker: above 1 means sent more than once.
    publications = models.PositiveIntegerField(default=0)
    # Times the consumer ran it.
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    published_at = models.DateTimeField(null=True, blank=True)
    # When the consumer's worker started the attempt that finished it (the worker's clock).
    started_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())

    # No DELETE: only the retention purge removes deliveries, through outbox_purge_events().
    outbox_privileges = ("SELECT", "INSERT", "UPDATE")

    class Meta:
        db_table = "outbox_delivery"
        verbose_name_plural = "deliveries"
        permissions = [("replay_delivery", "Can replay deliveries (send them to their consumer again)")]
        constraints = [
            models.UniqueConstraint(fields=["event", "consumer"], name="outbox_delivery_event_consumer_uniq"),
        ]
        indexes = [
            # The sweeper's lookup: published, not done, oldest first. Only in-flight rows are in it.
            models.Index(
                fields=["published_at"],
                name="outbox_delivery_inflight_idx",
                condition=models.Q(status="published"),
            ),
            models.Index(
                fields=["consumer", "status", "updated_at"],
                name="outbox_delivery_unsettled_idx",
                condition=models.Q(status__in=["failed", "dead"]),
            ),
            # The sweeper's re-examination of ordered consumers' waiting deliveries, oldest first.
            models.Index(
                fields=["updated_at"],
                name="outbox_delivery_waiting_idx",
                condition=models.Q(status="waiting"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} → {self.consumer}: {self.status}"


class Seal(models.Model):
    """Tamper evidence: a keyed hash chain over each aggregate's events, in version order.

    `seal` = HMAC-SHA256(key, previous seal of the aggregate + the event's facts). Editing an
    event, or removing one, breaks the chain from there on; without the key (OUTBOX_SEAL_KEY)
    nobody can compute a chain that passes. `python manage.py outbox_verify` checks it.
    """

    event_id = models.BigIntegerField(primary_key=True)
    aggregate_type = models.CharField(max_length=100, db_column="aggregatetype")
    aggregate_id = models.CharField(max_length=100, db_column="aggregateid")
    aggregate_version = models.PositiveIntegerField()
    seal = models.CharField(max_length=64)
    # The event's UUID, kept after a purge: a copy of the event inserted later is told apart by it.
    event_uuid = models.UUIDField(null=True, unique=True)
    sealed_at = models.DateTimeField(db_default=Now())
    # Set by the retention purge when it deletes the event: the seal stays, for the chain.
    purged_at = models.DateTimeField(null=True, blank=True)

    outbox_privileges = ("SELECT", "INSERT")

    class Meta:
        db_table = "outbox_seal"
        constraints = [
            models.UniqueConstraint(
                fields=["aggregate_type", "aggregate_id", "aggregate_version"],
                name="outbox_seal_aggregate_version_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"seal of {self.aggregate_type}:{self.aggregate_id} v{self.aggregate_version}"


class Replay(models.Model):
    """An operator's replay: who sent which deliveries again, when, and why."""

    id = models.BigAutoField(primary_key=True)
    requested_by = models.CharField(max_length=200)
    reason = models.TextField()
    source = models.CharField(max_length=100, help_text="`admin` or `command:outbox_replay`.")
    criteria = models.JSONField(default=dict, help_text="The filters that selected the deliveries.")
    forced = models.BooleanField(default=False, help_text="Done deliveries were included.")
    deliveries = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(db_default=Now())

    outbox_privileges = ("SELECT", "INSERT")

    class Meta:
        db_table = "outbox_replay"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"replay {self.pk} of {self.deliveries} deliveries by {self.requested_by}"


class ReplayItem(models.Model):
    """One delivery that a replay sent again."""

    id = models.BigAutoField(primary_key=True)
    replay = models.ForeignKey(Replay, on_delete=models.CASCADE, related_name="items")
    event_id = models.BigIntegerField()
    consumer = models.CharField(max_length=100)
    previous_status = models.CharField(max_length=20, blank=True)

    outbox_privileges = ("SELECT", "INSERT")

    class Meta:
        db_table = "outbox_replay_item"
        indexes = [models.Index(fields=["event_id"], name="outbox_replay_item_event_idx")]

    def __str__(self) -> str:
        return f"{self.event_id} → {self.consumer}"


class Checkpoint(models.Model):
    """A signed count of the sealed events, so that a log emptied or cut short is named by verify.

    Seals are never deleted (the purge stamps them), so the number of seals with ids up to
    `last_event_id` can only grow: a checkpoint that counted more than the log now holds names a
    removal of events together with their seals. Each checkpoint signs its figures and the
    previous checkpoint's signature with the seal key; the relay takes one every
    OUTBOX_CHECKPOINT_SECONDS. The application's role may only add checkpoints.
    """

    id = models.BigAutoField(primary_key=True)
    sealed = models.BigIntegerField(help_text="Seals of events with ids up to last_event_id, counted so far.")
    last_event_id = models.BigIntegerField()
    taken_at = models.DateTimeField()
    previous = models.CharField(max_length=64, blank=True)
    signature = models.CharField(max_length=64)

    outbox_privileges = ("SELECT", "INSERT")

    class Meta:
        db_table = "outbox_checkpoint"

    def __str__(self) -> str:
        return f"checkpoint {self.pk}: {self.sealed} sealed events up to {self.last_event_id}"

    @property
    def token(self) -> str:
        """The checkpoint as an auditor keeps it outside the database (`outbox_verify --expect`)."""
        return f"{self.pk}:{self.sealed}:{self.last_event_id}:{self.signature}"


class RelayHeartbeat(models.Model):
    """Each relay's last sign of life, written every few seconds by its loop."""

    name = models.CharField(max_length=200, primary_key=True)
    host = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField()
    events_relayed = models.BigIntegerField(default=0)

    class Meta:
        db_table = "outbox_relay_heartbeat"

    def __str__(self) -> str:
        return f"relay {self.name} on {self.host}"


class JobRun(models.Model):
    """One run of a periodic job for one period: unique, so that of several relays one runs it."""

    id = models.BigAutoField(primary_key=True)
    job = models.CharField(max_length=100)
    period = models.CharField(max_length=40, help_text="The period the run is for, e.g. 2026-11-25 for a daily job.")
    runner = models.CharField(max_length=200)
    started_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.TextField(blank=True)

    class Meta:
        db_table = "outbox_job_run"
        constraints = [models.UniqueConstraint(fields=["job", "period"], name="outbox_job_run_job_period_uniq")]

    def __str__(self) -> str:
        return f"{self.job} for {self.period}"


class MessageDrop(models.Model):
    """Messages (or the event ids in them) that a consumer refused without applying anything,
    counted per consumer and reason: the workers' refusals, added up for `/metrics`."""

    class Reason(models.TextChoices):
        MALFORMED = "malformed", "Malformed (undecodable, or arguments the actor does not take)"
        OVERSIZED = "oversized", "Oversized (more bytes or event ids than the cap)"
        UNKNOWN_ACTOR = "unknown_actor", "For an actor this deployment does not define"
        UNKNOWN_EVENTS = "unknown_events", "Naming event ids that exist in no event (purged, or never written)"

    id = models.BigAutoField(primary_key=True)
    # The consumer (actor) name; for a message too broken to name its actor, its queue.
    consumer = models.CharField(max_length=200)
    reason = models.CharField(max_length=20, choices=Reason.choices)
    messages = models.BigIntegerField(default=0)
    # Event ids refused (for unknown_events: the ids that name no event).
    events = models.BigIntegerField(default=0)
    last_at = models.DateTimeField(db_default=Now())
    last_detail = models.CharField(max_length=400, blank=True)

    class Meta:
        db_table = "outbox_message_drop"
        constraints = [
            models.UniqueConstraint(fields=["consumer", "reason"], name="outbox_message_drop_consumer_reason_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.consumer}: {self.messages} {self.reason}"


class Dedupe(models.Model):
    """An external consumer's record of one outside effect, once per (consumer, key): the dedupe key.

    Committed (`sending`, with a lease) before the handler's outside call and marked `sent` after
    it, with the delivery. A worker that finds it `sent` does nothing; one that finds a live lease
    retries later; one that finds an expired lease (a worker died mid-call) calls again: the one
    duplicate window, which `sends` above 1 shows.
    """

    class Status(models.TextChoices):
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"

    consumer = models.CharField(max_length=100)
    key = models.CharField(max_length=200)
    event_id = models.BigIntegerField(help_text="The event that last asked for it.")
    status = models.CharField(max_length=20, choices=Status.choices)
    sends = models.PositiveIntegerField(default=0)
    token = models.UUIDField(default=uuid.uuid4, editable=False)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    sent_at = models.DateTimeField(null=True, blank=True)

    outbox_privileges = ("SELECT", "INSERT", "UPDATE")

    class Meta:
        db_table = "outbox_dedupe"
        constraints = [models.UniqueConstraint(fields=["consumer", "key"], name="outbox_dedupe_consumer_key_uniq")]

    def __str__(self) -> str:
        return f"{self.consumer} {self.key}: {self.status}"


class Backfill(models.Model):
    """A consumer given the retained history after the fact (`outbox_backfill`): its progress,
    committed with each chunk of deliveries it creates, so that a killed run resumes where it was."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        ABANDONED = "abandoned", "Abandoned"

    id = models.BigAutoField(primary_key=True)
    consumer = models.CharField(max_length=100)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    # What it covers: events after `after` (an event id) or created since `since`, of `types`, up to
    # `upto`, the newest event when it began (later ones reach the consumer through the relay).
    after = models.BigIntegerField(default=0, help_text="Events with a greater id.")
    since = models.DateTimeField(null=True, blank=True, help_text="Events created at or after this time.")
    types = models.JSONField(default=list, help_text="The event types it sends.")
    upto = models.BigIntegerField(help_text="The newest event when it began.")
    rate = models.PositiveIntegerField(null=True, blank=True, help_text="Events per second at most.")
    # The last event id looked at, and what came of the events up to it.
    cursor = models.BigIntegerField(default=0)
    created = models.PositiveBigIntegerField(default=0, help_text="Deliveries it created and published.")
    skipped = models.PositiveBigIntegerField(default=0, help_text="Events that had a delivery already.")
    requested_by = models.CharField(max_length=200)
    # Who runs it now, and when it last made progress: a second run of it waits while this is fresh.
    runner = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(db_default=Now())
    beat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    outbox_privileges = ("SELECT", "INSERT", "UPDATE")

    class Meta:
        db_table = "outbox_backfill"
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["consumer"], condition=models.Q(status="running"), name="outbox_backfill_one_running"
            )
        ]

    def __str__(self) -> str:
        return f"backfill {self.pk} of {self.consumer}: {self.status}"

    @property
    def progress(self) -> float:
        """The share of its range looked at, from 0 to 1."""
        start = self.after
        span = self.upto - start
        return 1.0 if span <= 0 else min(1.0, max(0.0, (self.cursor - start) / span))
