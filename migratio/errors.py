"""Typed errors: the supervisor decides retry versus fail by type, never by message."""

from __future__ import annotations


class MigratioError(Exception):
    """Base of every error migratio raises on purpose."""


class ConfigError(MigratioError):
    """A configuration file is missing or invalid; names the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")


class UsageError(MigratioError):
    """The command line asks for what cannot be: an unknown site, a malformed id."""


class DependencyUnavailable(MigratioError):
    """Something migratio needs cannot be reached now (the ledger, Redis): the
    command can work once it is back (the CLI exits 3)."""


class RedisUnavailable(DependencyUnavailable):
    """Redis cannot be reached."""


class LedgerError(MigratioError):
    """The ledger failed a request: a write it refuses (a value it cannot store) or
    a fault of its own. Retrying the same request is unlikely to help.

    The message is for operators; ``reason`` is the database's own words, on one
    line, for log lines that already say it was the ledger.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class LedgerUnavailable(LedgerError, DependencyUnavailable):
    """The ledger cannot be opened or reached (no file yet, a database that is down);
    waiting for it can help."""


class JobConflict(LedgerError):
    """Another consumer recorded one of the same job ids at the same moment: recording
    the jobs again finds it and acknowledges the job as a duplicate."""


class MigrationError(MigratioError):
    """A step of a migration could not be completed."""


class TransientError(MigrationError):
    """Worth retrying later: connection refused, timeouts, HTTP 5xx."""


class Stalled(TransientError):
    """A transfer moved nothing for ``stall_seconds``; it was aborted (its connections
    cut) and is retried like any transient error, resuming where the ledger says."""


class WorkDirFull(TransientError):
    """The work dir ran out of space (or quota) while writing; space may free up."""


class PermanentError(MigrationError):
    """Retrying cannot help: missing image, unsafe image, HTTP 4xx."""


class NotFound(PermanentError):
    """The site says what was asked for does not exist (or is not visible to our
    credentials); drivers turn it into None, success or ImageNotFound as fits."""


class ImageNotFound(NotFound):
    """The source image does not exist (or is not visible to our credentials)."""


class UnsafeImage(PermanentError):
    """The image bytes are unsafe to process (backing file, data file, format mismatch)."""


class IntegrityError(PermanentError):
    """Bytes at the destination differ from what was sent."""


class StepInterrupted(MigratioError):
    """A running step stopped at a checkpoint (shutdown, lost lease or cancel request)."""


class CancelRequested(StepInterrupted):
    """The operator asked to cancel the migration."""


class LeaseLost(StepInterrupted):
    """Another process now holds the migration: stop touching it."""


class ShuttingDown(StepInterrupted):
    """The daemon is stopping; the step will be resumed from its recorded state."""


class IllegalTransition(MigratioError):
    """The state machine refused a transition."""


class UnknownMigration(MigratioError):
    """No migration with that id in the ledger."""
