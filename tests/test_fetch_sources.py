"""The shipped coordinates, the --source syntax and the distribution fallback."""

from __future__ import annotations

import pytest

from memuse_kit.core.errors import KitError
from memuse_kit.trees import sources
from memuse_kit.trees.sources import Distribution, apt_plan, fallback_spec, parse_spec


@pytest.fixture(scope="module")
def shipped():
    return sources.load_coordinates()


def test_shipped_default_is_the_ubuntu_hwe_5_11_tag(shipped):
    assert shipped.default == "ubuntu-hwe-5.11"
    hwe = shipped.git["ubuntu-hwe-5.11"]
    assert hwe.url == "https://git.launchpad.net/~ubuntu-kernel/ubuntu/+source/linux/+git/focal"
    assert hwe.version == "5.11.0-37.41~20.04.2"
    # Ubuntu tags spell the version's "~" as "_"
    assert hwe.tag == "Ubuntu-hwe-5.11-" + hwe.version.replace("~", "_")


def test_shipped_debian_series_and_their_suites(shipped):
    suites = {
        series: [line.split()[1] for line in lines]
        for series, lines in shipped.debian.series.items()
    }
    assert suites == {
        "5.10": ["bullseye", "bullseye-security"],
        "6.1": ["bookworm", "bookworm-security"],
        "6.12": ["trixie", "trixie-security"],
        "7.2": ["sid"],
    }
    assert "signed-by=/usr/share/keyrings/debian-archive-keyring.gpg" in shipped.debian.options


def test_shipped_kernel_org_urls(shipped):
    ko = shipped.kernel_org
    assert ko.directory_url("5.11") == "https://cdn.kernel.org/pub/linux/kernel/v5.x"
    assert ko.tarball_name("5.11.22") == "linux-5.11.22.tar.xz"
    assert ko.sha256 == {}  # nothing pinned that was not verified


@pytest.mark.parametrize(
    ("text", "kind", "arg"),
    [
        ("ubuntu-hwe-5.11", "git", "ubuntu-hwe-5.11"),
        ("debian:7.2", "debian", "7.2"),
        (" kernel.org:5.11 ", "kernel.org", "5.11"),
        ("kernel.org:6.1.55", "kernel.org", "6.1.55"),
    ],
)
def test_specs_parse(shipped, text, kind, arg):
    spec = parse_spec(text, shipped)
    assert (spec.kind, spec.name, spec.arg) == (kind, text.strip(), arg)


@pytest.mark.parametrize("text", ["debian:7", "debian:7.2.13", "kernel.org:x", "ubuntu", "6.1"])
def test_bad_specs_say_what_is_accepted(shipped, text):
    with pytest.raises(KitError, match=r"debian:X\.Y or kernel\.org:X\.Y"):
        parse_spec(text, shipped)


@pytest.mark.parametrize(
    ("distro", "spec"),
    [
        (Distribution("debian", "bookworm"), "debian:6.1"),
        (Distribution("debian", "bullseye"), "debian:5.10"),
        (Distribution("debian", "trixie"), "debian:6.12"),
        (Distribution("ubuntu", "focal"), "debian:5.11"),
        (Distribution("ubuntu", "noble"), None),
        (Distribution("arch", ""), None),
    ],
)
def test_fallback_is_the_running_distributions_source(shipped, distro, spec):
    assert fallback_spec(shipped, distro) == spec


def test_os_release_is_read(tmp_path):
    path = tmp_path / "os-release"
    path.write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n'
    )
    assert sources.running_distribution(path) == Distribution("debian", "bookworm")
    assert sources.running_distribution(tmp_path / "absent") == Distribution("", "")


def test_debian_series_use_a_private_debian_configuration(shipped):
    plan = apt_plan(shipped, "7.2", Distribution("debian", "bookworm"))
    assert plan.package == "linux-source-7.2"
    assert plan.lines == ["http://deb.debian.org/debian sid main"]


def test_ubuntu_takes_its_own_hwe_package_from_the_system_index(shipped):
    plan = apt_plan(shipped, "5.11", Distribution("ubuntu", "focal"))
    assert (plan.package, plan.lines) == ("linux-hwe-5.11-source-5.11.0", None)
    # series Ubuntu does not carry still come from Debian's archive
    assert apt_plan(shipped, "6.1", Distribution("ubuntu", "focal")).lines is not None


def test_unknown_series_names_the_known_ones(shipped):
    with pytest.raises(KitError, match=r"known: 5\.10, 6\.1, 6\.12, 7\.2"):
        apt_plan(shipped, "4.19", Distribution("debian", "bookworm"))


def test_a_broken_data_file_is_one_clear_error(tmp_path):
    path = tmp_path / "sources.toml"
    path.write_text('default = "x"\n')
    with pytest.raises(KitError, match="kernel_org"):
        sources.load_coordinates(path)
