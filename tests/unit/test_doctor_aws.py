"""The AWS checks' reading of dry-run answers: allowed, denied, or cannot tell."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import botocore.exceptions as boto
import botocore.parsers
import pytest

from migratio.config import AwsSite
from migratio.doctor.aws_site import AwsProbe
from migratio.doctor.result import Status
from migratio.errors import TransientError


def _answer(code: str, status: int, message: str = "") -> boto.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return boto.ClientError(response, "RegisterImage")


def _probe() -> AwsProbe:
    probe = AwsProbe("aws-x", AwsSite(type="aws", region="eu-west-1"), 5)
    probe.clients = SimpleNamespace(ec2=object())  # type: ignore[assignment]
    return probe


def _raising(error: BaseException) -> Any:
    def call(_ec2: object) -> None:
        raise error

    return call


@pytest.mark.parametrize(
    ("error", "status", "words"),
    [
        (_answer("DryRunOperation", 412), Status.OK, "allowed (dry run)"),
        (
            _answer("UnauthorizedOperation", 403, "You are not authorized"),
            Status.FAIL,
            "not allowed: UnauthorizedOperation (HTTP 403): You are not authorized",
        ),
        (_answer("AuthFailure", 401), Status.FAIL, "credentials refused: AuthFailure"),
        (
            _answer("InvalidSnapshot.NotFound", 400),
            Status.WARN,
            "cannot check: the endpoint answered InvalidSnapshot.NotFound (HTTP 400)",
        ),
        (
            _answer("500", 500, "<!doctype html><html><title>500</title></html>"),
            Status.WARN,
            "cannot check: the endpoint answered 500 (HTTP 500), not a dry run",
        ),
        (
            botocore.parsers.ResponseParserError("not XML"),
            Status.WARN,
            "cannot check: the endpoint's answer to a dry run is not EC2's",
        ),
    ],
)
def test_dry_run_answers(error: BaseException, status: Status, words: str) -> None:
    verdict = _probe()._dry_run(_raising(error))
    assert verdict.status is status
    assert words in verdict.detail


def test_an_ignored_dry_run_is_ok_only_for_a_read() -> None:
    assert _probe()._dry_run(lambda _ec2: {}, read_only=True).status is Status.OK
    assert _probe()._dry_run(lambda _ec2: {}).status is Status.WARN


def test_an_unreachable_endpoint_is_an_error_not_a_verdict() -> None:
    error = boto.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    with pytest.raises(TransientError, match="site aws-x: dry run: EndpointConnectionError"):
        _probe()._dry_run(_raising(error))


def test_sharing_and_copies_add_their_permission_checks() -> None:
    plain = AwsProbe("aws-x", AwsSite(type="aws", region="eu-west-1"), 5)
    distributing = AwsProbe(
        "aws-x",
        AwsSite(
            type="aws",
            region="eu-west-1",
            share_with=("210987654321",),
            copy_to_regions=("eu-central-1", "us-east-1"),
        ),
        5,
    )
    added = set(distributing.permissions()) - set(plain.permissions())
    assert added == {
        "ModifyImageAttribute",
        "ModifySnapshotAttribute",
        "CopyImage to eu-central-1",
        "CopyImage to us-east-1",
    }
