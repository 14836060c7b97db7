"""A tiny kernel tree with the files and anchors memuse edits, shaped like the real ones.

Tables mix tabs and spaces and carry an x32 block, as upstream's do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

MAKEFILE = """\
# SPDX-License-Identifier: GPL-2.0
VERSION = {major}
PATCHLEVEL = {minor}
SUBLEVEL = {sublevel}
EXTRAVERSION =
NAME = Fake Kernel

all:
\t@echo fake
"""

SYSCALL_64 = """\
# SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note
#
# 64-bit system call numbers and entry vectors
#
# The format is:
# <number> <abi> <name> <entry point>
#
0\tcommon\tread\t\t\tsys_read
1\tcommon\twrite\t\t\tsys_write
334\tcommon\trseq\t\t\tsys_rseq
335\tcommon\turetprobe\t\tsys_uretprobe
# don't use numbers 387 through 423, add new calls after the last
# 'common' entry
424\tcommon\tpidfd_send_signal\tsys_pidfd_send_signal
{last} \tcommon  mseal\t\t\tsys_mseal

#
# Due to a historical design error, certain syscalls are numbered differently
# in x32 as compared to native x86_64.  These syscalls have numbers 512-547.
#
512\tx32\trt_sigaction\t\tcompat_sys_rt_sigaction
547\tx32\tpwritev2\t\tcompat_sys_pwritev64v2
"""

SYSCALL_32 = """\
# SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note
#
# 32-bit system call numbers and entry vectors
#
0\ti386\trestart_syscall\t\tsys_restart_syscall
{last}\ti386\tmseal\t\t\tsys_mseal
"""

GENERIC_TABLE = """\
# SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note
#
0\tcommon\tio_setup\t\t\tsys_io_setup\t\t\tcompat_sys_io_setup
{last}\tcommon\tmseal\t\t\t\tsys_mseal
"""

UNISTD = """\
/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
#include <asm/bitsperlong.h>

#define __NR_io_setup 0
__SC_COMP(__NR_io_setup, sys_io_setup, compat_sys_io_setup)

#define __NR_mseal {last}
__SYSCALL(__NR_mseal, sys_mseal)

#undef __NR_syscalls
#define __NR_syscalls {total}

/*
 * 32 bit systems traditionally used different
 * syscalls for off_t and loff_t arguments
 */
"""

SYSCALLS_H = """\
/* SPDX-License-Identifier: GPL-2.0-only */
#ifndef _LINUX_SYSCALLS_H
#define _LINUX_SYSCALLS_H

#ifndef CONFIG_ARCH_HAS_SYSCALL_WRAPPER
asmlinkage long sys_io_setup(unsigned nr_reqs, aio_context_t __user *ctx);
asmlinkage long sys_mseal(unsigned long start, size_t len, unsigned long flags);

/*
 * Architecture-specific system calls
 */

/* x86 */
asmlinkage long sys_ioperm(unsigned long from, unsigned long num, int on);
#endif /* CONFIG_ARCH_HAS_SYSCALL_WRAPPER */

#endif
"""

SYS_C = """\
// SPDX-License-Identifier: GPL-2.0
/*
 *  linux/kernel/sys.c
 */

#include <linux/export.h>
#include <linux/mm.h>
#include <linux/uaccess.h>
#include <asm/io.h>
#include <asm/unistd.h>

#include "uid16.h"

SYSCALL_DEFINE0(getpid)
{
\treturn task_tgid_vnr(current);
}

#ifdef CONFIG_COMPAT
COMPAT_SYSCALL_DEFINE1(sysinfo, struct compat_sysinfo __user *, info)
{
\treturn 0;
}
#endif /* CONFIG_COMPAT */
"""


def fake_files(
    version: str = "6.12.0", last: int = 462, generic: bool = True
) -> Dict[str, Optional[str]]:
    major, minor, sublevel = (int(x) for x in version.split("."))
    files: Dict[str, Optional[str]] = {
        "Makefile": MAKEFILE.format(major=major, minor=minor, sublevel=sublevel),
        "arch/x86/entry/syscalls/syscall_64.tbl": SYSCALL_64.format(last=last),
        "arch/x86/entry/syscalls/syscall_32.tbl": SYSCALL_32.format(last=last),
        "include/uapi/asm-generic/unistd.h": UNISTD.format(last=last, total=last + 1),
        "include/linux/syscalls.h": SYSCALLS_H,
        "kernel/sys.c": SYS_C,
        "scripts/syscall.tbl": GENERIC_TABLE.format(last=last) if generic else None,
    }
    return files


def make_fake_tree(root: Path, **kwargs: object) -> Path:
    for rel, text in fake_files(**kwargs).items():  # type: ignore[arg-type]
        if text is None:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def snapshot(root: Path) -> Dict[str, bytes]:
    """Every file under root (state dir included) by relative path: compare for byte identity."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def mtimes(root: Path) -> Dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# A kbuild stand-in, like tuxmake's fakelinux: real make, real dependency tracking, fake
