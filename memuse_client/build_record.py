"""The build record: `metadata.json` in a build directory, the one contract between stages.

`invoke build` writes it; install, vm, module and the client read it, all through
read_record(). It lives in memuse_client, with the standard library only, because the client
reads it on machines and in guests where memuse_kit and its dependencies are not imported.

Schema 2 is the set of fields below: `syscalls` maps each syscall the kernel was built with
to its number. Schema 1 had one number, memuse's (`syscall_nr`); read_record() reads such a
record as schema 2 with `syscalls: {"memuse": N}`, and records written before the schema had a
number are schema 1. A schema this code does not know is refused in one line rather than
guessed at.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

SCHEMA = 2
KNOWN_SCHEMAS = (1, 2)
# schema 1 recorded one number, memuse's
SCHEMA_1_SYSCALL = "memuse"
FILE_NAME = "metadata.json"
# uname -m -> memuse-kit's architecture names
MACHINES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64"}


class RecordError(ValueError):
    """A record that cannot be used; the message is one line that says why."""


@dataclass
class BuildRecord:
    schema: int = SCHEMA
    memuse_kit: str = ""
    status: str = "running"  # running, success or failed
    started: str = ""
    finished: str = ""
    tree: str = ""
    source: Optional[Dict[str, Any]] = None
    kernel_version: str = ""
    kernel_release: Optional[str] = None
    # the architecture built for, as memuse-kit's --arch names it; records without it are
    # x86_64's (the only one before arm64)
    arch: str = "x86_64"
    syscalls: Dict[str, int] = field(default_factory=dict)  # name -> number
    probes: Dict[str, Any] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)
    compiler: Dict[str, Any] = field(default_factory=dict)
    pahole: Optional[str] = None
    debug_info: bool = False
    localmodconfig: Optional[Dict[str, Any]] = None
    # which engine and helpers compiled the objects (None: this machine alone); optional,
    # so records without it (schema 1, and schema 2 before it) read as local builds
    distributed: Optional[Dict[str, Any]] = None
    log: str = ""
    durations: Dict[str, float] = field(default_factory=dict)
    # this build's compiles ccache answered: hits, misses, hit_rate (None: no ccache)
    ccache: Optional[Dict[str, float]] = None
    objects_compiled: Optional[int] = None
    objects_total: Optional[int] = None
    artifacts: List[Dict[str, str]] = field(default_factory=list)
    # False after `build --no-packages`: the kernel moved on, any packages left are older
    packaged: bool = True
    error: List[str] = field(default_factory=list)
    failure: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "success"

    def number_of(self, name: str) -> Optional[int]:
        """The number of syscall name in this kernel, when it is a real number (JSON's true
        is an int to Python)."""
        nr = self.syscalls.get(name)
        return nr if isinstance(nr, int) and not isinstance(nr, bool) else None

    def is_for_machine(self, machine: str) -> bool:
        """Whether the kernel was built for a machine that uname -m names so."""
        return MACHINES.get(machine, machine) == self.arch

    def config_sha256(self) -> Optional[str]:
        digest = self.config.get("sha256")
        return digest if isinstance(digest, str) else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = FILE_NAME) -> BuildRecord:
        if not isinstance(data, dict):
            raise RecordError(f"{where} is not a build record (not a JSON object)")
        schema = data.get("schema", 1)  # unnumbered records hold schema 1's fields
        if schema not in KNOWN_SCHEMAS or isinstance(schema, bool):
            raise RecordError(
                f"{where} has build record schema {schema!r}, this memuse-kit reads schemas "
                f"{' and '.join(map(str, KNOWN_SCHEMAS))}: rebuild with this version "
                "(invoke build) or use the memuse-kit that wrote it"
            )
        if schema == 1:
            data = _from_schema_1(data)
        known = {f.name: f for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key, value in values.items():
            container = _container_type(known[key])
            nullable = known[key].default is None
            if container is not None and not isinstance(value, container):
                if value is None and nullable:
                    continue
                raise RecordError(f"{where} is damaged ({key} is not a {container.__name__})")
        return cls(**values)


def _from_schema_1(data: Dict[str, Any]) -> Dict[str, Any]:
    """A schema 1 record as schema 2: its one number was memuse's."""
    migrated = {key: value for key, value in data.items() if key != "syscall_nr"}
    migrated["schema"] = SCHEMA
    nr = data.get("syscall_nr")
    migrated["syscalls"] = {SCHEMA_1_SYSCALL: nr} if nr is not None else {}
    return migrated


def _container_type(spec: Any) -> Optional[type]:
    """dict or list for the fields that hold one, so a damaged record fails here, not later."""
    if spec.default_factory in (dict, list):
        return spec.default_factory  # type: ignore[no-any-return]
    text = str(spec.type)
    for name, kind in (("Dict", dict), ("List", list)):
        if name in text:
            return kind
    return None


def read_record(path: Path) -> BuildRecord:
    """The record in path (a metadata.json); RecordError, one line, when it cannot be used."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordError(f"{path} does not exist: no build there yet") from None
    except OSError as error:
        raise RecordError(f"cannot read {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise RecordError(f"{path} is damaged (not JSON): rebuild with invoke build") from None
    return BuildRecord.from_dict(data, str(path))
