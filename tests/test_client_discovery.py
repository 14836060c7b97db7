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
    kwargs.setdefault("machine", "x86_64")  # the symbols above are x86_64's, whatever the host
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
    paths = [str(p) for p in discovery.default_header_paths("7.2.0-memuse", "x86_64")]
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


# --- arm64: the __arm64_sys_ wrapper, asm-generic numbers ----------------------------------

ARM64_WITH_MEMUSE = "ffff8000800f1234 T __arm64_sys_memuse\nffff8000800f1250 t __do_sys_memuse\n"
ARM64_WITHOUT_MEMUSE = "ffff8000800f1234 T __arm64_sys_mseal\nffff8000800f1240 t memuse_walk\n"
# how include/uapi/asm-generic/unistd.h (and 6.11's generated unistd_64.h) give a number
GENERIC_UNISTD = (
    "#define __NR_mseal 462\n__SYSCALL(__NR_mseal, sys_mseal)\n"
    "#define __NR_memuse 463\n__SYSCALL(__NR_memuse, sys_memuse)\n"
    "#undef __NR_syscalls\n#define __NR_syscalls 464\n"
)


@pytest.mark.parametrize("machine", ["aarch64", "arm64"])
def test_arm64_kallsyms_shows_memuse_by_its_arm64_wrapper(tmp_path, machine):
    path = kallsyms(tmp_path, ARM64_WITH_MEMUSE)
    assert discovery.kallsyms_has("memuse", path, machine) is True
    assert discovery.kallsyms_has("memuse", path, "x86_64") is False  # not x86's wrapper
    assert (
        discovery.kallsyms_has("memuse", kallsyms(tmp_path, ARM64_WITHOUT_MEMUSE), machine) is False
    )


def test_x86_64s_wrapper_is_no_evidence_on_arm64(tmp_path):
    assert discovery.kallsyms_has("memuse", kallsyms(tmp_path, WITH_MEMUSE), "aarch64") is False
    assert discovery.kallsyms_has_memuse(kallsyms(tmp_path, WITH_MEMUSE), "x86_64") is True


def test_another_machine_counts_only_a_plain_sys_symbol(tmp_path):
    assert discovery.kallsyms_has("memuse", kallsyms(tmp_path, WITH_MEMUSE), "riscv64") is False
    assert discovery.kallsyms_has("memuse", kallsyms(tmp_path, "0 T sys_memuse\n"), "riscv64")


def test_an_asm_generic_number_is_trusted_once_arm64_kallsyms_has_memuse(env, tmp_path):
    path = tmp_path / "unistd.h"
    path.write_text(GENERIC_UNISTD)
    found = find(env, tmp_path, [path], ARM64_WITH_MEMUSE, machine="aarch64")
    assert found == SyscallNumber(463, f"header {path}", verified=True)
    with pytest.raises(MemuseUnavailable, match=r"has no memuse system call \(.* says 463\)"):
        find(env, tmp_path, [path], ARM64_WITHOUT_MEMUSE, machine="aarch64")


def test_an_override_is_confirmed_by_arm64_kallsyms(env, tmp_path):
    path = tmp_path / "unistd.h"
    path.write_text(GENERIC_UNISTD)
    env["MEMUSE_NR"] = "463"
    assert find(env, tmp_path, [path], ARM64_WITH_MEMUSE, machine="aarch64").verified
    with pytest.raises(MemuseUnavailable, match=r"has no memuse system call .* so system call 463"):
        find(env, tmp_path, [path], ARM64_WITH_MEMUSE, machine="x86_64")


@pytest.mark.parametrize("machine", ["aarch64", "arm64"])
def test_arm64_header_paths_are_the_build_trees_then_asm_generic(machine):
    paths = [str(p) for p in discovery.default_header_paths("7.2.0-memuse", machine)]
    assert paths == [
        "/lib/modules/7.2.0-memuse/build/arch/arm64/include/generated/uapi/asm/unistd_64.h",
        "/lib/modules/7.2.0-memuse/build/include/uapi/asm-generic/unistd.h",
        "/usr/include/aarch64-linux-gnu/asm/unistd_64.h",
        "/usr/include/asm-generic/unistd.h",
    ]


def test_discover_reads_the_headers_of_the_machine_it_is_told(env, tmp_path, monkeypatch):
    asked = []

    def paths(release, machine=None):
        asked.append((release, machine))
        return []

    monkeypatch.setattr(discovery, "default_header_paths", paths)
    with pytest.raises(MemuseUnavailable):
        discover(env=env, release=RELEASE, kallsyms=kallsyms(tmp_path, ""), machine="aarch64")
    assert asked == [(RELEASE, "aarch64")]


def test_an_arm64_guest_reads_the_arm64_record_of_a_release_both_architectures_built(env, tmp_path):
    """The host's cache, shared with the arm64 guest, holds the x86_64 and the arm64 build of
    one tree: the same release. A record without an arch is x86_64's (written before arm64)."""
    root = Path(env["MEMUSE_KIT_CACHE"])
    common = {"kernel_release": RELEASE, "status": "success", "schema": 2}
    write_build(root, "x86", syscalls={"memuse": 472}, finished="2026-11-29T18", **common)
    arm = write_build(
        root, "arm", syscalls={"memuse": 470}, arch="arm64", finished="2026-11-29T17", **common
    )
    symbols = "ffff800080001230 T __arm64_sys_memuse\n"
    assert find(env, tmp_path, symbols=symbols, machine="aarch64") == SyscallNumber(
        470, f"build metadata {arm}", verified=True
    )
    assert find(env, tmp_path).nr == 472
