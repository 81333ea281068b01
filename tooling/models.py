"""The development tools' one table: what the chaos run's backfilled consumer received."""

from django.db import models


class BackfillReceipt(models.Model):
    """One event handled by the consumer the chaos run adds halfway and backfills
    (tooling/consumers.py). No unique key on the event: an event handled twice shows as two rows."""

    event_id = models.BigIntegerField(db_index=True)
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"event {self.event_id}"
