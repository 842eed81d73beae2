"""An ASGI handler for the JSON API with only the middleware the API needs.

Django's built-in middleware is sync-or-mixin style, and under ASGI each one costs a
hop to a thread per request; the API needs none of sessions, CSRF, messages or
clickjacking protection, so its requests skip them (PERFORMANCE-NOTES: about twice
the throughput). The dashboard and admin keep the full settings.MIDDLEWARE stack.
"""

import asyncio
import contextlib

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix

from aggregates.middleware import ApiGatewayMiddleware


class APIHandler(ASGIHandler):
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

        async def process_request():
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # client went away
                await self.send_response(response, send)
            return response

        # As Django does: a client that disconnects cancels the request (an SSE
        # stream's, above all).
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        processor = asyncio.create_task(process_request())
        try:
            await asyncio.wait(
                [listener, processor], return_when=asyncio.FIRST_COMPLETED
            )
            for task in (listener, processor):
                if task.done():
                    with contextlib.suppress(RequestAborted):
                        task.result()
                else:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if not processor.cancelled():
                processor.result().close()  # request_finished, on this thread
        finally:
            body_file.close()

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        view_chain = convert_exception_to_response(self._get_response_async)
        self._middleware_chain = convert_exception_to_response(
            ApiGatewayMiddleware(view_chain)
        )


API_PREFIXES = ("/api/", "/livez", "/healthz")


def route_http(*, api, site):
    """An ASGI app sending API paths to `api` and everything else to `site`."""

    async def app(scope, receive, send):
        target = api if scope["path"].startswith(API_PREFIXES) else site
        await target(scope, receive, send)

    return app
