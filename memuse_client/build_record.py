"""The build record: `metadata.json` in a build directory, the one contract between stages.

`invoke build` writes it; install, vm, module and the client read it, all through
read_record(). It lives in memuse_client, with the standard library only, because the client
reads it on machines and in guests where memuse_kit and its dependencies are not imported.

Schema 1 is the set of fields below. Records written before the schema had a number hold
the same fields and are read as schema 1; a schema this code does not know is refused in one
line rather than guessed at.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

SCHEMA = 1
FILE_NAME = "metadata.json"


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
    syscall_nr: Optional[int] = None
    probes: Dict[str, Any] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)
    compiler: Dict[str, Any] = field(default_factory=dict)
    pahole: Optional[str] = None
    debug_info: bool = False
    localmodconfig: Optional[Dict[str, Any]] = None
    # which engine and helpers compiled the objects (None: this machine alone); added to
    # schema 1 as an optional field, so records without it read as before
    distributed: Optional[Dict[str, Any]] = None
    log: str = ""
    durations: Dict[str, float] = field(default_factory=dict)
    objects_compiled: Optional[int] = None
    objects_total: Optional[int] = None
    artifacts: List[Dict[str, str]] = field(default_factory=list)
    error: List[str] = field(default_factory=list)
    failure: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "success"

    @property
    def number(self) -> Optional[int]:
        """syscall_nr when it is a real number (JSON's true is an int to Python)."""
        nr = self.syscall_nr
        return nr if isinstance(nr, int) and not isinstance(nr, bool) else None

    def config_sha256(self) -> Optional[str]:
        digest = self.config.get("sha256")
        return digest if isinstance(digest, str) else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = FILE_NAME) -> BuildRecord:
        if not isinstance(data, dict):
            raise RecordError(f"{where} is not a build record (not a JSON object)")
        schema = data.get("schema", SCHEMA)  # unnumbered records hold schema 1's fields
        if schema != SCHEMA or isinstance(schema, bool):
            raise RecordError(
                f"{where} has build record schema {schema!r}, this memuse-kit reads schema "
                f"{SCHEMA}: rebuild with this version (invoke build) or use the memuse-kit "
                "that wrote it"
            )
        known = {f.name: f for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key, value in values.items():
            container = _container_type(known[key])
            if container is not None and value is not None and not isinstance(value, container):
                raise RecordError(f"{where} is damaged ({key} is not a {container.__name__})")
        return cls(**values)


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