# compiler. FAIL_BUILD=1 in the environment makes the compile step fail like gcc would.
BUILD_MAKEFILE = """\
VERSION = {major}
PATCHLEVEL = {minor}
SUBLEVEL = {sublevel}
EXTRAVERSION =
O ?= .
KCONFIG_CONFIG ?= .config
CFG := $(O)/$(KCONFIG_CONFIG)
RELEASE := {major}.{minor}.{sublevel}-memuse
SRCS := kernel/sys.c kernel/fork.c
OBJS := $(SRCS:%.c=$(O)/%.o)
IMAGE := $(O)/arch/x86/boot/bzImage

all: $(IMAGE)

defconfig:
\t@mkdir -p $(O)
\t@printf 'CONFIG_64BIT=y\\nCONFIG_MODULES=y\\n' > $(CFG)

olddefconfig:
\t@test -f $(CFG)
\t@echo "# configuration written to $(KCONFIG_CONFIG)"

$(O)/%.o: %.c $(O)/.config
\t@test -z "$(FAIL_BUILD)" || {{ echo "$<:1:1: error: fake failure"; exit 2; }}
\t@mkdir -p $(dir $@)
\t@echo "  CC      $*.o"
\t@cp $< $@

$(IMAGE): $(OBJS)
\t@mkdir -p $(dir $@) $(O)/include/config
\t@echo $(RELEASE) > $(O)/include/config/kernel.release
\t@cat $^ > $@
\t@echo "Kernel: arch/x86/boot/bzImage is ready"

bindeb-pkg: all
\t@cd $(O)/.. && for p in linux-image-$(RELEASE) linux-headers-$(RELEASE) linux-libc-dev; do \\
\t  cp $(IMAGE) $${{p}}_$(KDEB_PKGVERSION)_amd64.deb; done
\t@touch $(O)/../linux-upstream_$(KDEB_PKGVERSION)_amd64.buildinfo
\t@touch $(O)/../linux-upstream_$(KDEB_PKGVERSION)_amd64.changes
\t@echo "dpkg-deb: building package 'linux-image-$(RELEASE)'"

.PHONY: all defconfig olddefconfig bindeb-pkg
"""

SCRIPTS_CONFIG = """\
#!/bin/sh
# scripts/config stand-in: appends each requested setting to the file
while [ $# -gt 0 ]; do
  case "$1" in
    --file) file=$2; shift 2;;
    --set-str) printf 'CONFIG_%s="%s"\\n' "$2" "$3" >> "$file"; shift 3;;
    --enable) printf 'CONFIG_%s=y\\n' "$2" >> "$file"; shift 2;;
    --disable) printf '# CONFIG_%s is not set\\n' "$2" >> "$file"; shift 2;;
    *) echo "config: unknown $1" >&2; exit 1;;
  esac
done
"""

MERGE_CONFIG = """\
#!/bin/sh
# merge_config.sh stand-in: -m -O DIR BASE FRAGMENT... appended into $KCONFIG_CONFIG
shift 3
base=$1; shift
cat "$@" >> "$KCONFIG_CONFIG"
"""


def make_fake_buildable_tree(root: Path, version: str = "7.2.0") -> Path:
    make_fake_tree(root, version=version, last=471)
    major, minor, sublevel = (int(x) for x in version.split("."))
    (root / "Makefile").write_text(
        BUILD_MAKEFILE.format(major=major, minor=minor, sublevel=sublevel)
    )
    (root / "kernel/fork.c").write_text("/* fork */\n")
    for rel, text in (
        ("scripts/config", SCRIPTS_CONFIG),
        ("scripts/kconfig/merge_config.sh", MERGE_CONFIG),
    ):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    return root
