"""What every command shares: the config it was given, the ledger, one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import click

from migratio import config
from migratio.errors import ConfigError, MigratioError, UsageError
from migratio.text import printable

if TYPE_CHECKING:
    from migratio.ledger.store import Ledger

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(func: F) -> F:
    """Operators get one clear line on stderr and an exit code, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"migratio: config error: {printable(exc)}", err=True)
            sys.exit(2)
        except UsageError as exc:
            click.echo(f"migratio: usage error: {printable(exc)}", err=True)
            sys.exit(2)
        except MigratioError as exc:
            click.echo(f"migratio: {printable(exc)}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


class Context:
    """The config path, the settings loaded on first use, and the ledger."""

    def __init__(self, config_path: str | None) -> None:
        self.path = config.config_path(config_path)
        self._settings: config.Settings | None = None

    @property
    def settings(self) -> config.Settings:
        if self._settings is None:
            self._settings = config.load_settings(self.path)
        return self._settings

    def ledger(self) -> Ledger:
        from migratio.operations import open_ledger

        return open_ledger(self.settings)

    def existing_ledger(self) -> Ledger:
        """For read-only commands: never creates a ledger nor changes its schema."""
        from migratio.operations import open_ledger

        return open_ledger(self.settings, migrate=False)


pass_context = click.make_pass_decorator(Context)
