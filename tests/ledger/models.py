"""The example app's records: invoices (which emit events) and the ledger its consumer keeps."""

from django.db import models

from outbox import EmittingModel


class Invoice(EmittingModel):
    number = models.CharField(max_length=20, unique=True)
    email = models.EmailField()
    total = models.IntegerField()

    def __str__(self) -> str:
        return self.number


class LedgerEntry(models.Model):
    """One posting, made by the `ledger` consumer: exactly once per event."""

    event_id = models.BigIntegerField(unique=True)
    invoice = models.CharField(max_length=20)
    amount = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.invoice} {self.amount:+d}"
