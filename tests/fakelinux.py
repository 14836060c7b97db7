"""A tiny kernel tree with the files and anchors the kit's syscalls edit, shaped like the
real ones.

Tables mix tabs and spaces and carry an x32 block, as upstream's do; kernel/Makefile starts
with a multi-line obj-y list; MAINTAINERS has sections in order and THE REST last.
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

KERNEL_MAKEFILE = """\
# SPDX-License-Identifier: GPL-2.0
#
# Makefile for the linux kernel.
#

obj-y     = fork.o \\
\t    sys.o

obj-$(CONFIG_MULTIUSER) += groups.o
obj-$(CONFIG_VHOST_TASK) += vhost_task.o

ifdef CONFIG_FUNCTION_TRACER
CFLAGS_REMOVE_irq_work.o = $(CC_FLAGS_FTRACE)
endif
"""

MAINTAINERS = """\
List of maintainers
===================

Descriptions of section entries and preferred order
---------------------------------------------------

	M: *Mail* patches to: FullName <address@domain>
	S: *Status*, one of the following:

Maintainers List
----------------

FCOE SUBSYSTEM (libfc, libfcoe, fcoe)
M:	Hannes Reinecke <hare@suse.de>
S:	Supported
F:	drivers/scsi/fcoe/

FEI SUBSYSTEM
M:	Someone Else <else@example.org>
S:	Maintained
F:	drivers/fei/

MEMORY MANAGEMENT
M:	Andrew Morton <akpm@linux-foundation.org>
S:	Maintained
F:	mm/

MEN A21 WATCHDOG DRIVER
M:	Johannes Thumshirn <morbidrsa@gmail.com>
S:	Maintained
F:	drivers/watchdog/mena21_wdt.c

THE REST
M:	Linus Torvalds <torvalds@linux-foundation.org>
S:	Buried alive in reporters
F:	*
F:	*/
"""

# fs/file.c, which fdcount's spec probes: 5.10 still defines get_files_struct()
FILE_C = {
    "new": """\
void put_files_struct(struct files_struct *files)
{
	if (atomic_dec_and_test(&files->count))
		kmem_cache_free(files_cachep, files);
}
""",
    "old": """\
struct files_struct *get_files_struct(struct task_struct *task)
{
	struct files_struct *files;

	task_lock(task);
	files = task->files;
	if (files)
		atomic_inc(&files->count);
	task_unlock(task);

	return files;
}

void put_files_struct(struct files_struct *files)
{
	if (atomic_dec_and_test(&files->count))
		kmem_cache_free(files_cachep, files);
}
""",
}

# The sources memuse_kit.patching.probes reads, in the shape of 7.x ("new") and of 5.10 ("old").
MMAP_LOCK_H = """\
static inline int mmap_read_lock_killable(struct mm_struct *mm)
{
\treturn down_read_killable(&mm->mmap_lock);
}

static inline int mmap_lock_is_contended(struct mm_struct *mm)
{
\treturn rwsem_is_contended(&mm->mmap_lock);
}
"""

PGTABLE_H = {
    "new": """\
static inline pte_t ptep_get(pte_t *ptep)
{
\treturn READ_ONCE(*ptep);
}
""",
    "old": """\
static inline pte_t ptep_get(pte_t *ptep)
{
\treturn READ_ONCE(*ptep);
}

static inline int pmd_devmap(pmd_t pmd)
{
\treturn 0;
}

static inline int pmd_trans_unstable(pmd_t *pmd)
{
\treturn 0;
}
""",
}

MM_H = {
    "new": """\
static inline bool vma_is_initial_heap(const struct vm_area_struct *vma)
{
       return vma->vm_start < vma->vm_mm->brk &&
\t\tvma->vm_end > vma->vm_mm->start_brk;
}

static inline bool vma_is_initial_stack(const struct vm_area_struct *vma)
{
\treturn vma->vm_start <= vma->vm_mm->start_stack &&
\t       vma->vm_end >= vma->vm_mm->start_stack;
}

pte_t *pte_offset_map_lock(struct mm_struct *mm, pmd_t *pmd,
\t\t\t   unsigned long addr, spinlock_t **ptlp);
""",
    "old": """\
#define pte_offset_map_lock(mm, pmd, address, ptlp)\t\\
({\t\t\t\t\t\t\t\\
\tspinlock_t *__ptl = pte_lockptr(mm, pmd);\t\\
\tpte_t *__pte = pte_offset_map(pmd, address);\t\\
\t*(ptlp) = __ptl;\t\t\t\t\\
\tspin_lock(__ptl);\t\t\t\t\\
\t__pte;\t\t\t\t\t\t\\
})
""",
}

GENERIC_HUGETLB_H = {
    "new": """\
