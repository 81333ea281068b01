"""Dramatiq actors, discovered by django-dramatiq and run by `python manage.py rundramatiq`.

The inventory, e-mail and audit-log consumers are added here; see docs/architecture.md.
"""
