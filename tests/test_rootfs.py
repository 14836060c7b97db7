"""The guest's root filesystem without the network: its recipe, what is added to the
extracted packages, the cache's reuse and a failed build's cleanup (a fake mmdebstrap that
writes a tarball as the real one does), and the preflight's one line."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from memuse_kit.core import arch
from memuse_kit.core.errors import KitError
from memuse_kit.trying import guest_preflight, machine_image, rootfs
from memuse_kit.trying.rootfs import GUEST_INIT, RootfsRecipe, ensure_rootfs, recipe_for

PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"
# stands in for mmdebstrap: runs the setup hook on a tree, adds a few files, writes the tar
FAKE_MMDEBSTRAP = f"""#!{sys.executable}
import io, os, subprocess, sys, tarfile, tempfile
from pathlib import Path
calls = Path(os.environ["FAKE_CALLS"])
calls.write_text((calls.read_text() if calls.exists() else "") + " ".join(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_FAIL"):
    print("E: Unable to locate package python3-pytest")
    sys.exit(1)
args = [a for a in sys.argv[1:] if not a.startswith("--")]
tarball = args[1]
hook = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--setup-hook="))
tree = Path(tempfile.mkdtemp())
subprocess.run(["sh", "-c", hook, "hook", str(tree)], check=True)
(tree / "usr/bin/python3").write_text("elf")
(tree / "usr/bin/python3").chmod(0o4755)
(tree / "usr/lib/{PY}").mkdir(parents=True)
(tree / "usr/lib/{PY}/mod.py").write_text("X = 1\\n")
(tree / "etc").mkdir()
(tree / "proc").mkdir(mode=0o555)
with tarfile.open(tarball, "w") as tar:
    tar.add(str(tree), arcname=".")
    node = tarfile.TarInfo("./dev/null")
    node.type, node.devmajor, node.devminor, node.mode = tarfile.CHRTYPE, 1, 3, 0o666
    tar.addfile(node)
"""


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_mmdebstrap(tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    tool = bin_dir / "mmdebstrap"
    tool.write_text(FAKE_MMDEBSTRAP)
    tool.chmod(0o755)
    calls = tmp_path / "calls"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(rootfs, "check_rootfs_host", lambda: None)
    return calls


def test_the_recipe_names_the_architecture_and_follows_its_content():
    recipe = recipe_for(arch.ARM64)
    assert recipe.debian_arch == "arm64" and {"python3", "python3-pytest"} <= set(recipe.packages)
    name = recipe.name()
    assert name.startswith("debian-bookworm-arm64-") and len(name.rsplit("-", 1)[1]) == 16
    assert recipe.digest() == recipe_for(arch.ARM64).digest()
    assert recipe_for(arch.X86_64).digest() != recipe.digest()
    changed = [
        dataclasses.replace(recipe, packages=(*recipe.packages, "strace")),
        dataclasses.replace(recipe, passwd=recipe.passwd + "x:x:1:1::/:/bin/sh\n"),
        dataclasses.replace(recipe, bootstrap=recipe.bootstrap + "#\n"),
        dataclasses.replace(recipe, suite="trixie"),
    ]
    assert len({r.digest() for r in changed} | {recipe.digest()}) == 5


def test_the_packages_come_only_from_debians_archive():
    sources = RootfsRecipe("arm64").sources()
    assert sources and all(line.split()[1].startswith("http://deb.debian.org/") for line in sources)


def test_mmdebstrap_extracts_rootless_into_a_tarball(tmp_path):
    cmd = rootfs.mmdebstrap_command(recipe_for(arch.ARM64), tmp_path / "r.tar")
    assert cmd[0] == "mmdebstrap"
    assert {"--mode=unshare", "--variant=extract", "--format=tar", "--architectures=arm64"} <= set(
        cmd
    )
    include = next(a for a in cmd if a.startswith("--include="))
    assert "python3," in include and "python3-pytest" in include and "busybox" in include
    assert cmd[cmd.index("bookworm") + 1] == str(tmp_path / "r.tar")


def test_the_merged_usr_hook_makes_the_links(tmp_path):
    import subprocess

    subprocess.run(["sh", "-c", rootfs.MERGED_USR_HOOK, "hook", str(tmp_path)], check=True)
    for name in ("bin", "sbin", "lib"):
        assert os.readlink(tmp_path / name) == f"usr/{name}" and (tmp_path / "usr" / name).is_dir()


def test_a_build_completes_the_tree_and_is_reused(cache, fake_mmdebstrap):
    recipe = recipe_for(arch.ARM64)
    built = ensure_rootfs(recipe)
    root = built.root
    assert built.home == cache / "rootfs" / recipe.name()
    assert os.readlink(root / "bin") == "usr/bin" and (root / "bin/python3").is_file()
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert passwd[0].startswith("root:x:0:0:") and any(
        line.startswith("nobody:x:65534:65534:") for line in passwd
    )
    assert "nogroup:x:65534:" in (root / "etc/group").read_text().splitlines()
    init = root / GUEST_INIT.lstrip("/")
    assert os.access(init, os.X_OK) and "memuse-boot" in init.read_text()
    assert stat.S_IMODE((root / "usr/bin/python3").stat().st_mode) == 0o755  # setuid dropped
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert (root / "dev").is_dir() and not list((root / "dev").iterdir())  # no device nodes
    assert list((root / f"usr/lib/{PY}/__pycache__").glob("mod.*.pyc"))
    info = json.loads((built.home / "rootfs.json").read_text())
    assert info["status"] == "complete" and info["bytecode"] is True and info["bytes"] > 0
    assert not (built.home / "rootfs.tar").exists()
    assert [p.name for p in (cache / "rootfs").iterdir()] == [recipe.name()]
    again = ensure_rootfs(recipe)
    assert again.home == built.home
    assert len(fake_mmdebstrap.read_text().splitlines()) == 1  # mmdebstrap ran once


def test_a_failed_build_leaves_nothing_behind(cache, fake_mmdebstrap, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(KitError, match=r"mmdebstrap failed .*E: Unable to locate package"):
        ensure_rootfs(recipe_for(arch.ARM64))
    assert list((cache / "rootfs").iterdir()) == []


def test_a_half_built_tree_is_not_used(cache, fake_mmdebstrap):
    recipe = recipe_for(arch.ARM64)
    home = rootfs.rootfs_home(recipe)
    (home / "root").mkdir(parents=True)
    (home / "rootfs.json").write_text('{"status": "building"}')
    assert rootfs.load_rootfs(recipe) is None
    with pytest.raises(KitError, match=r"not a finished root filesystem: remove it \(rm -rf"):
        ensure_rootfs(recipe)
    assert [p.name for p in (cache / "rootfs").iterdir()] == [recipe.name()]  # no stage left


def test_a_dry_run_prints_the_build_and_touches_nothing(cache, capsys, monkeypatch):
    monkeypatch.setattr(rootfs, "check_rootfs_host", lambda: pytest.fail("checked"))
    result = ensure_rootfs(recipe_for(arch.ARM64), dry_run=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("mmdebstrap --mode=unshare --variant=extract")
    assert out[1].startswith("tar --extract") and "--no-same-owner" in out[1]
    assert result.root == rootfs.rootfs_home(recipe_for(arch.ARM64)) / "root"
    assert not cache.exists()


def test_remove_tree_goes_through_read_only_directories(tmp_path):
    locked = tmp_path / "t/proc/sub"
    locked.mkdir(parents=True)
    (locked / "f").write_text("x")
    locked.chmod(0o555)
    locked.parent.chmod(0o555)
    rootfs.remove_tree(tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_the_preflight_names_every_missing_package_in_one_line(monkeypatch):
    monkeypatch.setattr(guest_preflight.shutil, "which", lambda _: None)
    monkeypatch.setattr(guest_preflight, "static_libc", lambda _: Path("/nonexistent/libc.a"))
    with pytest.raises(KitError) as error:
        guest_preflight.check_guest_host(arch.ARM64)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("arm64 guests need: sudo apt-get install ")
    packages = message.split("install ", 1)[1].split()
    assert packages == sorted(packages)
    expected = {"mmdebstrap", "gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-system-arm"}
    assert expected <= set(packages)


def test_the_preflight_passes_when_everything_is_there(monkeypatch):
    monkeypatch.setattr(guest_preflight.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(guest_preflight, "static_libc", lambda _: Path(sys.executable))
    monkeypatch.setattr(guest_preflight, "subordinate_ids_problem", lambda: None)
    assert guest_preflight.missing_packages(arch.ARM64) == []
    guest_preflight.check_guest_host(arch.ARM64)


def test_the_preflight_asks_for_subordinate_ids(monkeypatch):
    monkeypatch.setattr(guest_preflight.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(guest_preflight.os, "getuid", lambda: 4321)
    monkeypatch.setattr(machine_image, "_has_subordinate_ids", lambda user: False)
    monkeypatch.setattr(machine_image.pwd, "getpwuid", lambda _: type("E", (), {"pw_name": "u"}))
    assert guest_preflight.rootfs_problems() == [
        "mmdebstrap --mode=unshare needs subordinate ids for u: sudo usermod --add-subuids "
        "100000-165535 --add-subgids 100000-165535 u"
    ]


def test_the_static_libc_is_debians_cross_one():
    assert guest_preflight.static_libc(arch.ARM64) == Path("/usr/aarch64-linux-gnu/lib/libc.a")
    assert guest_preflight.static_libc_package(arch.ARM64) == "libc6-dev-arm64-cross"
