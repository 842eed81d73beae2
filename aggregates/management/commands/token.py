from django.core.management.base import BaseCommand, CommandError

from aggregates.models import ApiToken
from aggregates.tokens import create_token, digest, revoke_token
from aggregates.values import key_rule


class Command(BaseCommand):
    help = "Create, list or revoke API tokens."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="create a token and print it once")
        create.add_argument(
            "--scope",
            choices=["read", "publish", "write"],
            required=True,
            help="read: read only; publish: read, and post sources (for "
            "publishers); write: everything, in the domains it covers",
        )
        create.add_argument(
            "--domain",
            dest="domains",
            action="append",
            default=[],
            help="limit the token to this domain (repeatable; default: all domains)",
        )
        create.add_argument("--name", default="cli")
        actions.add_parser("list", help="list tokens (never their secrets)")
        revoke = actions.add_parser("revoke", help="revoke a token")
        revoke.add_argument("token", help="the token's id, prefix or the token itself")

    def handle(self, *args, action, **options):
        getattr(self, f"_{action}")(**options)

    def _create(self, *, scope, domains, name, **options):
        check = key_rule(100)
        for domain in domains:
            try:
                check(domain)
            except ValueError as exc:
                raise CommandError(f"--domain {domain!r} {exc}") from None
        token, raw = create_token(name=name, scope=scope, domains=domains)
        limited = ", ".join(token.domains) or "all domains"
        self.stderr.write(
            f"Created {scope} token {token.name!r} (id {token.pk}) for {limited}. "
            "It is shown once, below:"
        )
        self.stdout.write(raw)

    def _list(self, **options):
        for token in ApiToken.objects.all():
            state = "revoked" if token.revoked_at else "active"
            domains = ",".join(token.domains) or "*"
            self.stdout.write(
                f"{token.pk}\t{token.prefix}…\t{token.scope}\t{domains}\t{state}\t"
                f"{token.name}"
            )

    def _revoke(self, *, token, **options):
        matches = ApiToken.objects.filter(digest=digest(token)) or (
            ApiToken.objects.filter(pk=int(token))
            if token.isdigit()
            else ApiToken.objects.filter(prefix=token.rstrip("…"))
        )
        found = list(matches[:2])
        if len(found) != 1:
            raise CommandError(f"no single token matches {token!r}; see 'token list'")
        revoke_token(found[0])
        self.stdout.write(f"Revoked token {found[0].pk} ({found[0].name}).")
