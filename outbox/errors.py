"""Errors raised by the outbox."""


class OutboxError(Exception):
    """Base class for every outbox error."""


class NotInTransactionError(OutboxError):
    """An event was about to be written outside an atomic block, where it could not commit with its row."""


class BulkWriteError(OutboxError):
    """A bulk write would change emitting rows without writing their events."""


class RegistrationError(OutboxError):
    """A model's event declaration is invalid."""


class UpcastError(OutboxError):
    """An event's payload could not be brought to its type's current schema version."""
