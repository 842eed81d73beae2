"""The `botlnek` command line (SPEC §6)."""

import argparse
import asyncio
import json
import sys

from aggregates.client.http import BotlnekError, Client


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
        help="register a source",
        description="Register a source: botlnek post --domain d --aggregate a "
        "--collection A key=value … [--attr k=v …]",
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
        help="print every new version as one JSON line",
        description="Print each version frame (SPEC §4) as one JSON line; "
        "reconnects and resumes by itself.",
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
