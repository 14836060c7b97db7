"""Offline stand-ins for fetch tests: an HTTP server in the test process that can misbehave,
a kernel.org-like directory, a Debian-like apt archive signed with a throwaway key (apt checks
it through signed-by, as it checks Debian's) and a git repository with a tag."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from memuse_kit.trees.sources import Coordinates, Debian, GitSource, KernelOrg
from tests.fakelinux import make_fake_tree

# How a route answers: "ok" honours Range; "no-range" always sends the whole file;
# "truncate" promises the whole file in Content-Length and closes halfway;
# "truncate-once" does that on its first request only, then behaves as "ok".
MODES = ("ok", "no-range", "truncate", "truncate-once")


@dataclass
class Request:
    path: str
    range: Optional[str]
    status: int
    sent: int


@dataclass
class Route:
    data: bytes
    mode: str = "ok"
    served: int = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path.split("?")[0])
        wanted = self.headers.get("Range")
        if route is None:
            self._answer(404, b"not found", wanted)
            return
        route.served += 1
        mode = route.mode
        if mode == "truncate-once" and route.served > 1:
            mode = "ok"
        start = _range_start(wanted) if mode == "ok" else None
        if start is not None and start >= len(route.data):
            self._answer(416, b"", wanted)
        elif start is not None:
            body = route.data[start:]
            extra = {"Content-Range": f"bytes {start}-{len(route.data) - 1}/{len(route.data)}"}
            self._answer(206, body, wanted, extra)
        elif mode.startswith("truncate"):
            self._answer(200, route.data, wanted, send=len(route.data) // 2)
        else:
            self._answer(200, route.data, wanted)

    def _answer(
        self,
        status: int,
        body: bytes,
        wanted: Optional[str],
        headers: Optional[Dict[str, str]] = None,
        send: Optional[int] = None,
    ) -> None:
        chunk = body if send is None else body[:send]
        # logged before the client can see the answer, so tests never race the server
        self.server.log.append(Request(self.path, wanted, status, len(chunk)))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(chunk)
        self.wfile.flush()
        if send is not None:
            self.close_connection = True


def _range_start(header: Optional[str]) -> Optional[int]:
    if not header or not header.startswith("bytes="):
        return None
    return int(header[len("bytes=") :].split("-")[0])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: Dict[str, Route]
    log: List[Request]


class FileServer:
    """http.server in a thread; add(path, data, mode) publishes a file."""

    def __init__(self) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.routes = {}
        self.httpd.log = []
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def log(self) -> List[Request]:
        return self.httpd.log

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, data: bytes, mode: str = "ok") -> str:
        assert mode in MODES
        self.httpd.routes[path] = Route(data, mode)
        return self.url(path)

    def requests_for(self, path: str) -> List[Request]:
        return [r for r in self.log if r.path == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url(path: str = "/file") -> str:
    """A URL on localhost where nothing listens: connection refused, at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kernel_tarball(tmp: Path, top: str, version: str) -> bytes:
    """A .tar.xz whose one top directory is a small fake kernel tree."""
    tree = make_fake_tree(tmp / "src" / top, version=version, last=471)
    out = tmp / f"{top}.tar.xz"
    with tarfile.open(out, "w:xz") as tar:
        tar.add(tree, arcname=top)
    return out.read_bytes()


def source_deb(tmp: Path, package: str, version: str, tarball: bytes) -> bytes:
    """A linux-source-like .deb carrying usr/src/PACKAGE.tar.xz."""
    root = tmp / f"deb-{package}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "src").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: memuse-kit tests <tests@example.org>\nDescription: test kernel source\n"
    )
    (root / "usr" / "src" / f"{package}.tar.xz").write_bytes(tarball)
    out = tmp / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zxz", str(root), str(out)], check=True, capture_output=True)
    return out.read_bytes()


@dataclass(frozen=True)
class ArchiveKey:
    """A throwaway OpenPGP signing key: its gpg home, and its public key for signed-by."""

    home: Path
    keyring: Path

    def gpg(self, *args: str, data: Optional[bytes] = None) -> bytes:
        command = ["gpg", "--batch", "--quiet", "--homedir", str(self.home), *args]
        return subprocess.run(command, input=data, capture_output=True, check=True).stdout

    def clearsign(self, text: bytes) -> bytes:
        return self.gpg("--clearsign", "--digest-algo", "SHA256", data=text)

    def detach_sign(self, text: bytes) -> bytes:
        return self.gpg("--detach-sign", "--armor", "--digest-algo", "SHA256", data=text)


