"""`invoke build`: configure, compile and package the patched kernel, recording everything."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from memuse_client.build_record import BuildRecord
from memuse_kit.building import (
    artifacts,
    ccache_stats,
    compiler,
    distributed,
    kconfig,
    mounts,
    preflight,
)
from memuse_kit.building.builddir import BuildDir
from memuse_kit.building.metadata import RecordWriter
from memuse_kit.building.progress import BuildProgress
from memuse_kit.core import arch as arches
from memuse_kit.core import atomic
from memuse_kit.core.cache import ccache_dir
from memuse_kit.core.clock import now
from memuse_kit.core.errors import KitError
from memuse_kit.core.output import problem, report, say, warn
from memuse_kit.core.runner import Runner
from memuse_kit.patching import patcher
from memuse_kit.trees.kernel_version import KernelVersion, read_tree_version


@dataclass
class BuildOptions:
    tree: Path
    config: str = "running"
    fragments: Sequence[str] = ()
    debug_info: bool = False
    reconfigure: bool = False
    keep_config: bool = False
    jobs: Optional[int] = None  # default: the helpers' slots when distributing, else the CPUs
    dry_run: bool = False
    use_ccache: bool = True
    source: Optional[dict] = None
    # a dry run's syscall numbers for a tree it did not patch
    planned_syscalls: Dict[str, int] = field(default_factory=dict)
    planned_probes: Optional[Dict[str, object]] = None  # the plan's, so not probed twice
    localmodconfig: bool = False
    lsmod: Optional[str] = None  # lsmod output to trim to; default: the modules loaded now
    packages: bool = True  # False: compile and link only, for invoke vm (bindeb-pkg skipped)
    distcc: Optional[str] = None  # distcc's host list: compile the objects on those helpers
    icecream: bool = False  # compile the objects on the helpers of icecream's scheduler
    arch: str = arches.DEFAULT.name  # the architecture to build for (core/arch.py)

    @property
    def target(self) -> arches.Arch:
        return arches.get(self.arch)

    @property
    def label(self) -> str:
        """Names the build directory: a trimmed configuration is a build of its own, and so is
        another architecture's (x86_64's keep their names)."""
        trimmed = self.localmodconfig or self.lsmod is not None
        name = f"{self.config}-localmodconfig" if trimmed else self.config
        return name + arches.label_suffix(self.target)


@dataclass
class BuildResult:
    build_dir: BuildDir
    release: str
    packages: List[Path]
    compiled: int
    tree: Path


def _make(bd: BuildDir, cc: compiler.Compiler, jobs: int) -> List[str]:
    return ["make", f"O={bd.obj}", f"-j{jobs}", *cc.make_args()]


def _ccache_dir() -> str:
    return os.environ.get("CCACHE_DIR", str(ccache_dir()))


def _env(cc: compiler.Compiler, tree: Path, extra: Optional[Dict[str, str]] = None) -> dict:
    # A fixed build number and a timestamp that moves only when the kit's edits do keep
    # init/utsversion unchanged, so a no-op build relinks nothing and repackages nothing.
    stamp = patcher.patched_at(tree)
    env = {
        "KBUILD_BUILD_USER": "memuse-kit",
        "KBUILD_BUILD_HOST": "memuse-kit",
        "KBUILD_BUILD_VERSION": "1",
    }
    if stamp:
        env["KBUILD_BUILD_TIMESTAMP"] = formatdate(stamp, usegmt=True)
    path = preflight.tool_path()
    if path != os.environ.get("PATH"):
        env["PATH"] = path  # modules_install runs depmod, which is in /usr/sbin
    if cc.ccache:
        env["CCACHE_DIR"] = _ccache_dir()
        env.update(ccache_mode(cc, os.environ))
    env.update(extra or {})
    return env


def ccache_mode(cc: compiler.Compiler, environ: Mapping[str, str]) -> Dict[str, str]:
    """ccache's depend mode for a local build, unless the user chose a mode: it hashes the
    dependencies the compiler lists (kbuild's -MMD) instead of running the preprocessor a
    second time on every miss, which cost a first build with an empty cache a quarter more
    (7.2 vm: 406 s, against 347 s in depend mode and 343 s without ccache; a rebuild into an
    empty obj/ from the warm cache: 42 s, 992 of 993 compiles answered)."""
    chosen = any(name in environ for name in ("CCACHE_DEPEND", "CCACHE_NODEPEND"))
    return {} if chosen or cc.launcher else {"CCACHE_DEPEND": "1"}


def _previous_record(bd: BuildDir) -> BuildRecord:
    """The last build's record here, for its config hash and object count; a record this
    version cannot read only costs the estimate, the build writes a new one."""
    try:
        return bd.read_record() or BuildRecord()
    except KitError as error:
        warn(f"{error}; starting a new record")
        return BuildRecord()


def _estimate(bd: BuildDir, previous: BuildRecord) -> int:
    if previous.objects_total:
        return int(previous.objects_total)
    # the first build of a directory has only the configuration to go by
    return kconfig.estimated_objects(bd.obj / ".config")


NO_HEADERS_PROFILE = "pkg.linux-upstream.nokernelheaders"


def cross_package_args(tree: Path, target: arches.Arch) -> List[str]:
    """A cross build's bindeb-pkg without the headers package where the tree's mkdebian
    offers that profile: there the headers package compiles kbuild's programs for the target,
    which takes the target's libssl-dev (a foreign architecture's package on this host).
    Older trees put the host's programs in it, and build it without."""
    if target.cross_triplet is None:
        return []
    mkdebian = tree / "scripts/package/mkdebian"
    text = mkdebian.read_text(errors="replace") if mkdebian.is_file() else ""
    return [f"DPKG_FLAGS=-P{NO_HEADERS_PROFILE}"] if "nokernelheaders" in text else []


