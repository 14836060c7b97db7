"""`invoke fetch`: a kernel source tree in the cache, recorded as the current tree.

Cache layout (memuse_kit.cache):
  downloads/NAME                 verified downloads (NAME.part while incomplete)
  trees/SLUG/                    a complete kernel tree, e.g. trees/debian-7.2.13-1
  trees/SLUG.source.json         where it came from: spec, exact version, URL, sha256
  trees/.SLUG.partial-XXXX/      unpacking in progress; renamed to SLUG only when complete
  apt/SPEC/                      the private apt configuration and index of debian:X.Y
  current.json                   the tree tasks use when given no --tree or --source
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, TextIO, Tuple, Union

from memuse_kit.core import atomic
from memuse_kit.core.cache import cache_root, downloads_dir, trees_dir
from memuse_kit.core.clock import now
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import report, say, warn
from memuse_kit.core.runner import Runner
from memuse_kit.trees import sources
from memuse_kit.trees.debsource import Apt, unpack_deb
from memuse_kit.trees.download import Unreachable, fetch_file, fetch_text, parse_sha256sums
from memuse_kit.trees.kernel_version import read_tree_version
from memuse_kit.trees.sources import Coordinates, Distribution, Spec

RECORD_SUFFIX = ".source.json"


@dataclass
class FetchResult:
    tree: Path
    spec: str
    version: str  # exact: "7.2.13-1", "5.11.0-37.41~20.04.2", "5.11"
    kernel: str = ""  # from the top Makefile: "7.2.13"
    origin: str = ""  # the URL (git: URL#tag) or, for --tree, the directory
    sha256: Optional[str] = None  # of the verified download
    commit: Optional[str] = None  # of the git tag
    cached: bool = False

    def record(self) -> Dict[str, Any]:
        data = asdict(self)
        data.pop("cached")
        data["tree"] = str(self.tree)
        return data


def current_file() -> Path:
    return cache_root() / "current.json"


def fetch_source(
    spec: Optional[str],
    *,
    explicit: bool,
    coordinates: Optional[Coordinates] = None,
    distribution: Optional[Distribution] = None,
    out: Optional[TextIO] = None,
) -> FetchResult:
    """Fetch spec (default: the data file's default) and make it the current tree.

    An unreachable default source that was not asked for explicitly falls back, with one
    warning, to the running distribution's own kernel source package.
    """
    coords = coordinates or sources.load_coordinates()
    distro = distribution or sources.running_distribution()
    fetcher = Fetcher(coords, distro, Runner(), out)
    wanted = sources.parse_spec(spec or coords.default, coords)
    try:
        result = fetcher.fetch(wanted)
    except Unreachable as error:
        may_fall_back = not explicit and wanted.name == coords.default
        fallback = sources.fallback_spec(coords, distro) if may_fall_back else None
        if fallback is None:
            raise
        warn(
            f"{error.url} is unreachable ({error.reason}); "
            f"using this system's kernel source {fallback} instead"
        )
        result = fetcher.fetch(sources.parse_spec(fallback, coords))
    remember(result)
    return result


def planned_source(spec: Optional[str]) -> Tuple[str, Optional[FetchResult]]:
    """(spec name, its cached tree or None): what a fetch would do, with no download and no
    write. The spec is validated as a real fetch would."""
    coords = sources.load_coordinates()
    wanted = sources.parse_spec(spec or coords.default, coords)
    if wanted.kind == "git":
        version: Optional[str] = coords.git[wanted.arg].version
    else:
        version = wanted.arg if wanted.kind == "kernel.org" else None
    return wanted.name, find_cached(wanted.name, version)


def fetch_command(
    source: Optional[str],
    tree: Optional[Union[str, Path]],
    dry_run: bool = False,
    **options: Any,
) -> None:
    """The fetch task: --tree DIR records a tree you have, otherwise fetch --source."""
    from memuse_kit.trees.workspace import check_not_empty

    check_not_empty(None if tree is None else str(tree), "--tree")
    check_not_empty(source, "--source")
    if source and tree is not None:
        raise KitError("give --source or --tree, not both")
    if dry_run:
        _fetch_dry_run(source, None if tree is None else Path(tree))
        return
    if tree is not None:
        result = use_tree(Path(tree))
    else:
        result = fetch_source(source, explicit=source is not None, **options)
    report(f"Linux {result.kernel} ({result.spec} {result.version}): {result.tree}")


def _fetch_dry_run(source: Optional[str], tree: Optional[Path]) -> None:
    if tree is not None:
        root = tree.expanduser().resolve()
        kernel = read_tree_version(root)
        report(f"would record {root} (Linux {kernel}) as the current tree")
        return
    name, cached = planned_source(source)
    if cached is not None:
        report(f"{name}: already fetched ({cached.version}): {cached.tree}")
    else:
        report(f"would fetch {name} into {trees_dir()} (a dry run downloads nothing)")


def use_tree(tree: Path) -> FetchResult:
    root = tree.expanduser().resolve()
    kernel = str(read_tree_version(root))  # needs a top Makefile with VERSION/PATCHLEVEL
    result = FetchResult(root, "tree", kernel, kernel, origin=str(root))
    remember(result)
    return result


def make_current(tree: Path) -> None:
    """Remember a tree given with --tree as the one later tasks use, as fetch does; a tree
    the tool fetched keeps its source record."""
    root = tree.resolve()
    if last_fetched() == root:
        return
    known = source_record(root)
    if known is None:
        use_tree(root)
        return
    _write_current(known)


def remember(result: FetchResult) -> None:
    _write_current(result.record())


def _write_current(record: Dict[str, Any]) -> None:
    data = {**record, "fetched": now()}
    current_file().parent.mkdir(parents=True, exist_ok=True)
    atomic.write_atomic(current_file(), (json.dumps(data, indent=2) + "\n").encode())


def last_fetched() -> Optional[Path]:
    """The current tree (fetched or given with --tree), if it still exists."""
    data = _read_json(current_file())
    tree = Path(data["tree"]) if data and data.get("tree") else None
    return tree if tree is not None and (tree / "Makefile").is_file() else None


def source_record(tree: Path) -> Optional[Dict[str, Any]]:
    """Where tree came from (spec, exact version, URL, sha256), for build metadata."""
    root = tree.resolve()
    for path, data in _records():
        if _record_tree(path).resolve() == root:
            return data
    current = _read_json(current_file())
    if current and Path(current.get("tree", "")).resolve() == root:
        return current
    return None


def source_label(tree: Path) -> str:
    """What kind of source a tree is, for patch file names: upstream (kernel.org), debian,
    ubuntu, ... as its cached directory is named; "linux" for a tree the tool did not fetch."""
    record = source_record(tree) or {}
    where = Path(str(record.get("tree") or ""))
    if not record.get("spec") or where.parent.resolve() != trees_dir().resolve():
        return "linux"
    prefix = where.name.split("-", 1)[0]
    return "upstream" if prefix == "linux" else prefix


class Fetcher:
    def __init__(
        self, coords: Coordinates, distro: Distribution, runner: Runner, out: Optional[TextIO]
    ) -> None:
        self.coords = coords
        self.distro = distro
        self.runner = runner
        self.out = out

    def fetch(self, spec: Spec) -> FetchResult:
        with _locked(_safe(spec.name)):
            found = find_cached(spec.name, self._known_version(spec))
            if found is not None:
                say(f"{spec.name}: already fetched ({found.version})")
                return found
            if spec.kind == "git":
                return self._git(spec)
            if spec.kind == "kernel.org":
                return self._kernel_org(spec)
            return self._debian(spec)

    def _known_version(self, spec: Spec) -> Optional[str]:
        """The version spec must give, when the data pins it (Debian's moves)."""
        if spec.kind == "git":
            return self.coords.git[spec.arg].version
        return spec.arg if spec.kind == "kernel.org" else None

    def _git(self, spec: Spec) -> FetchResult:
        # GitPython runs `git version` when imported: only a clone pays for it
        from memuse_kit.trees.gitsource import changelog_version, clone_tag

        src = self.coords.git[spec.arg]
        slug = _safe(f"{src.tree_prefix}-{src.version}")
        say(f"{spec.name}: shallow clone of tag {src.tag} from {src.url}")
        with _staging(slug) as staging:
            tree = staging / "linux"
            commit = clone_tag(src.url, src.tag, tree, out=self.out)
            found = changelog_version(tree)
            if found is not None and found != src.version:
                raise KitError(
                    f"tag {src.tag} holds {found}, not {src.version}: "
                    "fix memuse_kit/data/sources.toml"
                )
            origin = f"{src.url}#{src.tag}"
            result = FetchResult(tree, spec.name, src.version, origin=origin, commit=commit)
            return _install(tree, slug, result)

    def _kernel_org(self, spec: Spec) -> FetchResult:
        ko = self.coords.kernel_org
        directory = ko.directory_url(spec.arg)
        name = ko.tarball_name(spec.arg)
        sha256 = ko.sha256.get(name) or self._sha256_online_or_verified(directory, name)
        url = f"{directory}/{name}"
        tarball = self._download(url, name, sha256)
        slug = _safe(f"linux-{spec.arg}")
        with _staging(slug) as staging:
            tree = self._unpack(tarball, staging / "src")
            result = FetchResult(tree, spec.name, spec.arg, origin=url, sha256=sha256)
            return _install(tree, slug, result)

    def _sha256_online_or_verified(self, directory: str, name: str) -> str:
        """The published sha256; offline, the one a cached download was verified against."""
        try:
            return self._published_sha256(directory, name)
        except Unreachable as error:
            known = _verified_sha256(downloads_dir() / name)
            if known is None:
                raise
            warn(f"{error.url} is unreachable ({error.reason}); using the verified {name}")
            return known

    def _published_sha256(self, directory: str, name: str) -> str:
        sums_url = f"{directory}/{self.coords.kernel_org.sums}"
        sha256 = parse_sha256sums(fetch_text(sums_url)).get(name)
        if sha256 is None:
            raise KitError(f"{sums_url} lists no {name}: is that a released kernel?")
        return sha256

    def _debian(self, spec: Spec) -> FetchResult:
        plan = sources.apt_plan(self.coords, spec.arg, self.distro)
        deb = self.coords.debian
        apt = Apt(
            self.runner,
            cache_root() / "apt" / _safe(spec.name),
            plan.lines,
            options=deb.options,
            architecture=deb.architecture,
            retries=deb.retries,
        )
        say(f"{spec.name}: looking up {plan.package} ({'; '.join(plan.lines or ['system apt'])})")
        try:
            apt.update()
        except Unreachable as error:
            if not apt.has_index():
                raise
            # offline: the index of the last update still says which download is verified
            warn(f"{error.url} is unreachable ({error.reason}); using the apt index kept before")
        package = apt.locate(plan.package)
        say(f"{spec.name}: {plan.package} {package.version}")
        path = self._download(package.url, package.filename, package.sha256, package.size)
        slug = _safe(f"{'debian' if plan.lines else self.distro.id}-{package.version}")
        with _staging(slug) as staging:
            tarball = unpack_deb(self.runner, path, staging, plan.package)
            tree = self._unpack(tarball, staging / "src")
            result = FetchResult(
                tree, spec.name, package.version, origin=package.url, sha256=package.sha256
            )
            return _install(tree, slug, result)

    def _download(self, url: str, name: str, sha256: str, size: Optional[int] = None) -> Path:
        path = downloads_dir() / name
        fresh = fetch_file(url, path, sha256, size=size, out=self.out)
        _remember_verified(path, sha256)
        say(f"{'downloaded' if fresh else 'reusing the verified'} {path} (sha256 {sha256[:12]}…)")
        return path

    def _unpack(self, tarball: Path, into: Path) -> Path:
        into.mkdir()
        say(f"unpacking {tarball.name}")
        start = time.monotonic()
        self.runner.run(["tar", "-xf", str(tarball), "-C", str(into), "--no-same-owner"])
        say(f"unpacked {tarball.name} in {time.monotonic() - start:.0f}s")
        return _top_dir(into, tarball.name)


def find_cached(spec: str, version: Optional[str] = None) -> Optional[FetchResult]:
    """The newest complete tree fetched for spec (of that exact version when given)."""
    for path, data in _records():
        tree = _record_tree(path)
        matches = data.get("spec") == spec and version in (None, data.get("version"))
        if matches and (tree / "Makefile").is_file():
            return FetchResult(
                tree,
                spec,
                data["version"],
                data.get("kernel", ""),
                origin=data.get("origin", ""),
                sha256=data.get("sha256"),
                commit=data.get("commit"),
                cached=True,
            )
    return None


def _records() -> Iterator[Tuple[Path, Dict[str, Any]]]:
    """(record path, data) of every fetched tree, newest first."""
    paths = trees_dir().glob(f"*{RECORD_SUFFIX}") if trees_dir().is_dir() else []
    for path in sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True):
        data = _read_json(path)
        if data:
            yield path, data


def _record_tree(record: Path) -> Path:
    return record.with_name(record.name[: -len(RECORD_SUFFIX)])


def _install(tree: Path, slug: str, result: FetchResult) -> FetchResult:
    """Move a complete tree from staging to trees/SLUG in one rename and record it."""
    final = trees_dir() / slug
    if final.exists() and not (final / "Makefile").is_file():
        raise KitError(f"{final} is in the way and is not a kernel tree: move it elsewhere")
    if not final.exists():
        os.rename(tree, final)
    # else an earlier run completed it but stopped before its record: keep that one
    result.tree = final
    result.kernel = str(read_tree_version(final))
    record = final.with_name(slug + RECORD_SUFFIX)
    data = {**result.record(), "fetched": now()}
    atomic.write_atomic(record, (json.dumps(data, indent=2) + "\n").encode())
    return result


def _verified_sha256(download: Path) -> Optional[str]:
    """The sha256 a cached download was verified against, if it is still there."""
    record = download.with_name(download.name + ".sha256")
    if not download.is_file() or not record.is_file():
        return None
    words = record.read_text(errors="replace").split()
    return words[0] if words and re.fullmatch(r"[0-9a-f]{64}", words[0]) else None


def _remember_verified(download: Path, sha256: str) -> None:
    record = download.with_name(download.name + ".sha256")
    atomic.write_if_changed(record, f"{sha256}  {download.name}\n".encode())


def _top_dir(root: Path, what: str) -> Path:
    trees = [d for d in root.iterdir() if d.is_dir() and (d / "Makefile").is_file()]
    if len(trees) != 1:
        raise KitError(f"{what} does not unpack to one kernel tree with a top-level Makefile")
    return trees[0]


@contextmanager
def _staging(slug: str) -> Iterator[Path]:
    """A scratch directory next to trees/SLUG, removed however the fetch ends."""
    trees = trees_dir()
    trees.mkdir(parents=True, exist_ok=True)
    for stale in trees.glob(f".{slug}.partial-*"):  # an interrupted run's; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{slug}.partial-", dir=trees))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """One fetch of a spec at a time: they share the .part file and the staging name."""
    locks = cache_root() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{name}.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another fetch of {name} to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text)


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
