"""AWS failures as migratio's typed errors: retry what can pass, fail what cannot.

botocore reports transport trouble as ``BotoCoreError`` subclasses and service
answers as ``ClientError`` with an error code and an HTTP status. Both are
turned into one-line ``TransientError``/``PermanentError`` messages that name
the site and the action, never credentials.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import botocore.exceptions as boto
import botocore.parsers

from migratio.errors import MigratioError, MigrationError, NotFound, PermanentError, TransientError
from migratio.text import error_text, one_line

# Codes AWS uses for "slow down": some arrive as HTTP 400, so the status alone
# does not tell (EBS direct's RequestThrottledException, EC2's RequestLimitExceeded).
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
    }
)

# Codes meaning "that resource does not exist" across EC2, EBS direct and S3.
NOT_FOUND_CODES = frozenset(
    {
        "InvalidSnapshot.NotFound",
        "InvalidAMIID.NotFound",
        "InvalidAMIID.Unavailable",
        "ResourceNotFoundException",
        "NoSuchKey",
        "NoSuchUpload",
        "NoSuchBucket",
        "InvalidConversionTaskId",
        "InvalidConversionTaskId.Malformed",
        "NotFound",
        "404",
    }
)

# Transport failures: the endpoint is down, slow or cut the connection.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    boto.EndpointConnectionError,
    boto.ConnectionClosedError,
    boto.ConnectTimeoutError,
    boto.ReadTimeoutError,
    boto.ProxyConnectionError,
    boto.HTTPClientError,
    boto.IncompleteReadError,
    boto.ResponseStreamingError,
    # moto and proxies answer some errors with an HTML page instead of XML/JSON.
    botocore.parsers.ResponseParserError,
    OSError,
)

# What no retry can fix: missing or unusable credentials, a request we built wrong.
CONFIGURATION_ERRORS: tuple[type[BaseException], ...] = (
    boto.NoCredentialsError,
    boto.PartialCredentialsError,
    boto.ProfileNotFound,
    boto.NoRegionError,
    boto.ParamValidationError,
    boto.CredentialRetrievalError,
    boto.ConfigParseError,
)


def error_code(exc: boto.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def http_status(exc: boto.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_not_found(exc: boto.ClientError) -> bool:
    return error_code(exc) in NOT_FOUND_CODES or http_status(exc) == 404


def error_for(exc: boto.ClientError, where: str) -> MigrationError:
    """The typed error for an AWS error answer: 5xx and throttling are worth retrying."""
    code = error_code(exc)
    status = http_status(exc)
    message = str(exc.response.get("Error", {}).get("Message") or "")
    text = one_line(f"{where}: {code or 'error'} (HTTP {status}): {message}".rstrip(": "))
    if is_not_found(exc):
        return NotFound(text)
    if status >= 500 or status in (408, 429) or code in THROTTLING_CODES:
        return TransientError(text)
    return PermanentError(text)


@contextmanager
def translated(site_id: str, action: str) -> Iterator[None]:
    """Turn botocore's exceptions into migratio's typed, one-line errors."""
    where = f"site {site_id}: {action}"
    try:
        yield
    except MigratioError:
        raise
    except boto.ClientError as exc:
        raise error_for(exc, where) from exc
    except CONFIGURATION_ERRORS as exc:
        raise PermanentError(one_line(f"{where}: {error_text(exc)}")) from exc
    except TRANSPORT_ERRORS as exc:
        raise TransientError(one_line(f"{where}: {error_text(exc)}")) from exc
    except boto.BotoCoreError as exc:
        raise PermanentError(one_line(f"{where}: {error_text(exc)}")) from exc
