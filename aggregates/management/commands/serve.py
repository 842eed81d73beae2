import os
import secrets
import sys

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from aggregates import daphne_transport
from aggregates.models import ApiToken
from aggregates.tokens import create_token


class Command(BaseCommand):
    help = (
        "Apply migrations, create a first admin login and write token on the first "
        "run (printed once), then serve with daphne."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args, host, port, **options):
        call_command("migrate", interactive=False, verbosity=0)
        self._first_run()
        self.stdout.write(f"Serving on http://{host}:{port}/ (Ctrl-C stops)")
        self.stdout.flush()
        # daphne serves the data directory just resolved here (./data under this
        # working directory unless BOTLNEK_DATA_DIR is set), even a relative one.
        os.environ["BOTLNEK_DATA_DIR"] = str(settings.DATA_DIR)
        # Replace this process with daphne so signals reach the server directly.
        # Botlnek logs one JSON line per request; daphne's own access log
        # (verbosity 1) would repeat each one in another format.
        os.execvp(sys.executable, daphne_transport.command(host, port, "-v", "0"))

    def _first_run(self) -> None:
        User = get_user_model()
        if not User.objects.exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", password=password)
            self.stdout.write(
                f"Created the admin login (shown once): admin / {password}"
            )
        if not ApiToken.objects.exists():
            _, raw = create_token(name="first write token", scope="write")
            self.stdout.write(f"Created a write token (shown once): {raw}")
            self.stdout.write(f"    export BOTLNEK_TOKEN={raw}")
