"""The `botlnek` command line (docs/cli.md)."""

import argparse
import asyncio
import json
import sys
from pathlib import Path

from aggregates.client.http import BotlnekError, Client
from aggregates.client.rule_watch import RuleWatcher
from aggregates.client.watch import Watcher
from aggregates.conditions import ConditionError


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"botlnek: {flag} expects key=value, not {value!r}")
        pairs[key] = item
    return pairs


def _post(args: argparse.Namespace) -> int:
    client = Client(args.url, args.token)
    answer = client.post(
        args.domain,
        args.aggregate,
        args.collection,
        keys=_pairs(args.keys, "keys"),
        attrs=_pairs(args.attr, "--attr"),
    )
    print(json.dumps(answer), flush=True)
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    client = Client(args.url, args.token)

    async def run() -> None:
        async for frame in client.subscribe(
            args.domain,
            args.aggregate,
            after_position=args.after_position,
            mode=args.mode,
        ):
            print(json.dumps(frame, ensure_ascii=False), flush=True)

    asyncio.run(run())
    return 0


def _watch(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("botlnek: watch needs a command after --", file=sys.stderr)
        return 2
    if args.rule:
        watcher = RuleWatcher(
            Client(args.url, args.token),
            domain=args.domain,
            rule=args.rule,
            command=command,
            name=args.name,
            timeout=args.timeout,
            retries=args.retries,
            from_start=args.from_start,
            lease_seconds=args.lease,
        )
        asyncio.run(watcher.run())
        return 0
    try:
        watcher = Watcher(
            Client(args.url, args.token),
            domain=args.domain,
            when=args.when,
            command=command,
            every=args.every,
            state_file=Path(args.state_file or f"botlnek-watch-{args.name}.json"),
            from_start=args.from_start,
            name=args.name,
            timeout=args.timeout,
            aggregate_prefix=args.aggregate_prefix,
        )
    except ConditionError as exc:
        print(f"botlnek: bad --when: {exc}", file=sys.stderr)
        return 2
    asyncio.run(watcher.run())
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="server URL (default: $BOTLNEK_URL, else http://127.0.0.1:8000)"
    )
    common.add_argument("--token", help="API token (default: $BOTLNEK_TOKEN)")

    root = argparse.ArgumentParser(
        prog="botlnek", description="Publish to and read from a Botlnek server."
    )
    commands = root.add_subparsers(dest="command", required=True)
    post = commands.add_parser(
        "post",
        parents=[common],
        help="register a source (a publish or write token)",
        description="Register a source: botlnek post --domain d --aggregate a "
        "--collection A key=value … [--attr k=v …]. Needs a publish (or write) "
        "token for the domain.",
    )
    post.add_argument("--domain", required=True)
    post.add_argument("--aggregate", required=True)
    post.add_argument("--collection", required=True)
    post.add_argument("keys", nargs="*", metavar="key=value")
    post.add_argument("--attr", action="append", default=[], metavar="k=v")
    post.set_defaults(run=_post)

    subscribe = commands.add_parser(
        "subscribe",
        parents=[common],
        help="print every new version as one JSON line (any token)",
        description="Print each version frame as one JSON line; "
        "reconnects and resumes by itself. Any token that covers the domain.",
    )
    subscribe.add_argument("--domain", required=True)
    subscribe.add_argument("--aggregate")
    subscribe.add_argument(
        "--after-position",
        type=int,
        help="start after this domain position (default: only what comes next)",
    )
    subscribe.add_argument("--mode", choices=["full", "delta"], default="full")
    subscribe.set_defaults(run=_subscribe)

    watch = commands.add_parser(
        "watch",
        parents=[common],
        help="run a command when an aggregate is ready",
        description="Run CMD for each aggregate whose state satisfies --when: once "
        "(the default) or on every new version that satisfies it; or, with --rule, "
        "for each event of a rule the server evaluates. Needs a token that "
        "covers the domain; recording receipts (and --rule's lease) needs write.",
    )
    watch.add_argument("--domain", required=True)
    condition = watch.add_mutually_exclusive_group(required=True)
    condition.add_argument("--when", help="e.g. 'A >= 1 and B >= 1'")
    condition.add_argument(
        "--rule",
        help="run CMD for each 'fired' event of this rule; resumes from the "
        "receipts of --name, keeps no state file",
    )
    watch.add_argument(
        "--retries",
        type=int,
        default=3,
        help="with --rule: run a failing CMD again up to K times (default 3)",
    )
    watch.add_argument(
        "--lease",
        type=int,
        default=30,
        help="with --rule: seconds a watcher of this --name that dies keeps "
        "another from taking over (default 30, at least 5)",
    )
    once_or_every = watch.add_mutually_exclusive_group()
    once_or_every.add_argument("--once", action="store_true", help="(the default)")
    once_or_every.add_argument("--every", action="store_true")
    watch.add_argument("--state-file", help="default ./botlnek-watch-<name>.json")
    watch.add_argument("--from-start", action="store_true")
    watch.add_argument("--name", default="watch")
    watch.add_argument("--timeout", type=float, help="kill CMD after S seconds")
    watch.add_argument("--aggregate-prefix", default="")
    watch.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD")
    watch.set_defaults(run=_watch)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except BotlnekError as exc:
        print(f"botlnek: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
