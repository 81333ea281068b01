"""The base class of models whose saves write outbox events.

`post_save` fires after `save_base()` has left its own atomic block: in autocommit mode the row is
already committed when a receiver runs. `EmittingModel.save()` and `delete()` therefore open the
transaction themselves, so the row and its event commit together or not at all.
"""

from collections.abc import Iterable
from typing import Any, ClassVar

from django.db import models, router, transaction
from typing_extensions import Self

from outbox.emit.registry import spec_for
from outbox.errors import BulkWriteError


class EmittingQuerySet(models.QuerySet[Any]):
    """A queryset whose bulk writes either write their events or refuse loudly."""

    def _refuse_tracked(self, method: str, fields: Iterable[str]) -> None:
        spec = spec_for(self.model)
        tracked = sorted(set(fields) - spec.untracked_fields)
        if tracked:
            name = self.model.__name__
            raise BulkWriteError(
                f"{name}.objects.{method}() would change {', '.join(tracked)} without writing "
                f"outbox events. Save each object instead (obj.save(update_fields=[...])), or use "
                f"the service that owns this change."
            )

    def update(self, **kwargs: Any) -> int:
        """Update untracked fields in bulk; refuse to update fields that events describe."""
        self._refuse_tracked("update", kwargs)
        return super().update(**kwargs)

    def bulk_update(self, objs: Iterable[Any], fields: Iterable[str], batch_size: int | None = None) -> int:
        """Bulk-update untracked fields; refuse to update fields that events describe."""
        fields = list(fields)
        self._refuse_tracked("bulk_update", fields)
        return super().bulk_update(objs, fields, batch_size=batch_size)

    def bulk_create(self, objs: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Insert the objects and write one `created` event each, in one transaction."""
        from outbox.emit.receivers import emit_created

        if kwargs.get("ignore_conflicts") or kwargs.get("update_conflicts"):
            raise BulkWriteError(
                f"{self.model.__name__}.objects.bulk_create() with ignore_conflicts or "
                "update_conflicts cannot tell which rows it created, so it cannot write their "
                "events. Use get_or_create()/update_or_create() per object."
            )
        with transaction.atomic(using=self.db, savepoint=False):
            created = super().bulk_create(objs, *args, **kwargs)
            emit_created(created, using=self.db)
        return created


EmittingManager = models.Manager.from_queryset(EmittingQuerySet)


class EmittingModel(models.Model):
    """A model whose saves and deletes write outbox events in the same transaction."""

    objects: ClassVar[Any] = EmittingManager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save the row and write its event in one transaction."""
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        # savepoint=False: inside an existing transaction this adds no statement at all.
        with transaction.atomic(using=using, savepoint=False):
            super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Delete the row (and its cascade) and write their events in one transaction."""
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            return super().delete(*args, **kwargs)

    @classmethod
    def from_db(cls, db: str | None, field_names: Any, values: Any) -> Self:
        """Load the row and remember its values, so that a later save can tell what changed."""
        instance = super().from_db(db, field_names, values)
        instance._outbox_loaded = dict(zip(field_names, values, strict=True))  # type: ignore[attr-defined]
        return instance
