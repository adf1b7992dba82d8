"""The package metadata: the install gives no deprecation warnings and pins what safety needs."""
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_string_with_its_file():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # a TOML table here is deprecated by setuptools (builds stop in 2027)
    assert all((ROOT / f).is_file() for f in project["license-files"])


def test_torch_floor_makes_lpips_weight_loading_safe():
    # the lpips package reads its linear layers with torch.load, which only defaults to weights_only from 2.6
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if re.match(r"torch\b", d))
    major, minor = map(int, re.search(r">=\s*(\d+)\.(\d+)", torch_req).groups())
    assert (major, minor) >= (2, 6)