def _pkg_version(kernel: KernelVersion) -> str:
    # fixed, so an unchanged tree gives byte-identical package names and versions
    return f"{kernel.major}.{kernel.minor}.{kernel.sublevel}-1"


class Builder:
    def __init__(self, options: BuildOptions) -> None:
        self.options = options
        self.tree = options.tree
        self.runner = Runner(dry_run=options.dry_run)
        self.kernel = read_tree_version(self.tree)
        self.bd = BuildDir.for_tree(self.tree, options.label)
        self.previous = _previous_record(self.bd)
        self.writer = RecordWriter(self.bd, dry_run=options.dry_run)
        self.cc: Optional[compiler.Compiler] = None
        self.farm: Optional[distributed.Farm] = None
        self.prefix_script = self.bd.root / "ccache-prefix"  # the engine's gate (distributed.py)
        self.jobs = options.jobs or os.cpu_count() or 1
        self.fell_back = 0
        self.config_request: Optional[kconfig.ConfigRequest] = None

    def _precondition(self, check: Callable[[], object]) -> None:
        """A check that stops a real build; a dry run notes it and goes on with the plan."""
        try:
            check()
        except KitError as error:
            if not self.options.dry_run:
                raise
            report(f"# a real build would stop here: {error}")

    def _compiler(self) -> compiler.Compiler:
        try:
            return compiler.pick(self.kernel, self.options.use_ccache, self.options.target)
        except KitError as error:
            if not self.options.dry_run:
                raise
            report(f"# a real build would stop here: {error}")
            target = self.options.target
            command = target.compiler_command(compiler.rule_for(self.kernel).candidates[0])
            return compiler.Compiler(command, "?", None, arch_args=target.make_args())

    def preflight(self) -> None:
        self._precondition(preflight.check_not_root)
        self._precondition(lambda: preflight.check_packages(self.kernel))
        self._precondition(lambda: preflight.check_disk(self.bd.root, self.options.config))
        if self.options.localmodconfig and self.options.lsmod is None:
            self._precondition(mounts.check_boot_mounts)
        self.cc = self._compiler()
        self.farm = self._farm(self.cc)
        self.cc = distributed.with_engine(self.cc, self.farm, self.prefix_script)
        numbers = patcher.recorded_syscalls(self.tree)
        if not numbers and self.options.dry_run:
            numbers = dict(self.options.planned_syscalls)
        if not numbers:
            raise KitError(f"{self.tree} is not patched yet: run invoke patch --tree {self.tree}")
        pahole = preflight.pahole_version()
        btf_ok, btf_why = preflight.btf_suits(self.kernel, pahole)
        if self.options.debug_info and not btf_ok:
            warn(f"BTF stays off: {btf_why}")
        self.btf_ok = btf_ok
        with_ccache = " + ccache" if self.cc.ccache else ""
        say(
            f"building Linux {self.kernel} ({patcher.describe_numbers(numbers)}) with "
            f"{self.cc.command} {self.cc.version}{with_ccache}, config {self.options.config}"
            f"{self._farm_note()}"
        )
        self.writer.update(
            kernel_version=str(self.kernel),
            arch=self.options.target.name,
            syscalls=numbers,
            probes=self._probe_results(numbers),
            tree=str(self.tree),
            source=self.options.source,
            config={
                "name": self.options.config,
                "fragments": list(self.options.fragments),
                "sha256": self.previous.config_sha256(),
            },
            compiler={
                "command": self.cc.command,
                "version": self.cc.version,
                "ccache": bool(self.cc.ccache),
            },
            pahole=".".join(map(str, pahole)) if pahole else None,
            distributed=self.farm.record(self.jobs) if self.farm else None,
            debug_info=self.options.debug_info,
            log=str(self.bd.log),
        )

    def _probe_results(self, numbers: Dict[str, int]) -> Dict[str, object]:
        planned = self.options.planned_probes
        if planned is not None and numbers == self.options.planned_syscalls:
            return planned
        return patcher.probe_results(self.tree, list(numbers))

    def _farm(self, cc: compiler.Compiler) -> Optional[distributed.Farm]:
        """The helpers --distcc or --icecream name, each checked with a test compile."""
        farm = None
        wanted = self.options.distcc is not None or self.options.icecream
        if wanted and self.options.target is not arches.DEFAULT:
            raise KitError(f"--distcc and --icecream build x86_64 only, not {self.options.arch}")
        if self.options.distcc is not None:
            farm = distributed.parse_distcc_hosts(self.options.distcc)
        elif self.options.icecream:
            try:
                farm = distributed.icecream_farm(distributed.scheduler_address())
            except KitError as error:
                if not self.options.dry_run:
                    raise
                report(f"# a real build would stop here: {error}")
                return None
        if farm is None:
            return None
        if self.options.jobs is None:
            self.jobs = farm.jobs()
        if self.options.dry_run:
            report(f"# preflight: a real build first test-compiles on each {farm.engine} helper")
        else:
            preflight.check_helpers(farm, cc)
        return farm

    def _farm_note(self) -> str:
        if self.farm is None:
            return ""
        helpers = len(self.farm.helpers)
        return (
            f", distributed by {self.farm.engine} to {helpers} helper{'s' * (helpers != 1)} "
            f"(make -j{self.jobs})"
        )

    def configure(self) -> None:
        assert self.cc is not None
        written = self.previous.config_sha256()
        if self.options.keep_config:
            if not (self.bd.obj / ".config").is_file():
                raise KitError(f"--keep-config: {self.bd.obj / '.config'} does not exist yet")
            # still what memuse-kit wrote last, so a later run knows the user's edits
            self.writer.record.config["sha256"] = written
            return
        profile = kconfig.profile_for(self.options.config, self.options.target)
        lsmod = self._module_list()
        request = kconfig.ConfigRequest(
            tree=self.tree,
            obj=self.bd.obj,
            kernel=self.kernel,
            compiler=self.cc,
            profile=profile,
            fragments=kconfig.fragment_paths(profile, self.options.fragments),
            debug_info=self.options.debug_info,
            btf_ok=self.btf_ok,
            lsmod=lsmod,
            arch=self.options.target,
        )
        inputs = kconfig.inputs_digest(request)
        self.writer.record.config["inputs_sha256"] = inputs
        if not self.options.reconfigure and kconfig.is_current(
            self.bd.obj, inputs, self.previous.config
        ):
            if self.runner.dry_run:
                report("# configure: nothing to do, the configuration's inputs are unchanged")
            return
        self.config_request = request  # generated now: its digest is taken again after make
        candidate = kconfig.generate(request, self.runner)
        if self.runner.dry_run:
            return
        kconfig.suggest_trimming(candidate, profile, lsmod)
        digest = kconfig.adopt(self.bd.obj, candidate, written, self.options.reconfigure)
        self.writer.record.config["sha256"] = digest

    def _module_list(self) -> Optional[Path]:
        """The lsmod list localmodconfig trims to, kept in the build directory and recorded."""
        if self.options.lsmod is not None:
            given = Path(self.options.lsmod).expanduser()
            if not given.is_file():
                raise KitError(f"--lsmod {self.options.lsmod}: no such file (save lsmod > FILE)")
            listing = given.read_bytes()
        elif self.options.localmodconfig:
            listing = Path("/proc/modules").read_bytes()
        else:
            return None
        kept = self.bd.root / "lsmod.txt"
        if not self.runner.dry_run:
            atomic.write_if_changed(kept, listing)
        self.writer.update(
            localmodconfig={"modules": len(listing.splitlines()), "lsmod": str(kept)}
        )
        return kept

    def compile(self) -> int:
        assert self.cc is not None
        estimate = 1 if self.runner.dry_run else _estimate(self.bd, self.previous)
        progress = BuildProgress("build", estimate)
        before = self._ccache_counts()
        status = self._stream([*_make(self.bd, self.cc, self.jobs)], progress, self._count_fallback)
        self._record_where_the_time_went(progress, before)
        self.writer.update(objects_compiled=progress.steps)
        self._record_fallbacks()
        if progress.steps > estimate // 2:
            self.writer.update(objects_total=progress.steps)
        else:
            self.writer.update(objects_total=self.previous.objects_total)
        self._check(status, progress, "compiling the kernel")
        if self.config_request is not None and not self.runner.dry_run:
            # make's syncconfig has now written the list of Kconfig files the digest reads
            digest = kconfig.inputs_digest(self.config_request)
            self.writer.record.config["inputs_sha256"] = digest
        return progress.steps

    def _ccache_counts(self) -> Optional[ccache_stats.Counts]:
        if self.runner.dry_run or self.cc is None or not self.cc.ccache:
            return None
        return ccache_stats.snapshot(self.cc.ccache, {"CCACHE_DIR": _ccache_dir()}, self.runner)

    def _record_where_the_time_went(
        self, progress: BuildProgress, before: Optional[ccache_stats.Counts]
    ) -> None:
        if self.runner.dry_run:
            return
        compiling, linking = progress.split()
        self.writer.record.durations.update(compile=compiling, link=linking)
        after = self._ccache_counts() if before is not None else None
        if before is not None and after is not None:
            self.writer.update(ccache=after.since(before))

    def package(self) -> List[Path]:
        assert self.cc is not None
        release = self.bd.kernel_release() or ""
        if not self.runner.dry_run and artifacts.packages_up_to_date(self.bd, release):
            say("packages are up to date")
            return artifacts.kept_packages(self.bd)
        for stale in [] if self.runner.dry_run else self.bd.root.glob("*.deb"):
            stale.unlink()
        cmd = [
            *_make(self.bd, self.cc, self.jobs),
            f"KDEB_PKGVERSION={_pkg_version(self.kernel)}",
            *cross_package_args(self.tree, self.options.target),
        ]
        progress = BuildProgress("package", 1)
        status = self._stream([*cmd, "bindeb-pkg"], progress)
        self._check(status, progress, "packaging (bindeb-pkg)")
        return artifacts.collect(self.bd)

    def _stream(
        self, cmd: List[str], progress: BuildProgress, *sinks: Callable[[str], None]
    ) -> int:
        assert self.cc is not None
        env = _env(self.cc, self.tree, self._engine_environment())
        if self.runner.dry_run:
            return self.runner.stream(cmd, cwd=self.tree, env=env)
        with self.bd.log.open("a") as log:
            status = self.runner.stream(
                cmd, cwd=self.tree, env=env, sinks=[progress.feed, *sinks], log=log
            )
        progress.close(status == 0)
        return status

    def _engine_environment(self) -> Dict[str, str]:
        """DISTCC_HOSTS, and with ccache the CCACHE_PREFIX that keeps host programs here; the
        prefix script is written for either way of reaching the engine (with_engine)."""
        assert self.cc is not None
        prefix = self.prefix_script
        if self.farm is not None and not self.runner.dry_run:
            atomic.write_if_changed(prefix, distributed.PREFIX_SCRIPT.encode())
            prefix.chmod(0o755)
        return distributed.environment(self.cc, self.farm, prefix)

    def _count_fallback(self, line: str) -> None:
        if distributed.fell_back(line):
            self.fell_back += 1

    def _record_fallbacks(self) -> None:
        if self.farm is None:
            return
        self.writer.update(distributed=self.farm.record(self.jobs, self.fell_back))
        if self.fell_back:
            warn(
                f"{self.fell_back} objects were compiled on this machine after a helper failed "
                f"(distcc's fallback; DISTCC_FALLBACK=0 fails the build instead): {self.bd.log}"
            )

    def _announce(self, step: str) -> None:
        if self.runner.dry_run:
            report(f"# {step} (dry run: printed, not run)")

    def _check(self, status: int, progress: BuildProgress, what: str) -> None:
        if status == 0:
            return
        self.writer.update(error=progress.errors[:10])
        for line in progress.errors[:10]:
            problem(f"  {line}")
        raise KitError(f"{what} failed (status {status}); full log: {self.bd.log}")

    def _package_phase(self) -> List[Path]:
        if not self.options.packages:
            self._announce("package: skipped (--no-packages)")
            return []
        with self.writer.phase("package"):
            self._announce("package")
            return self.package()

    def run(self) -> BuildResult:
        if not self.runner.dry_run:
            self.bd.root.mkdir(parents=True, exist_ok=True)
            if self.bd.log.exists():
                shutil.move(str(self.bd.log), str(self.bd.log) + ".1")
        try:
            with self.writer.phase("preflight"):
                self.preflight()
            if not self.runner.dry_run:
                self.writer.write()
            with self.writer.phase("config"):
                self._announce("configure")
                self.configure()
                if self.farm is not None and not self.runner.dry_run:
                    preflight.check_distributable(self.bd.obj / ".config")
            with self.writer.phase("kernel"):
                self._announce("compile")
                compiled = self.compile()
            packages = self._package_phase()
            self.writer.update(
                status="success",
                kernel_release=self.bd.kernel_release(),
                artifacts=[
                    {"file": name, "sha256": digest}
                    for name, digest in artifacts.package_sums(self.bd, packages).items()
                ],
                packaged=self.options.packages,
            )
            release = self.bd.kernel_release() or ""
            return BuildResult(self.bd, release, packages, compiled, self.tree)
        except BaseException as error:
            self.writer.update(status="failed", failure=str(error) or type(error).__name__)
            raise
        finally:
            self.writer.update(finished=now(), kernel_release=self.bd.kernel_release())
            if not self.runner.dry_run:
                self.writer.write()


