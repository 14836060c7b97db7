"""A system call as data: the folder templates/syscalls/<name>/ with syscall.toml and impl.c.j2.

syscall.toml says what the call is (name, arguments, ABIs, headers, what the tree must have);
impl.c.j2 is its body. load_spec() validates all of it before anything uses it: every problem
is one line naming the file, and nothing is written.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from memuse_kit.core.errors import KitError
from memuse_kit.patching import templates

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

SPEC_FILE = "syscall.toml"
IMPL_FILE = "impl.c.j2"
USER_DIR_ENV = "MEMUSE_KIT_SYSCALLS"
# what `invoke patch` adds to a tree that has none of the kit's syscalls yet
DEFAULT_SYSCALLS = ("memuse",)
DEFAULT_MAINTAINER = "memuse-kit <memuse-kit@example.org>"

# where a syscall can go: the x86_64 table's "common" ABI, the i386 table, and the generic
# table (include/uapi/asm-generic/unistd.h, scripts/syscall.tbl) other architectures use
ABIS = ("x86_64", "i386", "generic")
MAX_ARGUMENTS = 6  # SYSCALL_DEFINE0 .. SYSCALL_DEFINE6
MAX_NAME = 24  # the longest names in the syscall tables are about this long
COMMIT_WIDTH = 75  # checkpatch's limit for commit message lines
RETURN_TYPE = "long"  # SYSCALL_DEFINEn always returns long

# Argument types by value, with why an i386 caller cannot pass one through the ia32 entry
# (which zero-extends each 32-bit register), or "" when it can.
SCALAR_TYPES: Dict[str, str] = {
    "int": "",
    "unsigned int": "",
    "long": "a negative long from a 32-bit caller arrives zero-extended, not sign-extended",
    "unsigned long": "",
    "pid_t": "",
    "uid_t": "",
    "gid_t": "",
    "size_t": "",
    "u32": "",
    "u64": "a 64-bit value takes two registers on i386, which needs a compat entry",
}
# What a `T __user *` may point to, with why a pointer to it is wrong for an i386 caller.
POINTEE_TYPES: Dict[str, str] = {
    "void": "",
    "const void": "",
    "char": "",
    "const char": "",
    "int": "",
    "unsigned int": "",
    "pid_t": "",
    "u32": "",
    "u64": "",
    "long": "a long is 4 bytes to an i386 caller and 8 to the kernel",
    "unsigned long": "an unsigned long is 4 bytes to an i386 caller and 8 to the kernel",
    "size_t": "a size_t is 4 bytes to an i386 caller and 8 to the kernel",
}
C_KEYWORDS = frozenset(
    [
        "auto",
        "break",
        "case",
        "char",
        "const",
        "continue",
        "default",
        "do",
        "double",
        "else",
        "enum",
        "extern",
        "float",
        "for",
        "goto",
        "if",
        "inline",
        "int",
        "long",
        "register",
        "restrict",
        "return",
        "short",
        "signed",
        "sizeof",
        "static",
        "struct",
        "switch",
        "typedef",
        "union",
        "unsigned",
        "void",
        "volatile",
        "while",
        "bool",
        "true",
        "false",
    ]
)
REQUIRED_FIELDS = ("name", "description", "returns", "arguments", "abis", "min_kernel")
OPTIONAL_FIELDS = ("headers", "requires", "probes", "commit", "maintainer")
PROBE_KINDS = ("defines", "contains")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SYSCALL_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_HEADER = re.compile(r"^[a-z0-9_]+(?:/[a-z0-9_.-]+)*\.h$")
_TREE_PATH = re.compile(r"^[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*$")
_SERIES = re.compile(r"^\d+\.\d+$")
_POINTER = re.compile(r"^(?P<pointee>.+?)\s*__user\s*\*$")
_MAINTAINER = re.compile(r"^[^<>\n]+ <[^<>@\s]+@[^<>@\s]+>$")


@dataclass(frozen=True)
class Argument:
    type: str
    name: str


@dataclass(frozen=True)
class DeclaredProbe:
    """A yes/no fact about a tree that a syscall's body asks for: probes.<name> in impl.c.j2."""

    name: str
    file: str  # relative to the tree
    kind: str  # "defines": file defines this C function; "contains": file holds this text
    value: str


