"""The configuration edits every build gets that are not in any fragment."""

from __future__ import annotations

from pathlib import Path

from memuse_kit.building import kconfig


def test_panic_reboot_goes_on_an_empty_builtin_command_line():
    assert kconfig.cmdline_args(None) == [
        "--enable", "CMDLINE_BOOL", "--set-str", "CMDLINE", "panic=10",
    ]  # fmt: skip
    assert kconfig.cmdline_args('""')[-1] == "panic=10"


def test_a_builtin_command_line_is_kept_and_its_own_panic_respected():
    assert kconfig.cmdline_args('"console=ttyS0 quiet"')[-1] == "console=ttyS0 quiet panic=10"
    assert kconfig.cmdline_args('"panic=30 quiet"')[-1] == "panic=30 quiet"


def write_config(path: Path, modules: int, builtins: int) -> Path:
    lines = [f"CONFIG_M{i}=m" for i in range(modules)] + [f"CONFIG_Y{i}=y" for i in range(builtins)]
    path.write_text("\n".join([*lines, "# CONFIG_OFF is not set", ""]))
    return path


def test_large_distribution_configs_get_the_localmodconfig_suggestion(tmp_path, capsys):
    distro = kconfig.Profile("/boot/config-6.1.0-56-amd64")
    small = write_config(tmp_path / "small", modules=100, builtins=1500)
    kconfig.suggest_trimming(small, distro, None)
    assert capsys.readouterr().err == ""
    large = write_config(tmp_path / "large", modules=3853, builtins=2418)  # Debian 12's
    kconfig.suggest_trimming(large, distro, None)
    assert "--localmodconfig trims it" in capsys.readouterr().err
    kconfig.suggest_trimming(large, kconfig.PROFILES["vm"], None)  # our own profiles: never
    kconfig.suggest_trimming(large, distro, tmp_path / "lsmod.txt")  # already trimming
    assert capsys.readouterr().err == ""
