"""Writing the bed's files: private ones (holding passwords) and client-facing ones."""

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only: it may hold the bed's passwords.

    The file is created 0600 before any byte is written, never chmod-ed after.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(text)


def write_yaml(path: Path, data: Mapping[str, Any], *, private: bool = False) -> None:
    """Write ``data`` as block-style YAML, keeping key order as given."""
    text = yaml.safe_dump(dict(data), default_flow_style=False, sort_keys=False)
    if private:
        write_private(path, text)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def write_ini(path: Path, sections: Mapping[str, Mapping[str, object]]) -> None:
    """Write an oslo.config / paste style INI file (private: service passwords live there).

    Hand-rolled instead of configparser so keys keep their case and order.
    """
    lines: list[str] = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in options.items())
        lines.append("")
    write_private(path, "\n".join(lines))


def write_env(path: Path, variables: Mapping[str, str]) -> None:
    """Write shell ``export`` lines that ``. DIR/env`` can source."""
    text = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())
    path.write_text(text)
