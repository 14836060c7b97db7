"""scripts/project-distributed: objects sampled from a build's log, compiled again from the
commands kbuild saved, nothing of the build written; the model's arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "project-distributed"


def load_script() -> ModuleType:
    loader = SourceFileLoader("project_distributed", str(SCRIPT))
    spec = spec_from_loader("project_distributed", loader)
    assert spec is not None
    module = module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def a_build(root: Path) -> Path:
    """A finished build as the script reads it: build.log, obj/.config, saved commands."""
    obj = root / "obj"
    (obj / "lib").mkdir(parents=True)
    (obj / ".config").write_text("CONFIG_64BIT=y\n")
    log = ["$ make O=... -j2", "  CC      lib/one.o", "  AR      lib/built-in.a"]
    for name in ("one", "two"):
        (obj / "lib" / f"{name}.c").write_text(f"int {name}(int x) {{ return x * 3; }}\n")
        (obj / "lib" / f".{name}.o.cmd").write_text(
            f"savedcmd_lib/{name}.o := ccache gcc -Wp,-MMD,lib/.{name}.o.d -O2 -c "
            f"-o lib/{name}.o lib/{name}.c\n\nsource_lib/{name}.o := lib/{name}.c\n"
        )
    log += ["  CC      lib/two.o", "  LD      vmlinux.o", "  CC      init/version-timestamp.o"]
    (root / "build.log").write_text("\n".join(log) + "\n")
    return root


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def test_the_objects_before_the_link_are_compiled_again_and_nothing_is_written(tmp_path):
    build = a_build(tmp_path / "build")
    before = snapshot(build)
    samples = tmp_path / "samples.json"
    done = run(str(build), "--config", "1", "--link", "2", "--package", "3", "--json", str(samples))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("2 objects before the link; 2 sampled")
    measured = json.loads(samples.read_text())
    assert sorted(s["target"] for s in measured) == ["lib/one.o", "lib/two.o"]
    assert all(s["compile_s"] > 0 and s["preprocessed_bytes"] > 0 for s in measured)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| none (2 local cores compile)"] + [
        f"| {cores}" for cores in (2, 8, 32, 128)
    ]
    assert snapshot(build) == before

    # projected again from the samples, with other serial parts: nothing is compiled
    for source in (build / "obj/lib").glob("*.c"):
        source.unlink()
    again = run(str(build), "--config", "1", "--link", "20", "--package", "3")
    # without --samples it has to compile, and cannot: one line
    assert again.returncode == 1 and again.stderr == ""
    assert again.stdout.startswith("cannot compile a sampled object again: gcc ... failed")
    assert len(again.stdout.splitlines()) == 1
    again = run(str(build), "--samples", str(samples), "--config", "1", "--link", "20",
                "--package", "3")  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 sampled" in again.stdout and "link 20.0 s" in again.stdout


def test_the_compile_phase_is_bound_by_the_helpers_or_by_preprocessing_here():
    script = load_script()
    one = script.Sample("a.o", compile_s=1.0, preprocess_s=0.2, preprocessed_bytes=1)
    rows = script.project([one], objects=100, serial=10.0, helper_cores=[2, 8], local=2, passes=2)
    # alone: 50 s on two local cores; 2 helpers: 40 s of their work, 20 s of preprocessing
    # here; 8 helpers: 10 s of theirs, so the 20 s of preprocessing here bound the phase
    assert rows[2] == "| none (2 local cores compile) | - | - | 50 s | 60 s |"
    assert rows[3] == "| 2 | 40 s | 20 s | 40 s | 50 s |"
    assert rows[4] == "| 8 | 10 s | 20 s | 20 s | 30 s |"


def test_a_directory_that_is_not_a_finished_build_is_one_line(tmp_path):
    done = run(str(tmp_path), "--config", "1", "--link", "2", "--package", "3")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{tmp_path}: not a finished build (no build.log or obj/.config)"
    ]