static inline pte_t huge_ptep_get(struct mm_struct *mm, unsigned long addr, pte_t *ptep)
{
\treturn ptep_get(ptep);
}
""",
    "old": """\
static inline pte_t huge_ptep_get(pte_t *ptep)
{
\treturn ptep_get(ptep);
}
""",
}

PAGEWALK_C = {
    "new": """\
int walk_page_vma(struct vm_area_struct *vma, const struct mm_walk_ops *ops,
\t\tvoid *private)
{
\treturn __walk_page_range(vma->vm_start, vma->vm_end, &walk);
}
""",
    "old": """\
int walk_page_vma(struct vm_area_struct *vma, const struct mm_walk_ops *ops,
\t\tvoid *private)
{
\terr = walk_page_test(vma->vm_start, vma->vm_end, &walk);
\tif (err > 0)
\t\treturn 0;
\treturn __walk_page_range(vma->vm_start, vma->vm_end, &walk);
}
""",
}

FORK_C = {
    "new": """\
struct mm_struct *mm_access(struct task_struct *task, unsigned int mode)
{
\tmm = get_task_mm(task);
\tif (!mm) {
\t\tmm = ERR_PTR(-ESRCH);
\t}
\treturn mm;
}
""",
    "old": """\
struct mm_struct *mm_access(struct task_struct *task, unsigned int mode)
{
\tmm = get_task_mm(task);
\treturn mm;
}
""",
}

HUGE_MEMORY_C = """\
struct page *follow_trans_huge_pmd(struct vm_area_struct *vma,
\t\t\t\t   unsigned long addr, pmd_t *pmd, unsigned int flags)
{
\tif ((flags & FOLL_NUMA) && pmd_protnone(*pmd))
\t\treturn NULL;
\treturn pmd_page(*pmd);
}
"""

TASK_MMU_C = {
    "new": """\
static void smaps_pte_entry(pte_t *pte, unsigned long addr, struct mm_walk *walk)
{
\tif (pte_present(ptent)) {
\t\tpage = vm_normal_page(vma, addr, ptent);
\t} else {
\t\tconst softleaf_t entry = softleaf_from_pte(ptent);

\t\tif (softleaf_has_pfn(entry))
\t\t\tpage = softleaf_to_page(entry);
\t}
}

static void smaps_pmd_entry(pmd_t *pmd, unsigned long addr, struct mm_walk *walk)
{
\tif (pmd_present(*pmd))
\t\tpage = vm_normal_page_pmd(vma, addr, *pmd);
\telse if (softleaf_has_pfn(softleaf_from_pmd(*pmd)))
\t\tpage = softleaf_to_page(softleaf_from_pmd(*pmd));
}

static int smaps_hugetlb_range(pte_t *pte, unsigned long hmask, unsigned long addr,
\t\t\t\t unsigned long end, struct mm_walk *walk)
{
\tif (softleaf_has_pfn(softleaf_from_pte(ptent)))
\t\tpresent = false;
\treturn 0;
}

static int show_smaps_rollup(struct seq_file *m, void *v)
{
\tif (mmap_lock_is_contended(mm))
\t\tmmap_read_unlock(mm);
\treturn 0;
}
""",
    "old": """\
static void show_map_vma(struct seq_file *m, struct vm_area_struct *vma)
{
\tif (vma->vm_start <= mm->brk && vma->vm_end >= mm->start_brk)
\t\tname = "[heap]";
}

static void smaps_pte_entry(pte_t *pte, unsigned long addr, struct mm_walk *walk)
{
\tif (is_migration_entry(swpent))
\t\tpage = migration_entry_to_page(swpent);
\telse if (is_device_private_entry(swpent))
\t\tpage = device_private_entry_to_page(swpent);
}

static void smaps_pmd_entry(pmd_t *pmd, unsigned long addr, struct mm_walk *walk)
{
\tif (pmd_present(*pmd))
\t\tpage = follow_trans_huge_pmd(vma, addr, pmd, FOLL_DUMP);
\telse if (is_migration_entry(entry))
\t\tpage = migration_entry_to_page(entry);
}

static int smaps_hugetlb_range(pte_t *pte, unsigned long hmask, unsigned long addr,
\t\t\t\t unsigned long end, struct mm_walk *walk)
{
\tif (is_migration_entry(swpent))
\t\tpage = migration_entry_to_page(swpent);
\treturn 0;
}

