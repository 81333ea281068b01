"""The broker the tools run their processes on, taken from BROKER_URL: Redis or RabbitMQ.

`outbox_bench` and `outbox_chaos` give their relays and workers `broker.env()`, empty it first
(messages left by an interrupted run name event ids that a new scratch database reuses), and the
chaos run restarts it once. Nothing here talks to anything but the configured broker.
"""

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from tooling.processes import LocalRedis, ProcessError, wait_until


def consumer_queues() -> set[str]:
    """Every queue the declarations name, with Dramatiq's delay and dead-letter queues."""
    from dramatiq.common import dq_name, xq_name

    from outbox.consume import declare

    names = {declare.queue_of(d) for d in declare.declared()} | {"default"}
    return {n for name in names for n in (name, dq_name(name), xq_name(name))}


@dataclass
class ToolBroker:
    """A broker of the tools: `kind` is "redis" or "rabbitmq"."""

    kind: str
    url: str
    # Redis only: a server of the tool's own, which a restart empties (as a crash would).
    server: LocalRedis | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """The environment that points a relay or a worker at this broker."""
        return {"BROKER_URL": self.url, "REDIS_URL": self.url if self.kind == "redis" else ""}

    def empty(self) -> None:
        """Drop every message the project's queues hold (on RabbitMQ, the queues themselves)."""
        if self.kind == "redis":
            import redis

            client = redis.Redis.from_url(self.url)
            stale = list(client.scan_iter(match="dramatiq:*"))
            if stale:
                client.delete(*stale)
            return
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            for name in sorted(consumer_queues()):
                channel.queue_delete(name)
        finally:
            connection.close()

    def restart(self) -> str:
        """Restart the broker; return what happened, for the fault log."""
        if self.kind == "redis":
            if self.server is None:
                raise ProcessError("this Redis is not the tool's own; it cannot be restarted")
            self.server.restart()
            return "Redis restarted, its data lost"
        rabbitmqctl = shutil.which("rabbitmqctl")
        if rabbitmqctl is None:
            raise ProcessError("rabbitmqctl was not found, so RabbitMQ cannot be restarted here")
        for action in ("stop_app", "start_app"):
            subprocess.run([rabbitmqctl, "-q", action], check=True, capture_output=True, timeout=180)  # noqa: S603
        wait_until(self.reachable, timeout=60, what="RabbitMQ to accept connections again", interval=0.2)
        return "RabbitMQ restarted (its durable queues kept)"

    def reachable(self) -> bool:
        if self.kind == "redis":
            import redis

            try:
                return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
            except redis.RedisError:
                return False
        import pika
        import pika.exceptions

        try:
            pika.BlockingConnection(pika.URLParameters(self.url)).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def stop(self) -> None:
        """Stop what the tool started (its own Redis); a shared broker is left running."""
        if self.server is not None:
            self.server.stop()


def configured_kind() -> str:
    """The broker BROKER_URL (or REDIS_URL) selects: "redis", "rabbitmq", or "" for none."""
    return str(getattr(settings, "BROKER", "redis" if settings.REDIS_URL else ""))


def shared_broker(*, redis_db: int) -> ToolBroker:
    """The configured broker, for a tool that must not disturb the application's messages: on Redis
    its database `redis_db` of the same server; on RabbitMQ BROKER_URL's virtual host as given."""
    kind = configured_kind()
    if kind == "rabbitmq":
        return ToolBroker("rabbitmq", settings.BROKER_URL)
    if kind == "redis":
        url = urlunsplit(urlsplit(settings.BROKER_URL)._replace(path=f"/{redis_db}"))
        return ToolBroker("redis", url)
    raise ProcessError(
        "No broker is configured: set BROKER_URL=redis://127.0.0.1:6379/0 or BROKER_URL=amqp://guest:guest@127.0.0.1:5672/"
    )


def restartable_broker(workdir: Path) -> ToolBroker:
    """The configured kind of broker, in a form the chaos run may restart: on Redis a server of its
    own on a free loopback port (started here); on RabbitMQ BROKER_URL's server, which it restarts
    with rabbitmqctl."""
    if configured_kind() == "rabbitmq":
        return ToolBroker("rabbitmq", settings.BROKER_URL)
    server = LocalRedis(workdir)
    server.start()
    return ToolBroker("redis", server.url, server=server)
