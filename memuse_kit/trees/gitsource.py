"""A plain source tree from one git tag (GitPython shallow clone), and its Ubuntu version."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path
from typing import Optional, TextIO
from urllib.parse import urlsplit
from urllib.request import getproxies

import git

from memuse_kit.core.errors import KitError
from memuse_kit.trees.download import TransferProgress, Unreachable

_UNREACHABLE = (
    ("Could not resolve host", "host name not found"),
    ("Couldn't connect to server", "cannot connect"),
    ("Failed to connect", "cannot connect"),
    ("Connection timed out", "timed out"),
    ("Operation timed out", "timed out"),
    ("does not appear to be a git repository", "no git repository there"),
    ("Could not read from remote repository", "cannot read the repository"),
    ("unable to access", "cannot access"),
)
_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22}
PROBE_TIMEOUT = 10.0
# abort a clone that stalls below 1 kB/s for a minute
_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
    "GIT_HTTP_LOW_SPEED_TIME": "60",
}
# the stages that take time on the client; counting and compressing are the server's
_STAGES = {
    git.RemoteProgress.RECEIVING: "receiving objects",
    git.RemoteProgress.RESOLVING: "resolving deltas",
    git.RemoteProgress.CHECKING_OUT: "checking out files",
}


class _Progress(git.RemoteProgress):
    """git's progress, one TransferProgress per stage."""

    def __init__(self, label: str, out: Optional[TextIO]) -> None:
        super().__init__()
        self.label = label
        self.out = out
        self.stage: Optional[int] = None
        self.current: Optional[TransferProgress] = None

    def update(
        self,
        op_code: int,
        cur_count: object,
        max_count: object = None,
        message: str = "",
    ) -> None:
        stage = op_code & self.OP_MASK
        if stage not in _STAGES:
            return
        if stage != self.stage or self.current is None:
            self.close()
            self.stage = stage
            total = int(float(str(max_count))) if max_count else None
            self.current = TransferProgress(
                f"{self.label}: {_STAGES[stage]}", total, unit="objects", out=self.out
            )
        self.current.update(int(float(str(cur_count))) - self.current.done)

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


def clone_tag(url: str, tag: str, dest: Path, out: Optional[TextIO] = None) -> str:
    """Put tag's files (depth 1) in dest, without .git; returns the tag's commit.

    .git goes because a kernel tree inside a git repository gets "+" or a commit hash
    appended to its release by scripts/setlocalversion, and the packages would not match.
    """
    probe(url)
    progress = _Progress("git clone", out)
    try:
        repo = git.Repo.clone_from(
            url,
            dest,
            progress=progress,  # type: ignore[arg-type]  # GitPython takes RemoteProgress
            env=_GIT_ENV,
            depth=1,
            branch=tag,
            single_branch=True,
        )
    except git.GitCommandError as error:
        # with a progress handler, git's messages land in it rather than in the error
        said = "\n".join([*progress.error_lines, *progress.other_lines, str(error.stderr)])
        raise _clone_error(url, tag, said) from None
    finally:
        progress.close()
    commit = repo.head.commit.hexsha
    repo.close()
    shutil.rmtree(dest / ".git")
    return commit


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast with Unreachable when url's host takes no connections.

    git itself may wait minutes for a host whose packets are dropped.
    """
    parts = urlsplit(url)
    port = parts.port or _PORTS.get(parts.scheme)
    if not parts.hostname or port is None or getproxies().get(parts.scheme):
        return  # file:// and local paths; behind a proxy only git can tell
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except socket.gaierror:
        raise Unreachable(url, "host name not found") from None
    except socket.timeout:
        raise Unreachable(url, "timed out") from None
    except OSError as error:
        raise Unreachable(url, (error.strerror or "cannot connect").lower()) from None


def _clone_error(url: str, tag: str, stderr: str) -> KitError:
    if "not found in upstream origin" in stderr or "Remote branch" in stderr:
        return KitError(f"{url} has no tag {tag}; check the tag in memuse_kit/data/sources.toml")
    for pattern, reason in _UNREACHABLE:
        if pattern in stderr:
            return Unreachable(url, reason)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1].rstrip("'") if lines else ""  # GitPython quotes stderr: "stderr: '...'"
    return KitError(f"git clone of {url} failed: {last[:200]}")


def changelog_version(tree: Path) -> Optional[str]:
    """The version at the top of an Ubuntu tree's changelog (debian/debian.env names its dir)."""
    directory = "debian"
    env = tree / "debian" / "debian.env"
    if env.is_file():
        match = re.search(r"^DEBIAN=(\S+)", env.read_text(errors="replace"), re.MULTILINE)
        if match:
            directory = match.group(1)
    changelog = tree / directory / "changelog"
    if not changelog.is_file():
        return None
    first = changelog.read_text(errors="replace").split("\n", 1)[0]
    match = re.match(r"^\S+ \(([^)\s]+)\)", first)
    return match.group(1) if match else None