static int show_smaps_rollup(struct seq_file *m, void *v)
{
\tif (mmap_lock_is_contended(mm))
\t\tmmap_read_unlock(mm);
\treturn 0;
}
""",
}


def probed_files(style: str = "new") -> Dict[str, str]:
    """The files memuse_kit.patching.probes reads: "new" probes like 7.2, "old" like 5.10."""
    return {
        "include/linux/mm.h": MM_H[style],
        "include/linux/mmap_lock.h": MMAP_LOCK_H,
        "include/linux/pgtable.h": PGTABLE_H[style],
        "include/asm-generic/hugetlb.h": GENERIC_HUGETLB_H[style],
        "fs/proc/task_mmu.c": TASK_MMU_C[style],
        "mm/pagewalk.c": PAGEWALK_C[style],
        "mm/huge_memory.c": HUGE_MEMORY_C,
        "kernel/fork.c": FORK_C[style],
        "fs/file.c": FILE_C[style],
    }


def fake_files(
    version: str = "6.12.0", last: int = 462, generic: bool = True, mm: str = "new"
) -> Dict[str, Optional[str]]:
    major, minor, sublevel = (int(x) for x in version.split("."))
    files: Dict[str, Optional[str]] = {
        "Makefile": MAKEFILE.format(major=major, minor=minor, sublevel=sublevel),
        "arch/x86/entry/syscalls/syscall_64.tbl": SYSCALL_64.format(last=last),
        "arch/x86/entry/syscalls/syscall_32.tbl": SYSCALL_32.format(last=last),
        "include/uapi/asm-generic/unistd.h": UNISTD.format(last=last, total=last + 1),
        "include/linux/syscalls.h": SYSCALLS_H,
        "kernel/sys.c": SYS_C,
        "kernel/Makefile": KERNEL_MAKEFILE,
        "MAINTAINERS": MAINTAINERS,
        "scripts/syscall.tbl": GENERIC_TABLE.format(last=last) if generic else None,
        **probed_files(mm),
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
# compiler, real (tiny) .deb packages built with dpkg-deb. FAIL_BUILD=1 in the environment
# makes the compile step fail like gcc would.
BUILD_MAKEFILE = """\
VERSION = {major}
PATCHLEVEL = {minor}
SUBLEVEL = {sublevel}
EXTRAVERSION =
O ?= .
KCONFIG_CONFIG ?= .config
CFG := $(O)/$(KCONFIG_CONFIG)
RELEASE := {major}.{minor}.{sublevel}-memuse
# the objects kernel/Makefile lists unconditionally, as kbuild builds them
include kernel/Makefile
SRCS := $(obj-y:%.o=kernel/%.c)
OBJS := $(SRCS:%.c=$(O)/%.o)
# ARCH=arm64 (a cross build) sets CONFIG_ARM64 and makes arm64's image, as kbuild does
ARCH ?= x86
ifeq ($(ARCH),arm64)
IMAGE_NAME := arch/arm64/boot/Image
ARCH_OPTION := CONFIG_ARM64=y\\n
else
IMAGE_NAME := arch/x86/boot/bzImage
ARCH_OPTION :=
endif
IMAGE := $(O)/$(IMAGE_NAME)

all: $(IMAGE)

defconfig:
\t@mkdir -p $(O)
\t@printf '$(ARCH_OPTION)' > $(CFG)
\t@printf 'CONFIG_64BIT=y\\nCONFIG_MODULES=y\\nCONFIG_ACPI=y\\nCONFIG_BLOCK=y\\n' >> $(CFG)

allnoconfig:
\t@mkdir -p $(O)
\t@printf '$(ARCH_OPTION)CONFIG_64BIT=y\\n# CONFIG_MODULES is not set\\n' > $(CFG)

olddefconfig:
\t@test -f $(CFG)
\t@echo "# configuration written to $(KCONFIG_CONFIG)"

$(O)/%.o: %.c $(O)/.config
\t@test -z "$(FAIL_BUILD)" || {{ echo "$<:1:1: error: fake failure"; exit 2; }}
\t@mkdir -p $(dir $@)
\t@echo "  CC      $*.o"
\t@cp $< $@

# kconfig's list of the Kconfig files a configuration read, written by make as syncconfig does
$(O)/include/config/auto.conf.cmd: $(O)/.config
\t@mkdir -p $(dir $@)
\t@printf 'deps_config := \\\\\\n\\tKconfig \\\\\\n\\tarch/x86/Kconfig\\n\\n' > $@
\t@printf 'ifneq "$$(CC)" "%s"\\nendif\\n' "$(CC)" >> $@