@dataclass(frozen=True)
class SyscallSpec:
    name: str
    description: str
    returns: str
    arguments: Tuple[Argument, ...]
    abis: Tuple[str, ...]
    headers: Tuple[str, ...]
    min_kernel: str
    requires: Tuple[Tuple[str, Tuple[str, ...]], ...]  # (file, functions it must have)
    probes: Tuple[DeclaredProbe, ...]
    commit: str  # the commit message's paragraph about this syscall
    maintainer: str
    folder: Path
    root: Path  # the Jinja loader's root for impl_template
    impl_template: str

    @property
    def prototype(self) -> str:
        """The parameter list of sys_<name>(...) in include/linux/syscalls.h."""
        return ", ".join(f"{_pointer_spacing(a.type)}{a.name}" for a in self.arguments) or "void"

    @property
    def define(self) -> str:
        """SYSCALL_DEFINEn(name, type, arg, ...), as the body's first line."""
        pairs = "".join(f", {a.type}, {a.name}" for a in self.arguments)
        return f"SYSCALL_DEFINE{len(self.arguments)}({self.name}{pairs})"

    @property
    def signature(self) -> str:
        """How people write it: `long memuse(pid_t pid, int mem_type)`."""
        return f"{self.returns} {self.name}({self.prototype})"

    def goes_in(self, abi: str) -> bool:
        return abi in self.abis


def _pointer_spacing(type_text: str) -> str:
    """`char __user *` is followed directly by the name; every other type by a space."""
    return type_text if type_text.endswith("*") else type_text + " "


# --- where specs live ---------------------------------------------------------------------


def packaged_dir() -> Path:
    """The syscalls shipped with memuse-kit (follows templates.TEMPLATES_DIR, which tests move)."""
    return templates.TEMPLATES_DIR / "syscalls"


