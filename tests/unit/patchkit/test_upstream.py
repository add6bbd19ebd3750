"""The UPSTREAM pin file and wheel names."""

from __future__ import annotations

import pytest

from sagellm.patchkit.errors import ConfigError
from sagellm.patchkit.upstream import parse_upstream, parse_wheel_name

GOOD = """# comment
package=lmdeploy
version=0.11.0
source=pypi
artifact=lmdeploy-0.11.0-cp311-cp311-manylinux2014_x86_64.whl
sha256=e767d100bb14bd9e570988481e33d373b6ee8425058675e1eca9a5c7eca13fff
"""


def test_parse_good_pin() -> None:
    pin = parse_upstream(GOOD)

    assert (pin.package, pin.version, pin.source) == ("lmdeploy", "0.11.0", "pypi")
    assert pin.tag == "upstream-0.11.0"
    assert pin.wheel.python_version == "3.11"
    assert pin.wheel.platform_tags == ("manylinux2014_x86_64",)
    assert parse_upstream(pin.render("header")) == pin


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("sha256=e767", "sha256=E767"), "64 lowercase hex"),
        (("source=pypi", "source=github"), "not supported"),
        (("version=0.11.0", "version=0.12.0"), "does not belong to lmdeploy==0.12.0"),
        (("package=lmdeploy\n", ""), "missing package"),
        (("source=pypi", "source=pypi\nsource=pypi"), "set twice"),
        (("source=pypi", "colour=blue"), "unknown key 'colour'"),
        (
            ("artifact=lmdeploy-0.11.0-cp311-cp311-manylinux2014_x86_64.whl", "artifact=lmdeploy-0.11.0.tar.gz"),
            "not a wheel",
        ),
    ],
)
def test_bad_pins_name_the_problem(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_upstream(GOOD.replace(*edit))


def test_compound_platform_tags() -> None:
    wheel = parse_wheel_name("xgrammar-0.2.8-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl")

    assert wheel.platform_tags == ("manylinux_2_27_x86_64", "manylinux_2_28_x86_64")
