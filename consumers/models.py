"""The consumers' own records: the stock ledger and the e-mail notices.

Consumers write these; business users and the application never do (see docs/events.md).
"""

from django.db import models
from django.db.models.functions import Now


class StockMovement(models.Model):
    """The stock ledger: one change to one product's stock, caused by one event.

    A product's stock is the sum of its movements. A source (an order, a stock receipt) owns the
    movements it caused; its current contribution is the sum of them, which the inventory consumer
    brings to what the source says now whenever one of its events arrives.
    """

    event_id = models.BigIntegerField(help_text="The outbox event that caused the movement.")
    event_type = models.CharField(max_length=100)
    # Indexed with the id below, not on its own: one product's movements in ledger order.
    product = models.ForeignKey(
        "core.Product", on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="movements"
    )
    # 64-bit like the product's stock, so that no movement or running total can overflow.
    quantity = models.BigIntegerField(help_text="Signed: negative takes stock out, positive puts it back.")
    source = models.CharField(max_length=100, help_text="`order:<id>` or `receipt:<id>`.")
    version = models.PositiveIntegerField(help_text="The aggregate version the source was brought to.")
    stock_after = models.BigIntegerField()
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "inventory_movement"
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["event_id", "product"], name="inventory_movement_event_product_uniq"),
        ]
        indexes = [
            models.Index(fields=["source"], name="inventory_movement_source_idx"),
            models.Index(fields=["product", "id"], name="inventory_movement_product_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity:+d} product {self.product_id} ({self.event_type} {self.source})"


class StockSource(models.Model):
    """The inventory consumer's view of one source: the version applied, the state at that version.

    Every event of a source locks this row first, so two workers never apply one source at once;
    an event whose version is not above the applied one is already reflected. `state` (JSON text)
    is the source as of `version`, folded from its events, with what its movements add up to.
    """

    source = models.CharField(max_length=100, primary_key=True)
    version = models.PositiveIntegerField(default=0)
    state = models.TextField(default="{}")
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "inventory_source"

    def __str__(self) -> str:
        return f"{self.source} at v{self.version}"


class EmailNotice(models.Model):
    """An e-mail the SMTP server accepted for a customer about an order, once per (order, kind).

    The e-mail consumer is an external consumer: its dedupe record (outbox's `outbox_dedupe`, key
    `order:<id>:<kind>`) is taken before the SMTP call and marked sent after it; this row commits
    in that same transaction. A notice being sent right now, or left by a worker that died
    mid-send, is a `sending` dedupe record and has no row here yet.
    """

    class Kind(models.TextChoices):
        CONFIRMATION = "order_confirmation", "Order confirmation"
        CANCELLATION = "order_cancellation", "Order cancellation"

    order_id = models.BigIntegerField()
    kind = models.CharField(max_length=30, choices=Kind.choices)
    event_id = models.BigIntegerField(help_text="The event that last asked for it.")
    recipient = models.EmailField()
    subject = models.CharField(max_length=200)
    # Sends that may have reached the SMTP server (a refusal or a failed connection is not
    # counted): above 1 means it may have been delivered twice (the duplicate window).
    sends = models.PositiveIntegerField(default=0)
    # Random, its dedupe record's, in the notice's Message-ID: unique to it even in a restored or
    # copied database.
    token = models.UUIDField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(db_default=Now())
    sent_at = models.DateTimeField(null=True, blank=True, help_text="When the SMTP server accepted it.")

    class Meta:
        db_table = "email_notice"
        constraints = [models.UniqueConstraint(fields=["order_id", "kind"], name="email_notice_order_kind_uniq")]
        indexes = [
            # The admin's "sent more than once" filter: the few notices of the duplicate window.
            models.Index(fields=["id"], name="email_notice_resent_idx", condition=models.Q(sends__gt=1)),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for order {self.order_id}, sent to {self.recipient}"
