from __future__ import annotations

import json
from pathlib import Path

import pytest

from memuse_client import discovery
from memuse_client.discovery import SyscallNumber, discover
from memuse_client.errors import MemuseUnavailable

RELEASE = "7.2.0-memuse"
WITH_MEMUSE = "ffffffff81001230 T __x64_sys_memuse\nffffffff81001240 T __ia32_sys_memuse\n"
WITHOUT_MEMUSE = "ffffffff81001230 T __x64_sys_mseal\nffffffff81001240 t sys_memuse_helper\n"


def write_build(root: Path, name: str, **fields) -> Path:
    path = root / "builds" / name / "metadata.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(fields))
    return path


def header(tmp_path: Path, name: str, nr: int) -> Path:
    path = tmp_path / name
    path.write_text(f"#define __NR_mseal 462\n#define __NR_memuse {nr}\n#define __NR_x 1\n")
    return path


def kallsyms(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kallsyms"
    path.write_text(text)
    return path


@pytest.fixture
def env(tmp_path) -> dict:
    return {"MEMUSE_KIT_CACHE": str(tmp_path / "cache")}


def find(env: dict, tmp_path: Path, headers=(), symbols: str = WITH_MEMUSE, **kwargs):
    return discover(
        env=env,
        release=RELEASE,
        header_paths=list(headers),
        kallsyms=kallsyms(tmp_path, symbols),
        **kwargs,
    )


def test_cache_root_follows_the_kits_rule(tmp_path):
    assert discovery.cache_root({"MEMUSE_KIT_CACHE": "/x/c"}) == Path("/x/c")
    assert discovery.cache_root({"XDG_CACHE_HOME": "/x/xdg"}) == Path("/x/xdg/memuse-kit")
    assert discovery.cache_root({}) == Path.home() / ".cache" / "memuse-kit"


def test_an_override_is_used_only_when_confirmed_or_forced(env, tmp_path):
    # issue 9: an explicit number is checked like a discovered one (it used to win unchecked)
    env["MEMUSE_NR"] = "999"
    write_build(Path(env["MEMUSE_KIT_CACHE"]), "a", kernel_release=RELEASE, syscall_nr=472)
    with pytest.raises(MemuseUnavailable, match=r"refusing to call system call 12 \(from --nr\)"):
        find(env, tmp_path, override=12)
    assert find(env, tmp_path, override=12, force=True) == SyscallNumber(12, "--nr", False)
    assert find(env, tmp_path, override=472) == SyscallNumber(472, "--nr", verified=True)
    with pytest.raises(MemuseUnavailable, match=r"system call 999 \(from MEMUSE_NR\)"):
        find(env, tmp_path, symbols=WITHOUT_MEMUSE)
    env["MEMUSE_FORCE"] = "1"
    assert find(env, tmp_path, symbols=WITHOUT_MEMUSE) == SyscallNumber(
        999, "MEMUSE_NR", verified=False
    )
    env["MEMUSE_NR"] = "0x1d8"
    assert find(env, tmp_path).nr == 472


@pytest.mark.parametrize("bad", ["abc", "-3", "4.5"])
def test_a_bad_override_is_a_value_error(env, tmp_path, bad):
    env["MEMUSE_NR"] = bad
    with pytest.raises(ValueError, match="MEMUSE_NR must be a system call number"):
        find(env, tmp_path)


def test_metadata_of_the_running_release_is_trusted_without_kallsyms(env, tmp_path):
    root = Path(env["MEMUSE_KIT_CACHE"])
    write_build(root, "other", kernel_release="6.1.0-memuse", syscall_nr=451, status="success")
    path = write_build(root, "mine", kernel_release=RELEASE, syscall_nr=472, status="success")
    found = find(env, tmp_path, symbols=WITHOUT_MEMUSE)
    assert found == SyscallNumber(472, f"build metadata {path}", verified=True)


def test_metadata_prefers_the_latest_successful_build(env, tmp_path):
    root = Path(env["MEMUSE_KIT_CACHE"])
    common = {"kernel_release": RELEASE}
    write_build(root, "a", syscall_nr=470, status="success", finished="2026-01-01", **common)
    write_build(root, "b", syscall_nr=471, status="success", finished="2026-03-01", **common)
    write_build(root, "c", syscall_nr=473, status="failed", finished="2026-05-01", **common)
    write_build(root, "d", status="running", **common)  # no syscall_nr yet
    (root / "builds" / "e").mkdir()
    (root / "builds" / "e" / "metadata.json").write_text("{not json")
    assert find(env, tmp_path).nr == 471


def test_headers_in_order_when_kallsyms_has_memuse(env, tmp_path):
    missing = tmp_path / "absent.h"
    plain = tmp_path / "plain.h"
    plain.write_text("#define __NR_mseal 462\n")
    first = header(tmp_path, "first.h", 451)
    second = header(tmp_path, "second.h", 452)
    found = find(env, tmp_path, headers=[missing, plain, first, second])
    assert found == SyscallNumber(451, f"header {first}", verified=True)


def test_bare_sys_memuse_in_kallsyms_counts(env, tmp_path):
    found = find(env, tmp_path, headers=[header(tmp_path, "h", 451)], symbols="0 T sys_memuse\n")
    assert found.nr == 451


def test_a_header_number_is_refused_when_the_kernel_lacks_memuse(env, tmp_path):
    path = header(tmp_path, "unistd_64.h", 451)
    with pytest.raises(MemuseUnavailable) as caught:
        find(env, tmp_path, headers=[path], symbols=WITHOUT_MEMUSE)
    message = str(caught.value)
    assert f"({RELEASE}) has no memuse system call" in message
    assert f"{path} says 451" in message
    assert "invoke build install" in message and "invoke vm" in message


def test_nothing_known_says_how_to_get_a_memuse_kernel(env, tmp_path):
    with pytest.raises(MemuseUnavailable, match=r"invoke build install.*invoke vm"):
        find(env, tmp_path, symbols=WITHOUT_MEMUSE)


def test_memuse_in_kallsyms_without_a_number_asks_for_one(env, tmp_path):
    with pytest.raises(MemuseUnavailable, match=r"has memuse but its number is unknown.*MEMUSE_NR"):
        find(env, tmp_path)


def test_unreadable_kallsyms_refuses_a_header_number(env, tmp_path):
    path = header(tmp_path, "h", 451)
    with pytest.raises(MemuseUnavailable, match="MEMUSE_NR=451"):
        discover(env=env, release=RELEASE, header_paths=[path], kallsyms=tmp_path / "none")


def test_default_header_paths_include_the_running_kernels_build_tree():
    paths = [str(p) for p in discovery.default_header_paths("7.2.0-memuse")]
    assert paths == [
        "/lib/modules/7.2.0-memuse/build/arch/x86/include/generated/uapi/asm/unistd_64.h",
        "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
        "/usr/include/asm/unistd_64.h",
    ]


def test_a_record_of_another_schema_is_no_evidence(env, tmp_path):
    root = Path(env["MEMUSE_KIT_CACHE"])
    write_build(root, "old", kernel_release=RELEASE, syscall_nr=470, status="success")
    later = {"memuse": 471}
    write_build(root, "new", kernel_release=RELEASE, syscalls=later, status="success", schema=3)
    assert find(env, tmp_path).nr == 470


WITH_BOTH = WITH_MEMUSE + "ffffffff81001250 T __x64_sys_fdcount\n"


def test_each_syscall_is_found_by_its_name_in_the_build_record(env, tmp_path):
    root = Path(env["MEMUSE_KIT_CACHE"])
    both = {"memuse": 472, "fdcount": 473}
    path = write_build(root, "b", kernel_release=RELEASE, syscalls=both, status="success", schema=2)
    assert find(env, tmp_path, symbols=WITH_BOTH, name="fdcount") == SyscallNumber(
        473, f"build metadata {path}", verified=True
    )
    assert find(env, tmp_path, symbols=WITH_BOTH).nr == 472  # memuse, unless told


def test_a_build_without_the_syscall_is_no_evidence_for_it(env, tmp_path):
    root = Path(env["MEMUSE_KIT_CACHE"])
    write_build(root, "old", kernel_release=RELEASE, syscall_nr=472, status="success")  # schema 1
    with pytest.raises(MemuseUnavailable, match=r"has no fdcount system call: .*--syscall fdcount"):
        find(env, tmp_path, symbols=WITH_MEMUSE, name="fdcount")


def test_headers_and_kallsyms_are_read_for_the_name_asked(env, tmp_path):
    path = tmp_path / "unistd_64.h"
    path.write_text("#define __NR_memuse 472\n#define __NR_fdcount 473\n")
    assert find(env, tmp_path, headers=[path], symbols=WITH_BOTH, name="fdcount").nr == 473
    with pytest.raises(MemuseUnavailable, match=r"has no fdcount system call \(.* says 473\)"):
        find(env, tmp_path, headers=[path], symbols=WITH_MEMUSE, name="fdcount")


def test_each_syscall_has_its_own_override_variable(env, tmp_path):
    root = Path(env["MEMUSE_KIT_CACHE"])
    both = {"memuse": 472, "fdcount": 473}
    write_build(root, "b", kernel_release=RELEASE, syscalls=both, status="success", schema=2)
    env["FDCOUNT_NR"] = "473"
    assert find(env, tmp_path, symbols=WITH_BOTH, name="fdcount").source == "FDCOUNT_NR"
    env["FDCOUNT_NR"] = "472"  # memuse's number: not fdcount's, so refused
    with pytest.raises(MemuseUnavailable, match=r"confirmed to be fdcount.*FDCOUNT_FORCE=1"):
        find(env, tmp_path, symbols=WITH_BOTH, name="fdcount")
    assert find(env, tmp_path, symbols=WITH_BOTH).source.startswith("build metadata")
