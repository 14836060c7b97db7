"""Handing a host build and memuse-kit itself into the test machine, as a user would copy them.

The machine has no compiler and no PyPI: memuse-kit's dependencies go in as wheels downloaded
once on the host (cached), the scenario program as the host-built binary, and the build as its
directory (metadata.json, artifacts/), where `invoke install --build-dir` and the client's
number discovery find it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import List

from memuse_client.scenarios import binary_name
from memuse_kit.building.builddir import BuildDir
from memuse_kit.core.cache import cache_root

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("memuse_kit", "memuse_client", "tasks.py", "pyproject.toml", "README.md")
GUEST_HOME = "/home/tester"  # the image's sudo user
KIT = f"{GUEST_HOME}/memuse-kit"
VENV = f"{GUEST_HOME}/kit-venv"
GUEST_CACHE = f"{GUEST_HOME}/.cache/memuse-kit"
# the client takes a given binary only under its own name, which carries its source's hash
SCENARIOS = f"{GUEST_HOME}/{binary_name()}"
ENV_SCENARIOS = "MEMUSE_SCENARIOS_BIN"


def dependencies() -> List[str]:
    """memuse-kit's runtime requirements, from pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    return [req for req in re.findall(r'"([^"]+)"', block) if "python_version" not in req]


def wheelhouse() -> Path:
    """Wheels of memuse-kit's dependencies for the machine's Python 3.11, downloaded once."""
    target = cache_root() / "machine" / "wheelhouse"
    stamp = target / "requirements.txt"
    wanted = "\n".join(dependencies()) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        return target
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
         "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
         "-d", str(target), *dependencies()],
        check=True,
    )  # fmt: skip
    stamp.write_text(wanted)
    return target


def bundle(bd: BuildDir, scenarios: Path, out: Path) -> Path:
    """One tarball: the sources, the wheels, the scenario program and the build directory."""
    with tarfile.open(out, "w") as tar:
        for name in SOURCES:
            tar.add(REPO / name, f"memuse-kit/{name}", filter=_no_caches)
        tar.add(wheelhouse(), "wheels")
        tar.add(scenarios, Path(SCENARIOS).name)
        tar.add(bd.metadata, f".cache/memuse-kit/builds/{bd.root.name}/metadata.json")
        tar.add(bd.artifacts, f".cache/memuse-kit/builds/{bd.root.name}/artifacts")
    return out


def _no_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name else info


def setup_script() -> str:
    """Unpack the bundle in the tester's home and make a venv with memuse-kit's dependencies
    (memuse-kit itself runs from its sources, as in a clone of the repository)."""
    return (
        f"cd {GUEST_HOME} && tar -xf bundle.tar && "
        f"python3 -m venv {VENV} && "
        f"{VENV}/bin/pip install -q --no-index --find-links wheels "
        f"{' '.join(shlex.quote(d) for d in dependencies())}"
    )


def invoke(*args: str) -> List[str]:
    """`invoke ARGS` in the machine, as the user would type it in the repository."""
    return ["sh", "-c", f"cd {KIT} && {VENV}/bin/invoke {shlex.join(args)}"]


def memuse(*args: str) -> List[str]:
    environment = f"{ENV_SCENARIOS}={SCENARIOS} PYTHONPATH={KIT}"
    return ["sh", "-c", f"{environment} {VENV}/bin/python -m memuse_client {shlex.join(args)}"]
