"""Request middleware: events stamped with the request's user and a correlation id, and query
strings holding NUL characters refused."""

import re
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from outbox.emit.context import event_context

# A client-supplied request id is kept only if it is short and plain, so it cannot pollute logs.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _actor(request: HttpRequest) -> str:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.get_username()}"
    return "anonymous"


class EventContextMiddleware:
    """Set the event context (actor, correlation id, source) for the duration of a request.

    The correlation id comes from the `X-Request-ID` header when it is a plain token, else a new
    one; it is echoed back in the response's `X-Request-ID` header.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.headers.get("X-Request-ID", "")
        source = "admin" if request.path.startswith("/admin/") else "web"
        with event_context(
            actor_resolver=lambda: _actor(request),
            source=source,
            correlation_id=supplied if _REQUEST_ID.match(supplied) else None,
        ) as ctx:
            response = self.get_response(request)
        response["X-Request-ID"] = ctx.correlation_id
        return response


class RejectNulCharacters:
    """Answer 400 to a query string whose names or values hold a NUL character (`?type=%00`).

    PostgreSQL's text cannot hold one, so any filter or search that passes it on fails in the
    database with a 500. Forms already refuse NUL in their fields; a query string is no form.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if any("\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()):
            return HttpResponseBadRequest(
                "The query string holds a NUL character (%00), which no filter or search can take: remove it.",
                content_type="text/plain",
            )
        return self.get_response(request)