def archive_key(name: str = "memuse-kit test archive") -> Iterator[ArchiveKey]:
    """Generate a key with no passphrase (no network, a second); yields it, then removes it.

    The home is a short path of its own: gpg-agent's socket lives in it.
    """
    home = Path(tempfile.mkdtemp(prefix="gpg-"))
    key = ArchiveKey(home, home / "archive-keyring.gpg")
    try:
        key.gpg("--passphrase", "", "--quick-gen-key", f"{name} <tests@example.org>", "ed25519")
        key.keyring.write_bytes(key.gpg("--export"))
        yield key
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def publish_apt_archive(
    server: FileServer,
    prefix: str,
    suite: str,
    packages: List[Tuple[str, str, bytes]],
    key: Optional[ArchiveKey] = None,
) -> str:
    """An apt archive at prefix with (package, version, deb) in SUITE/main, its Release
    signed by key (InRelease and Release.gpg) when one is given.

    Returns the apt source line without options: "URI SUITE main".
    """
    stanzas = []
    for package, version, deb in packages:
        filename = f"pool/main/{package}_{version}_all.deb"
        server.add(f"{prefix}/{filename}", deb)
        stanzas.append(
            f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
            f"Filename: {filename}\nSize: {len(deb)}\nSHA256: {sha256(deb)}\n"
            "Description: test kernel source\n"
        )
    index = "\n".join(stanzas).encode()
    server.add(f"{prefix}/dists/{suite}/main/binary-amd64/Packages", index)
    release = (
        f"Suite: {suite}\nCodename: {suite}\nDate: Thu, 01 Jan 2026 00:00:00 UTC\n"
        "Architectures: amd64 all\nComponents: main\nSHA256:\n"
        f" {sha256(index)} {len(index)} main/binary-amd64/Packages\n"
    )
    server.add(f"{prefix}/dists/{suite}/Release", release.encode())
    if key is not None:
        server.add(f"{prefix}/dists/{suite}/InRelease", key.clearsign(release.encode()))
        server.add(f"{prefix}/dists/{suite}/Release.gpg", key.detach_sign(release.encode()))
    return f"{server.url(prefix)} {suite} main"


@dataclass
class GitFixture:
    url: str
    tag: str
    version: str
    commit: str


def git_repository(tmp: Path, version: str = "9.9.0-1.2~20.04.1") -> GitFixture:
    """A repository with an Ubuntu-like tree tagged at VERSION, and one commit after it."""
    repo = tmp / "ubuntu-git"
    make_fake_tree(repo, version="9.9.0", last=471)
    (repo / "debian").mkdir()
    (repo / "debian" / "debian.env").write_text("DEBIAN=debian.hwe-9.9\n")
    (repo / "debian.hwe-9.9").mkdir()
    (repo / "debian.hwe-9.9" / "changelog").write_text(
        f"linux-hwe-9.9 ({version}) focal; urgency=medium\n\n  * test\n"
    )
    tag = "Ubuntu-hwe-9.9-" + version.replace("~", "_")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "release"], check=True)
    subprocess.run([*git, "tag", "-a", "-m", tag, tag], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    (repo / "Makefile").write_text((repo / "Makefile").read_text().replace("9\nSUB", "10\nSUB"))
    (repo / "after-the-tag").write_text("not in the release\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "after the release"], check=True)
    return GitFixture(f"file://{repo}", tag, version, commit)


@dataclass
class Archive:
    """Everything a Coordinates object can point at; fields left None point nowhere."""

    git: Optional[GitFixture] = None
    kernel_org_base: str = "http://127.0.0.1:9/kernel"
    debian_series: Dict[str, List[str]] = field(default_factory=dict)
    sha256_pins: Dict[str, str] = field(default_factory=dict)
    keyring: Optional[Path] = None  # signed-by this; without one the archive is trusted=yes


def coordinates(archive: Archive, default: str = "ubuntu-test") -> Coordinates:
    git = {}
    if archive.git is not None:
        git["ubuntu-test"] = GitSource(
            "ubuntu-test", archive.git.url, archive.git.tag, archive.git.version, "ubuntu"
        )
    return Coordinates(
        default=default,
        git=git,
        kernel_org=KernelOrg(
            base=archive.kernel_org_base + "/v{major}.x",
            tarball="linux-{version}.tar.xz",
            sums="sha256sums.asc",
            sha256=dict(archive.sha256_pins),
        ),
        debian=Debian(
            options=f"signed-by={archive.keyring}" if archive.keyring else "trusted=yes",
            package="linux-source-{series}",
            architecture="amd64",
            series=archive.debian_series,
            retries=0,
        ),
        ubuntu={},
    )


def clearsigned_sums(entries: Dict[str, bytes]) -> bytes:
    """sha256sums.asc as kernel.org publishes it (the signature is not checked)."""
    lines = "".join(f"{sha256(data)}  {name}\n" for name, data in entries.items())
    return (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
        f"{lines}-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n"
    ).encode()
