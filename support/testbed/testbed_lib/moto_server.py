"""moto in server mode on loopback: the bed's AWS region, with the files that point at it.

``moto_server`` runs as a bed server (``processes.spawn``), so ``down`` stops it
like the others. It keeps everything in memory (EBS snapshot blocks, and S3
objects when they are completed or read), so tests keep objects small.

Credentials are dummies, written once to ``DIR/aws/credentials`` under a
profile that the site file names; the site file itself holds no keys, as in
production. ``DIR/env`` points boto3 at those files.
"""

import secrets
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from . import files
from .processes import Server, spawn, system_env, wait_http

SITE_ID = "aws-a"
REGION = "eu-west-1"
PROFILE = "migratio-testbed"


@dataclass(frozen=True)
class MotoLayout:
    """Where moto keeps its temporary files and log, and where it listens."""

    dir: Path
    logs: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.logs / "moto.log"


def start_moto(layout: MotoLayout, mark: str, timeout: float = 30.0) -> Server:
    """Start ``moto_server`` from this Python's moto; return once it answers."""
    tmp = layout.dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = system_env(
        {
            # Otherwise ~1,300 stock AMIs and snapshots appear in every listing.
            "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
            # moto spools S3 objects over ~5 MiB to temporary files.
            "TMPDIR": str(tmp),
        }
    )
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(layout.port)]
    server = spawn("moto", argv, layout.log, mark=mark, env=env)
    wait_http(server, f"{layout.url}/moto-api/", timeout)
    return server


def write_aws_files(directory: Path, sites_dir: Path, moto_url: str) -> dict[str, str]:
    """Write the dummy credentials, the profile and the ``aws-a`` site file;
    return the environment variables that point boto3 at them."""
    aws_dir = directory / "aws"
    credentials = aws_dir / "credentials"
    config = aws_dir / "config"
    # moto takes any keys; these look like real ones so that the secrets grep
    # (and the log redaction) meet the shapes a real deployment has.
    key_id = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))
    secret = "".join(secrets.choice(string.ascii_letters + string.digits + "/+") for _ in range(40))
    files.write_private(
        credentials,
        f"[{PROFILE}]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n",
    )
    files.write_private(config, f"[profile {PROFILE}]\nregion = {REGION}\n")
    files.write_yaml(
        sites_dir / f"{SITE_ID}.yml",
        {
            "type": "aws",
            "region": REGION,
            "endpoint_url": moto_url,
            "profile": PROFILE,
        },
    )
    return {
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(config),
        "MIGRATIO_MOTO_URL": moto_url,
    }
