"""The e-mail consumer becomes an external consumer of the outbox: its dedupe state (status,
lease, sends, token) moves into `outbox_dedupe` under the key `order:<id>:<kind>`, and
`email_notice` keeps the notices the SMTP server accepted.

Every notice is copied; a notice left `sending` (a worker was mid-send, or died there) keeps its
lease and sends in its dedupe record and leaves `email_notice`, so that its retry sends it, as
before. Rows are copied in batches; the copy can run while workers are stopped or not (a worker
of the old code would go on writing `email_notice` only — stop the e-mail workers for the
upgrade, as docs/operations.md says).
"""

import uuid

from django.db import migrations

BATCH = 2000


def copy_to_dedupe(apps, schema_editor):
    notice = apps.get_model("consumers", "EmailNotice")
    dedupe = apps.get_model("outbox", "Dedupe")
    db = schema_editor.connection.alias
    rows = notice.objects.using(db).order_by("id")
    last = 0
    while True:
        batch = list(rows.filter(id__gt=last)[:BATCH])
        if not batch:
            break
        last = batch[-1].id
        # Notices from before tokens existed get one now, for their Message-ID and dedupe record.
        untokened = [n for n in batch if n.token is None]
        for n in untokened:
            n.token = uuid.uuid4()
        notice.objects.using(db).bulk_update(untokened, ["token"])
        dedupe.objects.using(db).bulk_create(
            [
                dedupe(
                    consumer="email",
                    key=f"order:{n.order_id}:{n.kind}",
                    event_id=n.event_id,
                    status=n.status,
                    sends=n.sends,
                    token=n.token,
                    lease_until=n.lease_until,
                    created_at=n.created_at,
                    sent_at=n.sent_at,
                )
                for n in batch
            ],
            # A record left by an earlier run of this migration (migrated back, then forward) takes
            # the notice's state, which is the one the old code kept up to date since.
            update_conflicts=True,
            unique_fields=["consumer", "key"],
            update_fields=["event_id", "status", "sends", "token", "lease_until", "sent_at"],
        )
    # Not sent yet: the dedupe record says so; the notice's row comes when the SMTP server accepts it.
    notice.objects.using(db).exclude(status="sent").delete()


def copy_back(apps, schema_editor):
    """Back to the notices as the old code keeps them: the sent ones are `sent`, and each notice
    still `sending` in the dedupe records gets its row back, with its lease and sends, so that the
    old code sends it (once the lease runs out) rather than claim it anew."""
    notice = apps.get_model("consumers", "EmailNotice")
    dedupe = apps.get_model("outbox", "Dedupe")
    db = schema_editor.connection.alias
    notice.objects.using(db).update(status="sent")
    for record in dedupe.objects.using(db).filter(consumer="email", status="sending").iterator():
        _, order_id, kind = record.key.split(":", 2)
        notice.objects.using(db).get_or_create(
            order_id=int(order_id),
            kind=kind,
            defaults={
                "event_id": record.event_id,
                "recipient": "",
                "subject": "",
                "status": "sending",
                "sends": record.sends,
                "token": record.token,
                "lease_until": record.lease_until,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("consumers", "0005_ledger_bigint"), ("outbox", "0012_dedupe")]

    operations = [
        migrations.RunPython(copy_to_dedupe, copy_back, elidable=False),
        migrations.RemoveField(model_name="emailnotice", name="status"),
        migrations.RemoveField(model_name="emailnotice", name="lease_until"),
    ]
