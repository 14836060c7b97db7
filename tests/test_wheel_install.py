"""A real install: the wheel, installed into a fresh venv outside the repository, finds its
templates, config fragments and data, and its `memuse-kit` command runs the same tasks as
`invoke` (issue 11)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict, List

import pytest

from tests.fakelinux import make_fake_buildable_tree, snapshot

REPO = Path(__file__).resolve().parent.parent
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)

pytestmark = pytest.mark.slow  # a wheel build and a venv: about 20 s on a busy 2-core machine


def run(cmd: List[str], cwd: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Dict[str, Path]:
    """A venv holding only the wheel; its dependencies come from the test venv (no network)."""
    base = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEMUSE_KIT_DEBUG")}
    source = base / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)  # the build writes nothing into REPO
    wheels = base / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
        source,
        env,
    )
    [wheel] = wheels.glob("memuse_kit-*.whl")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    python = venv / "bin" / "python"
    run([*pip, "--python", str(python), "install", "-q", "--no-deps", str(wheel)], base, env)
    # invoke, Jinja2, ... from this venv, behind the wheel's own site-packages
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(run([str(python), "-c", where], base, env).stdout.strip())
    (purelib / "test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    home = base / "home"
    home.mkdir()
    env.update(HOME=str(home), MEMUSE_KIT_CACHE=str(base / "cache"))
    return {"venv": venv, "cwd": home, "base": base, "env": env}  # type: ignore[dict-item]


def memuse_kit(installed, *args: str) -> subprocess.CompletedProcess:
    command = [str(installed["venv"] / "bin" / "memuse-kit"), *args]
    return subprocess.run(
        command,
        cwd=installed["cwd"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_installed_package_is_the_wheel_not_the_repository(installed):
    python = installed["venv"] / "bin" / "python"
    code = (
        "import memuse_kit, memuse_client, memuse_kit.patching.templates as t; "
        "print(memuse_kit.__file__); print(memuse_client.__file__); print(t.TEMPLATES_DIR)"
    )
    done = run([str(python), "-c", code], installed["cwd"], installed["env"])
    for line in done.stdout.split():
        assert Path(line).is_relative_to(installed["venv"]), line
        assert not Path(line).is_relative_to(REPO), line
    templates = Path(done.stdout.split()[2])
    for data in (
        "syscalls/memuse/syscall.toml",
        "syscalls/memuse/impl.c.j2",
        "syscalls/fdcount/impl.c.j2",
        "kernel/source.c.j2",
        "scaffold/syscall.toml.j2",
        "config/vm.config",
        "hello/Kbuild",
        "patch-header.j2",
    ):
        assert (templates / data).is_file(), data
    assert (templates.parent / "data" / "sources.toml").is_file()


def test_list_and_help_from_outside_the_repository(installed):
    listed = memuse_kit(installed, "--list")
    assert listed.returncode == 0, listed.stderr
    for task in ("fetch", "patch", "patches", "build", "install", "uninstall", "vm", "module"):
        assert f"  {task} " in listed.stdout
    helped = memuse_kit(installed, "--help", "build")
    assert helped.returncode == 0 and "--localmodconfig" in helped.stdout
    assert memuse_kit(installed, "--version").stdout.startswith("memuse-kit ")


def test_a_real_patch_dry_run_renders_the_installed_templates(installed):
    tree = make_fake_buildable_tree(installed["base"] / "linux")
    before = snapshot(tree)
    done = memuse_kit(
        installed, "patch", "--tree", str(tree), "--syscall", "memuse", "--syscall", "fdcount",
        "--dry-run",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "kernel/memuse.c (new)" in done.stdout and "kernel/fdcount.c (new)" in done.stdout
    assert "memuse is syscall number 472, fdcount 473" in done.stdout
    assert snapshot(tree) == before


def test_the_installed_kit_lists_and_scaffolds_syscalls(installed):
    listed = memuse_kit(installed, "syscall.list")
    assert listed.returncode == 0, listed.stderr
    assert "long fdcount(pid_t pid, unsigned int flags)" in listed.stdout
    made = memuse_kit(installed, "syscall.new", "mine", "--arg", "int x", "--dry-run")
    assert made.returncode == 0, made.stderr
    assert "would create" in made.stdout and "site-packages" not in made.stdout


def test_a_build_dry_run_finds_the_installed_config_fragments(installed):
    tree = make_fake_buildable_tree(installed["base"] / "linux-build")
    done = memuse_kit(installed, "build", "--tree", str(tree), "--config", "vm", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "vm.config" in done.stdout and "bindeb-pkg" in done.stdout


def test_bad_input_is_one_line_there_too(installed):
    done = memuse_kit(installed, "patch", "--tree", str(installed["base"] / "nowhere"))
    assert done.returncode == 1
    assert done.stderr.strip().startswith("memuse-kit: error:")
    assert len(done.stderr.strip().splitlines()) == 1


def test_shipped_patches_need_the_repository(installed):
    done = memuse_kit(installed, "patches", "--check")
    assert done.returncode == 1 and "repository" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_client_is_installed_too(installed):
    done = subprocess.run(
        [str(installed["venv"] / "bin" / "memuse"), "--help"],
        cwd=installed["cwd"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "experiment" in done.stdout
