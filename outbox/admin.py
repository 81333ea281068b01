"""The outbox in the admin. The event log's admin is built here; deliveries and replays below."""
