"""An ASGI handler for the JSON API with only the middleware the API needs.

Django's built-in middleware is sync-or-mixin style, and under ASGI each one costs a
hop to a thread per request; the API needs none of sessions, CSRF, messages or
clickjacking protection, so its requests skip them (PERFORMANCE-NOTES: about twice
the throughput). The dashboard and admin keep the full settings.MIDDLEWARE stack.
"""

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response

from aggregates.middleware import ApiGatewayMiddleware


class APIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        # Django wraps each request in a ThreadSensitiveContext, whose first
        # thread-sensitive call (the request_started signal) starts a thread that
        # the request then joins. Nothing on the API path needs a thread of its own:
        # database work goes through aggregates.db's executors, and the signals'
        # receivers (closing this thread's unused connections) run on the shared
        # thread instead.
        await self.handle(scope, receive, send)

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
