"""The outbox's records: events, and the per-aggregate version counter."""

import uuid

from django.db import models
from django.db.models.functions import Now


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
    actor = models.CharField(max_length=200)
    correlation_id = models.CharField(max_length=64)
    source = models.CharField(max_length=100)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "outbox_event"
        constraints = [
            models.UniqueConstraint(
                fields=["aggregate_type", "aggregate_id", "aggregate_version"],
                name="outbox_event_aggregate_version_uniq",
            ),
        ]
        # Every index costs each save. The version constraint above doubles as the index of an
        # aggregate's timeline; on PostgreSQL, migration 0002 adds a BRIN index on created_at,
        # which costs almost nothing on this append-ordered table.

    def __str__(self) -> str:
        return f"{self.event_type} {self.aggregate_type}:{self.aggregate_id} v{self.aggregate_version}"


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

    class Meta:
        db_table = "outbox_aggregate"

    def __str__(self) -> str:
        return f"{self.aggregate_type}:{self.aggregate_id} v{self.version}"
