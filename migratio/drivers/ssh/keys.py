"""The keys of an SSH login: the external host's, checked against known_hosts, and
ours, loaded from the site's key_file.

The legacy tool accepted any host key. Here an unknown key is refused unless the
operator set ``accept_unknown_host_key`` (then it is recorded, so a later change
is refused), and a changed key is always refused — before authentication, so
nothing is sent to a host that is not the one known.
"""

from __future__ import annotations

import base64
import hashlib
import logging

import paramiko

from migratio.config import OpenStackSshSite
from migratio.errors import PermanentError

log = logging.getLogger(__name__)


class UnknownHostKey(PermanentError):
    """The external host offered a key that known_hosts does not list."""


class ChangedHostKey(PermanentError):
    """The external host offered a key other than the one known_hosts lists for it."""


class HostKeys:
    """The known_hosts file of one site, and what to do with a key it lacks."""

    def __init__(self, site_id: str, settings: OpenStackSshSite) -> None:
        self.site_id = site_id
        self.settings = settings

    def prepare(self, client: paramiko.SSHClient) -> None:
        """Load known_hosts into the client and set its policy for unknown keys."""
        path = self.settings.known_hosts
        try:
            client.load_host_keys(str(path))
        except FileNotFoundError:
            if not self.settings.accept_unknown_host_key:
                raise PermanentError(
                    self.message(f"known_hosts {path} does not exist; refusing to connect")
                ) from None
        except (OSError, paramiko.SSHException) as exc:
            raise PermanentError(
                self.message(f"cannot read known_hosts {path}: {reason(exc)}")
            ) from None
        policy = _RecordUnknownKey if self.settings.accept_unknown_host_key else _RefuseUnknownKey
        client.set_missing_host_key_policy(policy(self))

    def changed(self, address: str, exc: paramiko.BadHostKeyException) -> ChangedHostKey:
        return ChangedHostKey(
            self.message(
                f"the host key of {address} has CHANGED: known_hosts "
                f"{self.settings.known_hosts} lists {fingerprint(exc.expected_key)}, the "
                f"server offers {fingerprint(exc.key)}; refusing to connect (if the host "
                "was really re-keyed, replace its known_hosts entry)"
            )
        )

    def message(self, problem: str) -> str:
        return " ".join(f"site {self.site_id}: connect: {problem}".split())


def private_key(site_id: str, settings: OpenStackSshSite) -> paramiko.PKey:
    """The site's key_file, which must hold a private key without a passphrase."""
    path = settings.key_file
    where = f"site {site_id}: load key_file {path}"
    try:
        return paramiko.PKey.from_path(path)
    except OSError as exc:
        raise PermanentError(f"{where}: {exc.strerror or reason(exc)}") from None
    except TypeError:
        # cryptography's word for "encrypted, and no password given"
        raise PermanentError(
            f"{where}: the key is passphrase-protected; use a key without one"
        ) from None
    except (ValueError, paramiko.SSHException) as exc:
        raise PermanentError(f"{where}: not a usable private key ({reason(exc)})") from None


def fingerprint(key: paramiko.PKey) -> str:
    """As OpenSSH shows it: ``ssh-ed25519 SHA256:...``."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _RefuseUnknownKey(paramiko.MissingHostKeyPolicy):
    """paramiko's RejectPolicy, with a message that says what to do."""

    def __init__(self, keys: HostKeys) -> None:
        self._keys = keys

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise UnknownHostKey(
            self._keys.message(
                f"the host key of {hostname} ({fingerprint(key)}) is not in known_hosts "
                f"{self._keys.settings.known_hosts}; refusing to connect (add the host's "
                "key there, or set accept_unknown_host_key)"
            )
        )


class _RecordUnknownKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use, only when the operator asked for it: the key is appended
    to known_hosts, so a later change is refused."""

    def __init__(self, keys: HostKeys) -> None:
        self._keys = keys

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        path = self._keys.settings.known_hosts
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="ascii") as known:
            known.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning(
            "site %s: accepted the unknown host key of %s (%s) and recorded it in %s",
            self._keys.site_id,
            hostname,
            fingerprint(key),
            path,
        )
