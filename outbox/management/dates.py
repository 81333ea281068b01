"""Dates and times as the management commands take them."""

from datetime import datetime

from django.core.management.base import CommandError
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.timezone import is_naive, make_aware


def parse_when(option: str, text: str | None) -> datetime | None:
    """Return the date or time `text` gives (in the current time zone when it names none), or
    None for none; a CommandError saying what to write for anything else."""
    if not text:
        return None
    moment = parse_datetime(text)
    if moment is None:
        day = parse_date(text)
        moment = datetime(day.year, day.month, day.day) if day else None
    if moment is None:
        raise CommandError(f"{option} takes a date or a time, e.g. 2026-11-25 or 2026-11-25T14:00 (got {text!r}).")
    return make_aware(moment) if is_naive(moment) else moment
