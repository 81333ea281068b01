"""A random token per e-mail notice, in its Message-ID, so that the Message-ID is unique to the
notice even in a restored or copied database. Nullable, with no default: on PostgreSQL the column
is added without rewriting the table, and notices recorded before keep the Message-ID they had."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("consumers", "0002_notice_resent_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="emailnotice",
            name="token",
            field=models.UUIDField(blank=True, editable=False, null=True),
        ),
    ]
