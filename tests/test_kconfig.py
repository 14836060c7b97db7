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


def test_9p_gets_ipv4_back_only_where_its_kconfig_depends_on_it(tmp_path):
    (tmp_path / "fs/9p").mkdir(parents=True)
    kconfig_9p = tmp_path / "fs/9p/Kconfig"
    kconfig_9p.write_text(  # 6.1
        'config 9P_FS\n\ttristate "Plan 9 Resource Sharing Support (9P2000)"\n'
        "\tdepends on INET && NET_9P\n\tselect NETFS_SUPPORT\n\thelp\n\t  text\n"
    )
    assert kconfig.virtme_root_needs(tmp_path) == ["INET"]
    kconfig_9p.write_text(  # 7.2
        'config 9P_FS\n\ttristate "Plan 9 Resource Sharing Support (9P2000)"\n'
        "\tdepends on NET_9P\n\tselect NETFS_SUPPORT\n\thelp\n\t  INET is not needed\n"
        "\nconfig 9P_FS_POSIX_ACL\n\tdepends on INET\n"
    )
    assert kconfig.virtme_root_needs(tmp_path) == []


def test_an_option_the_kit_turned_on_for_the_root_is_no_unmet_request(tmp_path, capsys):
    fragment = tmp_path / "vm.config"
    fragment.write_text("CONFIG_INET=n\nCONFIG_9P_FS=y\n")
    candidate = tmp_path / ".config"
    candidate.write_text("CONFIG_INET=y\n# CONFIG_9P_FS is not set\n")
    kconfig._warn_unmet(candidate, [fragment], {"CONFIG_INET"})
    err = capsys.readouterr().err
    assert "CONFIG_9P_FS=y requested" in err and "CONFIG_INET" not in err
