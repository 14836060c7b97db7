"""A kernel source package through apt: a private index, the exact URL and SHA256, unpacking.

The private configuration lives in the cache and never touches the machine's apt sources;
it works without root because every directory apt writes to is the user's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional
from urllib.parse import unquote

from memuse_kit.core import atomic
from memuse_kit.core.errors import KitError
from memuse_kit.core.runner import Runner
from memuse_kit.trees.download import Unreachable

APT_ENV = {"LC_ALL": "C"}  # apt's messages are parsed below
_URI_LINE = re.compile(r"^'(\S+)' (\S+) (\d+) SHA256:([0-9a-fA-F]{64})\s*$", re.MULTILINE)
_FAILED_FETCH = re.compile(r"Failed to fetch (\S+)\s+(.*)")
_UNREACHABLE = (
    ("Could not resolve", "host name not found"),
    ("Temporary failure resolving", "host name not found"),
    ("Could not connect", "cannot connect"),
    ("Connection refused", "cannot connect"),
    ("Connection timed out", "timed out"),
    ("Network is unreachable", "network unreachable"),
)


@dataclass(frozen=True)
class AptPackage:
    url: str
    filename: str
    size: int
    sha256: str

    @property
    def version(self) -> str:
        # apt names downloads package_version_arch.deb, with an epoch's ':' as %3a
        return unquote(self.filename.split("_")[1])


class Apt:
    """apt-get on a private configuration under state, or the system's when lines is None."""

    def __init__(
        self,
        runner: Runner,
        state: Path,
        lines: Optional[List[str]],
        *,
        options: str = "",
        architecture: str = "amd64",
        retries: int = 3,
    ) -> None:
        self.runner = runner
        self.state = state
        self.lines = lines
        self.options = options
        self.architecture = architecture
        self.retries = retries

    @property
    def private(self) -> bool:
        return self.lines is not None

    def _where(self) -> str:
        return " + ".join(self.lines) if self.lines else "this system's apt sources"

    def config(self) -> List[str]:
        if not self.private:
            return []
        settings = {
            "Dir::Etc::SourceList": str(self.state / "sources.list"),
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": "/dev/null",
            "Dir::State::Lists": str(self.state / "lists"),
            "Dir::Cache": str(self.state / "cache"),
            "Dir::State::status": "/dev/null",
            "APT::Architecture": self.architecture,
            "APT::Architectures": self.architecture,
            "Acquire::Languages": "none",
            "Acquire::Retries": str(self.retries),
            # a failed index download is an error, not a warning with stale lists
            "APT::Update::Error-Mode": "any",
        }
        if os.geteuid() == 0:
            # apt would drop to _apt, which cannot write into root's cache directory
            settings["APT::Sandbox::User"] = "root"
        return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]

    def _prepare(self) -> None:
        assert self.lines is not None
        keyring = re.search(r"signed-by=(\S+)", self.options)
        if keyring and not Path(keyring.group(1)).is_file():
            raise KitError(
                f"{keyring.group(1)} is missing: install the debian-archive-keyring package"
            )
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        prefix = f"deb [{self.options}] " if self.options else "deb "
        text = "".join(f"{prefix}{line}\n" for line in self.lines)
        atomic.write_if_changed(self.state / "sources.list", text.encode())

    def has_index(self) -> bool:
        """Whether an earlier update left a private index that locate() can use offline."""
        lists = self.state / "lists"
        return self.private and lists.is_dir() and any(lists.glob("*_Packages*"))

    def update(self) -> None:
        """Refresh the private index (the system's is left to the system)."""
        if not self.private:
            return
        self._prepare()
        cmd = ["apt-get", *self.config(), "update"]
        result = self.runner.run(cmd, env=APT_ENV, check=False)
        output = f"{result.stdout}\n{result.stderr}"
        if result.returncode == 0 and "Failed to fetch" not in output:
            return
        failed = _FAILED_FETCH.search(output)
        if failed:
            for pattern, reason in _UNREACHABLE:
                if pattern in failed.group(2):
                    raise Unreachable(failed.group(1), reason)
            raise KitError(f"apt-get update: {failed.group(1)}: {failed.group(2).strip()}")
        raise KitError(f"apt-get update for {self._where()} failed: {_last_line(output)}")

    def locate(self, package: str) -> AptPackage:
        """The URL, size and SHA256 (from the signed index) of package's newest version."""
        cmd = ["apt-get", *self.config(), "download", "--print-uris", package]
        result = self.runner.run(cmd, env=APT_ENV, check=False, mutates=False)
        found = _URI_LINE.search(result.stdout)
        if result.returncode == 0 and found:
            url, filename, size, sha256 = found.groups()
            return AptPackage(url, filename, int(size), sha256.lower())
        output = f"{result.stdout}\n{result.stderr}"
        if "Unable to locate package" in output or "has no installation candidate" in output:
            hint = "" if self.private else "; run sudo apt-get update"
            raise KitError(f"no package {package} in {self._where()}{hint}")
        raise KitError(f"apt-get download --print-uris {package} failed: {_last_line(output)}")


def unpack_deb(runner: Runner, deb: Path, staging: Path, package: str) -> Path:
    """Unpack deb under staging; returns the source tarball it carries (usr/src/.../PKG.tar.*)."""
    target = staging / "deb"
    runner.run(["dpkg-deb", "-x", str(deb), str(target)])
    found = sorted(target.glob(f"usr/src/**/{package}.tar*"))
    if not found:
        raise KitError(f"{deb.name} holds no usr/src/{package}.tar.*: not a kernel source package")
    return found[0]


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"
