"""Every remote call has a connect and a read timeout from config: what each site
type and the daemon's own peers (Redis, the PostgreSQL ledger) are given."""

from __future__ import annotations

from typing import Any

import pytest

from migratio.config import AwsSite, DaemonConfig, OpenStackSite, OpenStackSshSite
from migratio.drivers.aws.session import AwsClients
from migratio.ledger.urls import postgres_connect_args
from migratio.redis_link import RedisLink

SSH = {
    "type": "openstack-ssh",
    "host": "h",
    "user": "u",
    "key_file": "/k",
    "known_hosts": "/kh",
    "cloud": "c",
}


@pytest.mark.parametrize(
    "base",
    [{"type": "openstack", "cloud": "c"}, SSH, {"type": "aws", "region": "eu-west-1"}],
    ids=["openstack", "openstack-ssh", "aws"],
)
def test_timeout_is_the_default_of_connect_and_read_timeouts(base: dict[str, Any]) -> None:
    models: dict[str, type[OpenStackSite | OpenStackSshSite | AwsSite]] = {
        "openstack": OpenStackSite,
        "openstack-ssh": OpenStackSshSite,
        "aws": AwsSite,
    }
    model = models[base["type"]]
    default = model.model_validate(base)
    assert (default.timeout, default.connect_timeout, default.read_timeout) == (60, 60, 60)
    one = model.model_validate({**base, "timeout": 7})
    assert (one.connect_timeout, one.read_timeout) == (7, 7)
    both = model.model_validate({**base, "timeout": 7, "connect_timeout": 2, "read_timeout": 30})
    assert (both.timeout, both.connect_timeout, both.read_timeout) == (7, 2, 30)
    with pytest.raises(ValueError):
        model.model_validate({**base, "read_timeout": 0})


def test_botocore_gets_the_site_timeouts_and_attempts() -> None:
    site = AwsSite.model_validate(
        {
            "type": "aws",
            "region": "eu-west-1",
            "connect_timeout": 3,
            "read_timeout": 40,
            "request_attempts": 1,
        }
    )
    config = AwsClients("aws-t", site)._config("ebs")
    assert (config.connect_timeout, config.read_timeout) == (3, 40)
    assert config.retries == {"mode": "standard", "total_max_attempts": 1}


def test_daemon_defaults() -> None:
    daemon = DaemonConfig.model_validate({"name": "site-a", "work_dir": "/tmp/w"})
    assert daemon.stall_seconds == 120
    assert (daemon.redis_connect_timeout, daemon.redis_timeout) == (5, 10)


def test_redis_gets_both_timeouts() -> None:
    link = RedisLink("redis://127.0.0.1:1/0", read_timeout=12, connect_timeout=3)
    kwargs = link.client.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (3, 12)
    link.close()


def test_postgres_timeouts_are_defaults_the_url_can_override() -> None:
    args = postgres_connect_args({})
    assert args["connect_timeout"] == 10 and args["options"] == "-c statement_timeout=60000"
    mine = postgres_connect_args({"connect_timeout": "3", "options": "-c search_path=m"})
    assert "connect_timeout" not in mine
    assert mine["options"] == "-c search_path=m -c statement_timeout=60000"
    assert "options" not in postgres_connect_args({"options": "-c statement_timeout=5000"})