def user_dir() -> Path:
    """Your own syscalls: $MEMUSE_KIT_SYSCALLS, else $XDG_CONFIG_HOME/memuse-kit/syscalls."""
    explicit = os.environ.get(USER_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "memuse-kit" / "syscalls"


def spec_dirs() -> List[Path]:
    return [packaged_dir(), user_dir()]


def _folders(directory: Path) -> Iterator[Path]:
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            if (entry / SPEC_FILE).is_file():
                yield entry


def available() -> List[str]:
    """The names of every syscall the kit knows, packaged and your own."""
    return sorted({folder.name for d in spec_dirs() for folder in _folders(d)})


def find_folder(name: str) -> Path:
    found = [d / name for d in spec_dirs() if (d / name / SPEC_FILE).is_file()]
    if not found:
        known = ", ".join(available()) or "none"
        raise KitError(
            f"no syscall named {name!r}: the kit knows {known} (a syscall is a folder "
            f"{packaged_dir()}/NAME or {user_dir()}/NAME; invoke syscall new {name} makes one)"
        )
    if len(found) > 1:
        raise KitError(f"syscall {name!r} is defined twice ({found[0]} and {found[1]}): rename one")
    return found[0]


def check_syscall_name(name: str, option: str = "--syscall") -> str:
    """name, if it can name a syscall; else one line saying what a name looks like."""
    if not _SYSCALL_NAME.match(name) or len(name) > MAX_NAME or name in C_KEYWORDS:
        raise KitError(
            f"{option} {name!r} is not a syscall name (lower-case letters, digits and _, "
            f"not starting with a digit, at most {MAX_NAME} characters, not a C keyword)"
        )
    return name


def load_spec(name: str) -> SyscallSpec:
    return load_folder(find_folder(check_syscall_name(name)))


def load_specs(names: Sequence[str]) -> List[SyscallSpec]:
    return [load_spec(name) for name in names]


# --- validation ---------------------------------------------------------------------------


def load_folder(folder: Path) -> SyscallSpec:
    """The spec in folder, checked whole; KitError (one line naming the file) otherwise."""
    path = folder / SPEC_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise KitError(f"cannot read {path}: {error.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise KitError(f"{path} is not valid TOML: {error}") from None
    try:
        return _parse(data, folder)
    except SpecError as error:
        raise KitError(f"{path}: {error}") from None


class SpecError(ValueError):
    """What is wrong with a spec, in one line (without the file name)."""


def _parse(data: Mapping[str, Any], folder: Path) -> SyscallSpec:
    unknown = sorted(set(data) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        known = ", ".join((*REQUIRED_FIELDS, *OPTIONAL_FIELDS))
        raise SpecError(f"unknown field {unknown[0]!r} (the fields are: {known})")
    missing = [key for key in REQUIRED_FIELDS if key not in data]
    if missing:
        raise SpecError(
            f"missing field {missing[0]!r} (every spec has {', '.join(REQUIRED_FIELDS)})"
        )
    name = _name(data["name"], folder)
    description = _one_line(data["description"], "description")
    arguments = _arguments(data["arguments"])
    abis = _abis(data["abis"])
    _check_i386(arguments, abis)
    impl = folder / IMPL_FILE
    if not impl.is_file():
        raise SpecError(f"the folder has no {IMPL_FILE} (the syscall's body)")
    root = folder.parent.parent if folder.parent == packaged_dir() else folder.parent
    return SyscallSpec(
        name=name,
        description=description,
        returns=_returns(data["returns"]),
        arguments=arguments,
        abis=abis,
        headers=_headers(data.get("headers", [])),
        min_kernel=_min_kernel(data["min_kernel"]),
        requires=_requires(data.get("requires", {})),
        probes=_probes(data.get("probes", {})),
        commit=_commit(data.get("commit"), name, description),
        maintainer=_maintainer(data.get("maintainer", DEFAULT_MAINTAINER)),
        folder=folder,
        root=root,
        impl_template=str(impl.relative_to(root)),
    )


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{what} must be a string, not {type(value).__name__}")
    return value


def _list(value: object, what: str) -> List[Any]:
    if not isinstance(value, list):
        raise SpecError(f"{what} must be a list, not {type(value).__name__}")
    return value


def _table(value: object, what: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{what} must be a table, not {type(value).__name__}")
    return value


def identifier_problem(text: str) -> Optional[str]:
    """Why text cannot be a C identifier, or None when it can."""
    if not _IDENTIFIER.match(text):
        return "letters, digits and _ only, not starting with a digit"
    if text in C_KEYWORDS:
        return "a C keyword"
    return None


def _name(value: object, folder: Path) -> str:
    name = _string(value, "name")
    if not _SYSCALL_NAME.match(name):
        raise SpecError(
            f"name {name!r} is not a valid syscall name: lower-case letters, digits and _, "
            "not starting with a digit"
        )
    if name in C_KEYWORDS:
        raise SpecError(f"name {name!r} is a C keyword")
    if len(name) > MAX_NAME:
        raise SpecError(f"name {name!r} is longer than {MAX_NAME} characters")
    if name != folder.name:
        raise SpecError(f"name {name!r} differs from its folder's name {folder.name!r}")
    return name


def _one_line(value: object, what: str) -> str:
    text = _string(value, what).strip()
    if not text or "\n" in text:
        raise SpecError(f"{what} must be one non-empty line")
    return text


def _returns(value: object) -> str:
    text = _string(value, "returns")
    if text != RETURN_TYPE:
        raise SpecError(f"returns is {text!r}: a syscall returns long (SYSCALL_DEFINEn)")
    return text


def _normalize_type(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip()).replace(" *", "*").replace("*", " *")


def _arguments(value: object) -> Tuple[Argument, ...]:
    entries = _list(value, "arguments")
    if len(entries) > MAX_ARGUMENTS:
        raise SpecError(f"{len(entries)} arguments: a syscall takes at most {MAX_ARGUMENTS}")
    arguments: List[Argument] = []
    for index, entry in enumerate(entries, 1):
        table = _table(entry, f"argument {index}")
        extra = sorted(set(table) - {"type", "name"})
        if extra or "type" not in table or "name" not in table:
            raise SpecError(f'argument {index} must be {{ type = "...", name = "..." }}')
        name = _string(table["name"], f"argument {index}'s name")
        why = identifier_problem(name)
        if why:
            raise SpecError(f"argument {index}'s name {name!r} is not a C identifier ({why})")
        if name in {a.name for a in arguments}:
            raise SpecError(f"two arguments are named {name!r}")
        arguments.append(Argument(_argument_type(table["type"], index, name), name))
    return tuple(arguments)


def _argument_type(value: object, index: int, name: str) -> str:
    text = _normalize_type(_string(value, f"argument {index}'s type"))
    if text in SCALAR_TYPES:
        return text
    pointer = _POINTER.match(text)
    if pointer and pointer.group("pointee") in POINTEE_TYPES:
        return f"{pointer.group('pointee')} __user *"
    scalars = ", ".join(SCALAR_TYPES)
    raise SpecError(
        f"argument {index} ({name}) has type {text!r}, which the kit does not support: "
        f"use one of {scalars}, or T __user * with T one of {', '.join(POINTEE_TYPES)}"
    )


def _abis(value: object) -> Tuple[str, ...]:
    entries = [_string(v, "an ABI") for v in _list(value, "abis")]
    if not entries:
        raise SpecError(f"abis is empty: list where it goes ({', '.join(ABIS)})")
    for abi in entries:
        if abi not in ABIS:
            raise SpecError(f"unknown ABI {abi!r} (known: {', '.join(ABIS)})")
    if len(set(entries)) != len(entries):
        raise SpecError("abis lists an ABI twice")
    return tuple(abi for abi in ABIS if abi in entries)


def _check_i386(arguments: Sequence[Argument], abis: Sequence[str]) -> None:
    if "i386" not in abis:
        return
    for argument in arguments:
        pointer = _POINTER.match(argument.type)
        why = POINTEE_TYPES[pointer.group("pointee")] if pointer else SCALAR_TYPES[argument.type]
        if why:
            raise SpecError(
                f"argument {argument.name} ({argument.type}) cannot come from i386 callers as "
                f"it is: {why}; leave i386 out of abis or use a fixed-size type (u32)"
            )


def _headers(value: object) -> Tuple[str, ...]:
    headers = []
    for entry in _list(value, "headers"):
        header = _string(entry, "a header")
        if not _HEADER.match(header) or ".." in header:
            raise SpecError(f"header {header!r} is not a path like linux/sched/task.h")
        headers.append(header)
    if len(set(headers)) != len(headers):
        raise SpecError("headers lists a header twice")
    return tuple(headers)


def _min_kernel(value: object) -> str:
    text = _string(value, "min_kernel")
    if not _SERIES.match(text):
        raise SpecError(f"min_kernel {text!r} is not a kernel series like 5.10")
    return text


def _tree_path(text: str, what: str) -> str:
    if not _TREE_PATH.match(text) or ".." in text.split("/"):
        raise SpecError(f"{what} {text!r} is not a path inside a kernel tree")
    return text


def _requires(value: object) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    requires = []
    for file, functions in _table(value, "requires").items():
        names = [_string(f, f"requires.{file}") for f in _list(functions, f"requires.{file}")]
        for function in names:
            why = identifier_problem(function)
            if why:
                raise SpecError(f"requires {function!r} is not a C identifier ({why})")
        requires.append((_tree_path(file, "requires"), tuple(names)))
    return tuple(requires)


def _probes(value: object) -> Tuple[DeclaredProbe, ...]:
    probes = []
    for name, entry in _table(value, "probes").items():
        why = identifier_problem(name)
        if why:
            raise SpecError(f"probe name {name!r} is not an identifier ({why})")
        table = _table(entry, f"probes.{name}")
        kinds = [kind for kind in PROBE_KINDS if kind in table]
        extra = sorted(set(table) - {"file", *PROBE_KINDS})
        if extra or "file" not in table or len(kinds) != 1:
            raise SpecError(
                f'probes.{name} must be {{ file = "...", defines = "function" }} or '
                f'{{ file = "...", contains = "text" }}'
            )
        file = _tree_path(_string(table["file"], f"probes.{name}.file"), f"probes.{name}.file")
        text = _string(table[kinds[0]], f"probes.{name}.{kinds[0]}")
        if kinds[0] == "defines" and identifier_problem(text):
            raise SpecError(f"probes.{name}.defines {text!r} is not a C function name")
        if not text:
            raise SpecError(f"probes.{name}.{kinds[0]} is empty")
        probes.append(DeclaredProbe(name, file, kinds[0], text))
    return tuple(probes)


def default_commit(name: str, description: str) -> str:
    return wrap(f"{name}: {description}.")


def wrap(text: str, width: int = 72) -> str:
    """text as lines of at most width characters (a word longer than that stays whole)."""
    lines: List[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(lines)


def _commit(value: object, name: str, description: str) -> str:
    if value is None:
        return default_commit(name, description)
    text = _string(value, "commit").strip("\n")
    if not text.strip():
        raise SpecError("commit is empty: leave it out to use the description")
    for number, line in enumerate(text.splitlines(), 1):
        if len(line) > COMMIT_WIDTH:
            raise SpecError(
                f"commit line {number} is {len(line)} characters long: checkpatch wants at "
                f"most {COMMIT_WIDTH}"
            )
        if line.startswith(("---", "diff ", "Signed-off-by:")):
            raise SpecError(f"commit line {number} would end the commit message early")
    return text


def _maintainer(value: object) -> str:
    text = _string(value, "maintainer")
    if not _MAINTAINER.match(text):
        raise SpecError(f"maintainer {text!r} is not like 'Your Name <you@example.org>'")
    return text
