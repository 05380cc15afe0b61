"""``testbed up|down|status DIR``, ``testbed stop|start DIR SERVICE``: parsing and printing."""

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .bed import down, load, status, up
from .errors import TestbedError
from .services import start_service, stop_service


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status (0 ok, 1 error, 3 not running)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # `testbed up DIR | head -1`: the reader left early; the command itself worked.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description="Two real clouds (a Keystone and a Glance each) on loopback, state in DIR.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start a bed in DIR (returns when ready; no-op if already running)"),
        ("down", "stop what `up` started in DIR"),
        ("status", "show whether DIR's servers run"),
    ):
        commands.add_parser(name, help=text).add_argument("dir", type=Path, metavar="DIR")
    for name, text in (
        ("stop", "stop one service of DIR's bed (state kept): keystone-site-a, glance-site-a, ..."),
        ("start", "start a stopped service of DIR's bed again (returns when ready)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("dir", type=Path, metavar="DIR")
        command.add_argument("service", metavar="SERVICE")
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        if args.command == "up":
            bed = up(args.dir)
            elapsed = time.monotonic() - started
            if bed.reused:
                print(f"testbed already running in {bed.dir}")
            else:
                print(f"testbed up in {elapsed:.1f} s: {bed.dir}")
            for site, url in bed.glance_urls.items():
                print(f"  keystone  {bed.keystone_urls.get(site, bed.keystone_url)}  ({site})")
                print(f"  glance    {url}  ({site})")
            if bed.moto_url:
                print(f"  moto      {bed.moto_url}  (aws-a)")
            print(f"  source {bed.dir / 'env'}")
        elif args.command == "stop":
            stop_service(args.dir, args.service)
            print(f"{args.service} stopped in {time.monotonic() - started:.1f} s")
        elif args.command == "start":
            start_service(args.dir, args.service)
            print(f"{args.service} started in {time.monotonic() - started:.1f} s")
        elif args.command == "down":
            down(args.dir)
            print(f"testbed down in {time.monotonic() - started:.1f} s: {args.dir.resolve()}")
        else:
            return _print_status(args.dir)
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_status(directory: Path) -> int:
    servers = status(directory)
    if not servers:
        print(f"no testbed running in {directory.resolve()}")
        return 3
    bed = load(directory)
    urls: dict[str, str] = {}
    if bed:
        urls |= {f"keystone-{site}": url for site, url in bed.keystone_urls.items()}
        urls |= {f"glance-{site}": url for site, url in bed.glance_urls.items()}
        urls["moto"] = bed.moto_url
    for name, running in servers.items():
        state = "running" if running else "stopped"
        print(f"{name:<15} {state:<8} {urls.get(name, '')}".rstrip())
    return 0 if all(servers.values()) else 3
