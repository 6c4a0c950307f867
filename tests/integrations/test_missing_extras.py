"""Without verl/TRL (or with an unsupported version) the adapters fail at import with the extra to install.

These tests need no extra: they hide or fake the framework in `sys.modules`, so they run in the default
suite as well as in `make test-integrations`.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest

ADAPTERS = [
    ("verl", "asympo.integrations.verl", "0.9", "0.10"),
    ("trl", "asympo.integrations.trl", "1.16", "1.17"),
]


@pytest.mark.parametrize("package, module, minimum, below", ADAPTERS)
def test_missing_framework_names_the_extra(monkeypatch, package, module, minimum, below):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError) as err:
        importlib.import_module(module)
    msg = str(err.value)
    assert f"pip install 'asympo[{package}]'" in msg
    assert f"{package}>={minimum},<{below}" in msg
    assert "not installed" in msg


@pytest.mark.parametrize("package, module, minimum, below", ADAPTERS)
@pytest.mark.parametrize("version", ["0.1.0", "99.0"])
def test_unsupported_version_is_named(monkeypatch, package, module, minimum, below, version):
    fake = types.ModuleType(package)
    fake.__version__ = version
    monkeypatch.setitem(sys.modules, package, fake)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf"{package} {version} is installed") as err:
        importlib.import_module(module)
    assert f"supports {package}>={minimum},<{below}" in str(err.value)
    assert f"pip install 'asympo[{package}]'" in str(err.value)


@pytest.mark.parametrize(
    "version, accepted",
    [("0.9.0", True), ("0.9.1", True), ("0.9.2.post1", True), ("0.8.9", False), ("0.10.0", False),
     ("0.10.0.dev1", False), ("unknown", False)],
)  # fmt: skip
def test_version_range_for_verl(monkeypatch, version, accepted):
    from asympo.integrations import require

    fake = types.ModuleType("fake_framework")
    fake.__version__ = version
    monkeypatch.setitem(sys.modules, "fake_framework", fake)
    if accepted:
        assert require("fake_framework", extra="verl", minimum="0.9", below="0.10", module="m") is fake
    else:
        with pytest.raises(ImportError, match=rf"fake_framework {version} is installed"):
            require("fake_framework", extra="verl", minimum="0.9", below="0.10", module="m")
