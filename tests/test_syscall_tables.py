from __future__ import annotations

import pytest

from memuse_kit.core.errors import KitError
from memuse_kit.patching import syscall_tables as tables

X86 = tables.X86_64_TABLE


def test_tables_parse_by_whitespace_not_tabs():
    text = (
        "461\tcommon\tlsm_list_modules\tsys_lsm_list_modules\n462 \tcommon  mseal\t\t\tsys_mseal\n"
    )
    assert [(e.number, e.abi, e.name) for e in tables.table_entries(text)] == [
        (461, "common", "lsm_list_modules"),
        (462, "common", "mseal"),
    ]


def test_x32_range_is_never_the_highest_number():
    text = "450\tcommon\ta\tsys_a\n512\tx32\tb\tcompat_b\n547\tx32\tc\tcompat_c\n"
    assert tables.choose_number({X86: text}) == 451


def test_a_64_only_entry_counts_like_6_6s_map_shadow_stack():
    text = "452\tcommon\tfchmodat2\tsys_fchmodat2\n453\t64\tmap_shadow_stack\tsys_mss\n"
    generic = "#undef __NR_syscalls\n#define __NR_syscalls 453\n"
    assert tables.choose_number({X86: text, tables.GENERIC_UNISTD: generic}) == 454


def test_highest_number_of_any_table_wins():
    files = {
        X86: "440\tcommon\ta\tsys_a\n",
        tables.I386_TABLE: "441\ti386\tb\tsys_b\n",
        tables.GENERIC_UNISTD: "#define __NR_syscalls 445\n",
        tables.GENERIC_TABLE: "443\tcommon\tc\tsys_c\n",
    }
    assert tables.choose_number(files) == 445


def test_comments_and_blank_lines_are_not_entries():
    text = "# 999 common fake sys_fake\n\n  \n12\tcommon\tbrk\tsys_brk\n"
    assert [e.number for e in tables.table_entries(text)] == [12]


def test_generic_unistd_without_nr_syscalls_is_an_error():
    with pytest.raises(KitError, match="__NR_syscalls"):
        tables.choose_number({X86: "1\tcommon\ta\tsys_a\n", tables.GENERIC_UNISTD: "nothing\n"})


def test_a_tree_without_the_x86_64_table_is_an_error():
    with pytest.raises(KitError, match=r"syscall_64\.tbl"):
        tables.choose_number({tables.I386_TABLE: "1\ti386\ta\tsys_a\n"})