def where_the_time_went(record: BuildRecord) -> str:
    """One line: configure, compile, link and package times, and ccache's share of the
    compiles."""
    times = record.durations
    parts = [("configure", "config"), ("compile", "compile"), ("link", "link")]
    parts += [("package", "package")] if "package" in times else []
    line = ", ".join(f"{label} {_seconds(times[key])}" for label, key in parts if key in times)
    stats = record.ccache
    if stats and stats.get("hits", 0) + stats.get("misses", 0) > 0:
        hits, misses = int(stats["hits"]), int(stats["misses"])
        line += f"; ccache answered {hits} of {hits + misses} compiles ({stats['hit_rate']:.0%})"
    return f"time: {line}"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{int(value) // 60}m{int(value) % 60:02d}s"


def build(options: BuildOptions) -> BuildResult:
    builder = Builder(options)
    result = builder.run()
    if options.dry_run:
        return result
    say(where_the_time_went(builder.writer.record), sys.stderr)  # beside the progress lines
    if result.compiled == 0:
        report("nothing to compile: the kernel was up to date")
    if not options.packages:
        report(f"kernel {result.release}: {result.build_dir.image()} (not packaged: --no-packages)")
        return result
    report(f"kernel {result.release}: packages in {result.build_dir.artifacts}")
    for package in result.packages:
        report(f"  {package.name}")
    return result