$(IMAGE): $(OBJS) $(O)/include/config/auto.conf.cmd
\t@mkdir -p $(dir $@) $(O)/include/config
\t@echo $(RELEASE) > $(O)/include/config/kernel.release
\t@cat $(OBJS) > $@
\t@echo "Kernel: $(IMAGE_NAME) is ready"

bindeb-pkg: all
\t@sh scripts/package/builddeb $(O) $(RELEASE) $(KDEB_PKGVERSION)
\t@touch $(O)/../linux-upstream_$(KDEB_PKGVERSION)_amd64.buildinfo
\t@touch $(O)/../linux-upstream_$(KDEB_PKGVERSION)_amd64.changes

.PHONY: all defconfig allnoconfig olddefconfig bindeb-pkg
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
# merge_config.sh stand-in: -m -O DIR BASE FRAGMENT... appended into $KCONFIG_CONFIG; its
# temporary file in the working directory, as the real one makes it
set -e
shift 3
base=$1; shift
tmp=$(mktemp ./.tmp.config.XXXXXXXXXX)
cat "$@" > "$tmp"
cat "$tmp" >> "$KCONFIG_CONFIG"
rm -f "$tmp"
"""


KCONFIG = """\
mainmenu "Fake Kernel"
source "arch/x86/Kconfig"
"""

BUILDDEB = """\
#!/bin/sh
# builddeb stand-in: OBJ RELEASE VERSION -> tiny real packages next to OBJ, uncompressed so
# that tests can find a build's bytes in them; no maintainer scripts
set -e
obj=$1 release=$2 version=$3
work=$obj/debian
rm -rf "$work"
package() {
  mkdir -p "$work/$1/DEBIAN"
  printf 'Package: %s\\nVersion: %s\\nArchitecture: amd64\\nMaintainer: t <t@example.org>\\n' \\
    "$1" "$version" > "$work/$1/DEBIAN/control"
  printf 'Description: memuse-kit test stand-in\\n' >> "$work/$1/DEBIAN/control"
}
package "linux-image-$release"
mkdir -p "$work/linux-image-$release/boot" "$work/linux-image-$release/lib/modules/$release"
cp "$obj/arch/x86/boot/bzImage" "$work/linux-image-$release/boot/vmlinuz-$release"
cp "$obj/.config" "$work/linux-image-$release/boot/config-$release"
package "linux-headers-$release"
mkdir -p "$work/linux-headers-$release/usr/src/linux-headers-$release"
cp "$obj/.config" "$work/linux-headers-$release/usr/src/linux-headers-$release/.config"
package linux-libc-dev
mkdir -p "$work/linux-libc-dev/usr/include/asm-generic"
cp include/uapi/asm-generic/unistd.h "$work/linux-libc-dev/usr/include/asm-generic/"
for name in "linux-image-$release" "linux-headers-$release" linux-libc-dev; do
  dpkg-deb --root-owner-group -Znone -b "$work/$name" "$obj/../${name}_${version}_amd64.deb"
done
"""


def make_fake_buildable_tree(root: Path, version: str = "7.2.0") -> Path:
    make_fake_tree(root, version=version, last=471)
    major, minor, sublevel = (int(x) for x in version.split("."))
    (root / "Makefile").write_text(
        BUILD_MAKEFILE.format(major=major, minor=minor, sublevel=sublevel)
    )
    for rel, text in (("Kconfig", KCONFIG), ("arch/x86/Kconfig", "config X86_64\n\tdef_bool y\n")):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for rel, text in (
        ("scripts/config", SCRIPTS_CONFIG),
        ("scripts/kconfig/merge_config.sh", MERGE_CONFIG),
        ("scripts/package/builddeb", BUILDDEB),
    ):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    return root


def patched_fake_tree(tmp_path: Path, monkeypatch) -> Path:
    """A buildable stand-in tree with memuse patched in, built as a user into tmp_path's cache
    (the build's preflight package check off: the stand-in needs none)."""
    import os

    from memuse_kit.building import preflight
    from memuse_kit.patching import patcher

    monkeypatch.setenv("MEMUSE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(preflight, "check_packages", lambda kernel: None)
    root = make_fake_buildable_tree(tmp_path / "linux")
    patcher.apply_plan(patcher.plan_patch(root))
    return root
