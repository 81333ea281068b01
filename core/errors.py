"""Errors raised by the business services. Each message says what to do about it."""

from django.core.exceptions import ValidationError


class CoreError(ValidationError):
    """Base class: a business rule refused a change. A ValidationError, so forms show it."""


class UnknownProductError(CoreError):
    """An order line names a SKU that no product has."""


class EmptyOrderError(CoreError):
    """An order with no lines cannot be placed."""


class InvalidTransitionError(CoreError):
    """An order cannot move from its status to the one asked for."""


class InvalidQuantityError(CoreError):
    """A quantity is below 1 or above the most one line or receipt may hold."""


class DuplicateEmailError(CoreError):
    """Another customer already has this e-mail address, in any case."""


class InsufficientStockError(CoreError):
    """An order would take more of a product than is in stock, and the shop refuses that."""
