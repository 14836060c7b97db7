"""The patch is a mail `git am` takes (README), shipped or freshly written; and a dry run of
`invoke patch` writes nothing: no tree file, no state, no patch file."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict

import pytest

from memuse_kit.patching import patch_step, patcher, patchfile, shipped
from tests.fakelinux import make_fake_tree, mtimes, snapshot

SHIPPED = sorted(patchfile.PATCHES_DIR.glob("*.patch"))
AUTHOR = "memuse-kit <memuse-kit@example.org>"


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=tests", "-c", "user.email=tests@example.org"]
    done = subprocess.run(
        ["git", "-C", str(repo), *identity, *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def repository(root: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "pristine")
    return root


def post_images(patch_text: str) -> Dict[str, str]:
    """Each file of a patch after it: its hunks' context and added lines."""
    return {path: "".join(diff.postimage) for path, diff in shipped.parse_diffs(patch_text).items()}


def assert_applied_by_git_am(repo: Path, patch: Path, subject: str) -> None:
    git(repo, "am", "-q", str(patch))
    log = git(repo, "log", "-1", "--format=%an <%ae>%n%s")
    assert log.splitlines() == [AUTHOR, subject]
    assert git(repo, "status", "--porcelain") == ""


def test_the_shipped_patches_include_both_syscall_sets():
    assert len(SHIPPED) == 10  # 5 kernel sources x (memuse, memuse+fdcount): a glob that
    # matched nothing would let the test below pass with no case at all


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_git_am_takes_every_shipped_patch(path, tmp_path):
    """On a repository of the patch's pre-images (the real files' lines around each hunk)."""
    text = path.read_text()
    diffs = shipped.parse_diffs(text)
    existing = {p: "".join(d.preimage) for p, d in diffs.items() if not d.created}
    repo = repository(tmp_path / "repo", existing)
    what = "memuse and fdcount system calls" if "+" in path.name else "memuse system call"
    subject = f"kernel: add the {what}"
    assert_applied_by_git_am(repo, path, subject)
    for rel, expected in post_images(text).items():
        assert (repo / rel).read_text() == expected, rel


def test_git_am_takes_a_freshly_written_patch(tmp_path):
    tree = make_fake_tree(tmp_path / "linux", version="6.12.0", last=462)
    pristine = {rel: data.decode() for rel, data in snapshot(tree).items()}
    out = tmp_path / "memuse.patch"
    patch_step.patch_tree(tree, str(out))
    repo = repository(tmp_path / "repo", pristine)
    assert_applied_by_git_am(repo, out, "kernel: add the memuse system call")
    for rel in pristine:
        assert (repo / rel).read_bytes() == (tree / rel).read_bytes(), rel


def test_a_dry_run_writes_nothing(tmp_path):
    tree = make_fake_tree(tmp_path / "linux", version="6.12.0", last=462)
    files, stamps = snapshot(tree), mtimes(tree)
    default_patch = patchfile.default_path(patcher.plan_patch(tree))
    existed = default_patch.exists()
    out = tmp_path / "x.patch"
    patch_step.patch_tree(tree, str(out), dry_run=True)
    patch_step.patch_tree(tree, None, dry_run=True)
    assert snapshot(tree) == files and mtimes(tree) == stamps
    assert not (tree / ".memuse-kit").exists()
    assert not out.exists() and default_patch.exists() == existed


def test_a_dry_run_revert_writes_nothing(tmp_path):
    tree = make_fake_tree(tmp_path / "linux", version="6.12.0", last=462)
    patch_step.patch_tree(tree, str(tmp_path / "memuse.patch"))
    files, stamps = snapshot(tree), mtimes(tree)
    patch_step.revert_tree(tree, dry_run=True)
    assert snapshot(tree) == files and mtimes(tree) == stamps
