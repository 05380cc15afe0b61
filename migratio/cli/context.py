"""What every command shares: the config it was given, the ledger, one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

from migratio.config_path import config_path
from migratio.errors import ConfigError, DependencyUnavailable, MigratioError, UsageError
from migratio.text import one_line, printable

if TYPE_CHECKING:
    from migratio.config import Settings
    from migratio.ledger.listing import Listing
    from migratio.ledger.store import Ledger

F = TypeVar("F", bound=Callable[..., Any])


# Exit codes, as documented in the README.
EXIT_FAILED = 1  # the operation failed
EXIT_USAGE = 2  # a bad command line or configuration
EXIT_UNAVAILABLE = 3  # a dependency (the ledger, Redis) cannot be reached
ERROR_LINE_LIMIT = 1000


def one_line_errors(func: F) -> F:
    """Operators get one clear line on stderr and an exit code, never a traceback
    (unless ``--debug``)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            context = click.get_current_context().find_object(Context)
            if context is not None and context.debug:
                raise
            line, code = _verdict(exc)
            # Bounded: a message may quote what the operator typed (a 10 KB argument).
            click.echo(f"migratio: {printable(one_line(line, ERROR_LINE_LIMIT))}", err=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]


def _verdict(exc: Exception) -> tuple[str, int]:
    if isinstance(exc, ConfigError):
        return f"config error: {exc}", EXIT_USAGE
    if isinstance(exc, UsageError):
        return f"usage error: {exc}", EXIT_USAGE
    if isinstance(exc, DependencyUnavailable):
        return str(exc), EXIT_UNAVAILABLE
    if isinstance(exc, MigratioError):
        return str(exc), EXIT_FAILED
    reason = one_line(f"{type(exc).__name__}: {exc}", 300)
    return f"internal error: {reason} (run with --debug for the traceback)", EXIT_FAILED


def json_option(func: F) -> F:
    """``--json``: machine-readable output, the same for every command."""
    return click.option("--json", "as_json", is_flag=True, help="machine-readable output")(func)


def config_option() -> click.Option:
    """``--config`` after the subcommand too (it wins over one before it)."""

    def remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        context = ctx.find_object(Context)
        if value and context is not None:
            context.use(value)

    return click.Option(
        ["--config"],
        metavar="PATH",
        expose_value=False,
        callback=remember,
        help="daemon config (also accepted before the command)",
    )


class Context:
    """The config path, the settings loaded on first use, and the ledger."""

    def __init__(self, explicit: str | None, *, debug: bool = False) -> None:
        self.path = config_path(explicit)
        self.debug = debug
        self._settings: Settings | None = None

    def use(self, explicit: str) -> None:
        """Another config file, given after the command."""
        self.path = config_path(explicit)
        self._settings = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from migratio.config import load_settings

            self._settings = load_settings(self.path)
        return self._settings

    def ledger(self) -> Ledger:
        from migratio.operations import open_ledger

        return open_ledger(self.settings)

    def existing_ledger(self) -> Ledger:
        """For read-only commands: never creates a ledger nor changes its schema
        (and writes nothing, so it needs no feedback hook)."""
        from migratio.ledger.store import Ledger

        return Ledger.open(self.settings.daemon.ledger_url, migrate=False)

    def listing(self) -> Listing:
        """For ``status``: the ledger read without SQLAlchemy (start-up time)."""
        from migratio.config_files import ledger_url
        from migratio.ledger.listing import Listing

        url = ledger_url(self.path) if self._settings is None else self.settings.daemon.ledger_url
        return Listing.open(url)

    def slots(self) -> dict[str, int]:
        """``max_concurrent`` per site, for ``status`` (the config read as YAML only)."""
        from migratio.config_files import site_slots

        return site_slots(self.path) if self._settings is None else self.settings.slots


pass_context = click.make_pass_decorator(Context)
