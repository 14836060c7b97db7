"""--localmodconfig on a real tree: the kernel's own make localmodconfig trims a
distribution-sized configuration (allmodconfig stands in for one) to an lsmod list, and a
build from such a configuration is told about the option. Configuration only, no compile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from memuse_kit.building import compiler, kconfig
from memuse_kit.core.runner import Runner
from memuse_kit.trees.kernel_version import read_tree_version
from tests.kernel_trees import cached_tree

pytestmark = pytest.mark.slow

# lsmod output of a small machine: header, then name, size, use count (and users)
LSMOD = """\
Module                  Size  Used by
btrfs                1802240  0
xor                    24576  1 btrfs
virtio_net             65536  0
loop                   32768  0
"""


@pytest.fixture(scope="module")
def distro_config(tmp_path_factory) -> Path:
    """allmodconfig of the 6.1 tree: tens of thousands of objects, most of them modules."""
    tree = cached_tree("debian:6.1")
    obj = tmp_path_factory.mktemp("allmod")
    cc = compiler.pick(read_tree_version(tree), use_ccache=False)
    subprocess.run(
        ["make", f"O={obj}", *cc.make_args(), "allmodconfig"],
        cwd=tree, check=True, capture_output=True,
    )  # fmt: skip
    return obj / ".config"


def generate(tree: Path, base: Path, obj: Path, lsmod: Path | None) -> Path:
    kernel = read_tree_version(tree)
    request = kconfig.ConfigRequest(
        tree=tree,
        obj=obj,
        kernel=kernel,
        compiler=compiler.pick(kernel, use_ccache=False),
        profile=kconfig.Profile(str(base)),
        fragments=[],
        lsmod=lsmod,
    )
    return kconfig.generate(request, Runner())


def test_localmodconfig_trims_to_the_listed_modules(distro_config, tmp_path, capsys):
    tree = cached_tree("debian:6.1")
    lsmod = tmp_path / "lsmod.txt"
    lsmod.write_text(LSMOD)
    full = generate(tree, distro_config, tmp_path / "full" / "obj", None)
    kconfig.suggest_trimming(full, kconfig.Profile(str(distro_config)), None)
    assert "--localmodconfig trims it" in capsys.readouterr().err
    trimmed = generate(tree, distro_config, tmp_path / "trimmed" / "obj", lsmod)
    options = kconfig.parse_options(trimmed.read_text())
    for kept in ("CONFIG_BTRFS_FS", "CONFIG_VIRTIO_NET", "CONFIG_BLK_DEV_LOOP"):
        assert options.get(kept) == "m", kept
    for dropped in ("CONFIG_EXT4_FS", "CONFIG_E1000E", "CONFIG_SND_HDA_INTEL"):
        assert options.get(dropped, "n") == "n", dropped
    before, after = kconfig.estimated_objects(full), kconfig.estimated_objects(trimmed)
    assert before > kconfig.LARGE_CONFIG_OBJECTS > after
    print(f"allmodconfig of 6.1: about {before} objects; trimmed to 4 modules: about {after}")
    kconfig.suggest_trimming(trimmed, kconfig.Profile(str(distro_config)), lsmod)
    assert "--localmodconfig" not in capsys.readouterr().err
    assert not (tmp_path / "trimmed" / "obj" / ".config").exists()  # only the candidate
    shutil.rmtree(tmp_path / "full")
