"""`invoke syscall new NAME`: a new syscall folder from the spec's fields.

It holds syscall.toml, a body that compiles and returns -ENOSYS, and a guest test stub. The
spec is rendered and validated by the very loader `invoke patch` uses before anything is
written, and the folder appears in one rename, so a refused or interrupted scaffold leaves
nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from memuse_kit.core.errors import KitError
from memuse_kit.core.output import report
from memuse_kit.core.safety import TMP_PREFIX, check_replaceable
from memuse_kit.patching import spec
from memuse_kit.patching.templates import render

SCAFFOLD = "scaffold"  # the templates of a new folder, under memuse_kit/templates/
DEFAULT_MIN_KERNEL = "5.10"  # the oldest kernel the kit is tested on
_ARGUMENT = re.compile(r"^(?P<type>.*?[\s*])(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class Request:
    name: str
    arguments: Tuple[Tuple[str, str], ...]  # (type, name)
    description: str
    abis: Tuple[str, ...]
    headers: Tuple[str, ...]
    min_kernel: str

    @property
    def test_file(self) -> str:
        return f"test_{self.name}.py"


def parse_argument(text: str) -> Tuple[str, str]:
    """ "unsigned int flags" -> ("unsigned int", "flags"); "char __user *buf" too."""
    match = _ARGUMENT.match(text.strip())
    if not match or not match.group("type").strip():
        raise KitError(
            f"--arg {text!r} is not a C parameter: give its type and then its name, "
            "e.g. --arg 'pid_t pid' or --arg 'char __user *buf'"
        )
    return match.group("type").strip(), match.group("name")


def request(
    name: str,
    arguments: Sequence[str] = (),
    description: Optional[str] = None,
    abis: Sequence[str] = (),
    headers: Sequence[str] = (),
    min_kernel: str = DEFAULT_MIN_KERNEL,
) -> Request:
    return Request(
        name=spec.check_syscall_name(name, "the name"),
        arguments=tuple(parse_argument(a) for a in arguments),
        description=description or f"what {name} does (say it in one line)",
        abis=tuple(abis) or spec.ABIS,
        headers=tuple(headers),
        min_kernel=min_kernel,
    )


def target_dir(into: Optional[str]) -> Path:
    """--into, else $MEMUSE_KIT_SYSCALLS, else the repository's own syscalls (so the new one
    can be committed with them), else the user directory of an installed memuse-kit."""
    if into:
        return Path(into).expanduser().resolve()
    from memuse_kit.patching.patchfile import in_checkout

    if os.environ.get(spec.USER_DIR_ENV) or not in_checkout():
        return spec.user_dir()
    return spec.packaged_dir()


def _shown(folder: Path) -> str:
    """The folder as the guest test stub names it: from the repository when it is inside."""
    from memuse_kit.patching.patchfile import CHECKOUT

    try:
        return str(folder.relative_to(CHECKOUT))
    except ValueError:
        return str(folder)


def render_files(req: Request, folder: Path) -> List[Tuple[str, str]]:
    """(file name, text) of the new folder."""
    values = {
        "folder": _shown(folder),
        "name": req.name,
        "arguments": req.arguments,
        "description": req.description,
        "abis": req.abis,
        "headers": req.headers,
        "min_kernel": req.min_kernel,
        "test_file": req.test_file,
    }
    return [
        (spec.SPEC_FILE, render(f"{SCAFFOLD}/syscall.toml.j2", **values)),
        (spec.IMPL_FILE, render(f"{SCAFFOLD}/impl.c.j2.j2", **values)),
        (req.test_file, render(f"{SCAFFOLD}/test_guest.py.j2", **values)),
    ]


def create(req: Request, directory: Path, dry_run: bool = False) -> Path:
    """Write the folder directory/NAME; everything is checked first, nothing half-written."""
    folder = directory / req.name
    if req.name in spec.available() or os.path.lexists(folder):
        where = folder if os.path.lexists(folder) else "the kit"
        raise KitError(f"a syscall named {req.name} exists already ({where}): choose another name")
    files = render_files(req, folder)
    # checked where nothing of the user's is touched, so that a refusal leaves no trace
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as scratch:
        _write_checked(Path(scratch) / req.name, files, folder)
    if dry_run:
        report(f"would create {folder}: {', '.join(name for name, _ in files)}")
        return folder
    directory.mkdir(parents=True, exist_ok=True)
    check_replaceable(folder, "the new syscall's folder")
    # staged beside its place (same file system), so that it appears in one rename
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=directory))
    try:
        _write_checked(staging / req.name, files, folder)
        os.rename(staging / req.name, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(f"created {folder}:")
    for name, _ in files:
        report(f"  {name}")
    body = folder / spec.IMPL_FILE
    report(f"next: write its body in {body}, then invoke patch --syscall {req.name}")
    return folder


def _write_checked(folder: Path, files: List[Tuple[str, str]], shown: Path) -> None:
    """The files written into folder, then checked by the loader `invoke patch` uses (its
    errors name the folder's real place, shown)."""
    folder.mkdir()
    for file_name, text in files:
        (folder / file_name).write_text(text)
    try:
        spec.load_folder(folder)
    except KitError as error:
        raise KitError(str(error).replace(str(folder), str(shown))) from None
