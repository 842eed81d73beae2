"""The Django seam: the JSON API's own ASGI handler, with only the middleware the
API needs and none of Django's per-request thread hops.

Why it exists: under ASGI every sync-style middleware and each of Django's request
signals costs a hop to a thread per request. The API needs none of sessions, CSRF,
messages or clickjacking protection, and its database work runs on aggregates.db's
own threads. Measured in one run on this kind of machine (2 cores, daphne, SQLite,
wrk -c16, medians of 3): with Django's own handle(), 330 req/s on /livez and 153
single posts/s; with this one, 949 and 193. The dashboard and the admin keep
Django's handler and the full settings.MIDDLEWARE stack.

It touches exactly (Django pinned >=5.2,<5.3): ASGIHandler's read_body,
create_request, run_get_response, send_response and listen_for_disconnect, and
BaseHandler's _get_response_async, _middleware_chain, _view_middleware,
_template_response_middleware and _exception_middleware. handle() below is Django
5.2's ASGIHandler.handle with the signal hops taken out; tests/test_api_handler.py
fails when the installed Django's handle() is not the one this copy was made from,
and APIHandler refuses to start when any name above is missing.
"""

import asyncio
import contextlib

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix

from aggregates import daphne_transport
from aggregates.middleware import ApiGatewayMiddleware

# Django's internals this handler relies on (see the module docstring).
DJANGO_NEEDS = (
    "read_body",
    "create_request",
    "run_get_response",
    "send_response",
    "listen_for_disconnect",
    "_get_response_async",
)


class APIHandler(ASGIHandler):
    def __init__(self) -> None:
        missing = [name for name in DJANGO_NEEDS if not hasattr(self, name)]
        if missing:
            raise RuntimeError(
                f"this Django lacks {', '.join(missing)}: aggregates.api_handler "
                "supports Django 5.2"
            )
        super().__init__()

    async def handle(self, scope, receive, send):
        """Django 5.2's ASGIHandler.handle without its two thread hops per request.

        Django sends request_started and request_finished through sync_to_async:
        inside the request's ThreadSensitiveContext the first hop starts a thread
        that the request then joins. Their only receivers close the calling
        thread's stale database connections, and the API opens none on this
        thread (aggregates.db runs database work on its own executors and tidies
        up there), so the API sends request_finished inline and skips
        request_started, whose receivers would find nothing to do either.
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        # A streamed response (Server-Sent Events) waits for its connection's
        # write buffer, and may drop a reader that fell behind (the daphne seam).
        request.http_stream = stream = daphne_transport.HttpStream(send)

        async def process_request():
            response = await self.run_get_response(request)
            target = send
            if response.streaming:
                stream.attach()
                target = stream.paced(send)
            with contextlib.suppress(asyncio.CancelledError):  # client went away
                await self.send_response(response, target)
            return response

        # As Django does: a client that disconnects cancels the request (an SSE
        # stream's, above all).
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        processor = asyncio.create_task(process_request())
        try:
            await asyncio.wait(
                [listener, processor], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            # Unlike Django's, also when this request itself is cancelled (the
            # server stopping): a task left waiting on `receive` would be
            # garbage-collected at exit, which crashed the interpreter.
            for task in (listener, processor):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            stream.detach()
            body_file.close()
        if not listener.cancelled():
            # Retrieved, not raised: raised here, the RequestAborted's traceback
            # would hold this frame, which holds the listener task, which holds the
            # exception: a cycle keeping the whole request (body, response, tasks)
            # alive until a full garbage collection, one per request (measured).
            listener.exception()
        if not processor.cancelled():
            processor.result().close()  # request_finished, on this thread

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        view_chain = convert_exception_to_response(self._get_response_async)
        self._middleware_chain = convert_exception_to_response(
            ApiGatewayMiddleware(view_chain)
        )


API_PREFIXES = ("/api/", "/livez", "/healthz", "/metrics")


def route_http(*, api, site):
    """An ASGI app sending API paths to `api` and everything else to `site`."""

    async def app(scope, receive, send):
        target = api if scope["path"].startswith(API_PREFIXES) else site
        await target(scope, receive, send)

    return app
