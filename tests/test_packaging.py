"""Packaging as a user meets it, in fresh virtual environments outside the repository.

* ``pip install -e <repo>`` (no extras) into a fresh venv; then ``mypy --strict``, run in a
  directory outside the repository with that venv's interpreter, checks a small program that
  uses ggopool: it must find the package and read its annotations. (An editable install made
  by an import hook, setuptools' default, is invisible to mypy: ``import-not-found``.)
* The oldest hatchling that ``build-system.requires`` allows builds the sdist, the wheel from
  that sdist, and the editable wheel, each holding what it should; the wheel and the sdist
  each install into a fresh venv and run there.

Both reach the package index through pip (or pip's cache), and take some 30 to 60 s together,
so they are marked ``packaging``: ``.ci/run`` runs them once, in the README's test command,
and leaves them out of its coverage run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import ggopool

pytestmark = pytest.mark.packaging

REPO = Path(__file__).absolute().parents[1]
PYPROJECT = (REPO / "pyproject.toml").read_text(encoding="utf-8")
#: Bounds each command: pip may have to download what its cache does not hold.
COMMAND_TIMEOUT = 240.0

#: The backend's PEP 517 hooks, called in the build venv with the kind of build as argv[1].
REQUIRES_HOOK = """\
import sys, hatchling.build as backend
print(*getattr(backend, "get_requires_for_build_" + sys.argv[1])())
"""
BUILD_HOOK = """\
import sys, hatchling.build as backend
print(getattr(backend, "build_" + sys.argv[1])(sys.argv[2]))
"""

GOOD = """\
import ggopool


def total(pool: ggopool.Pool) -> int:
    return pool.submit(sum, [1, 2, 3]).get()


with ggopool.new_pool("outside", 4) as pool:
    print(total(pool), ggopool.__version__)
"""

BAD = """\
import ggopool

pool = ggopool.new_pool("outside", 4)
text: str = pool.submit(sum, [1, 2, 3]).get()
"""


#: Run in a venv where a built wheel or sdist was installed: its version, whether it was
#: imported from that venv's site-packages, and a task's result.
INSTALLED = """\
import sys, ggopool
print(ggopool.__version__, ggopool.__file__.startswith(sys.prefix))
print(ggopool.spawn(sum, [1, 2, 3]).get())
"""


def _env() -> dict[str, str]:
    # Nothing of this checkout's environment may make ggopool importable by another way.
    env = {
        k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "MYPYPATH", "VIRTUAL_ENV"}
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def check(*args: str | Path, cwd: Path) -> str:
    proc = run(*args, cwd=cwd)
    assert proc.returncode == 0, (
        f"{args} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    )
    return proc.stdout


def fresh_venv(where: Path) -> Path:
    """A new venv at ``where``, without pip of its own (this venv's pip installs into it
    with ``--python``, which saves seconds); its python."""
    check(sys.executable, "-m", "venv", "--without-pip", where, cwd=where.parent)
    return where / "bin" / "python"


def pip_install(python: Path, *args: str | Path) -> None:
    check(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "-q",
        *args,
        cwd=python.parents[2],
    )


def oldest_hatchling() -> str:
    match = re.search(r'^requires = \["hatchling>=([0-9.]+)"\]$', PYPROJECT, re.MULTILINE)
    assert match, "build-system.requires names no hatchling lower bound"
    return match.group(1)


def release(version: str) -> tuple[int, ...]:
    """``"1.27.0"`` and ``"1.27"`` alike as ``(1, 27)``."""
    parts = [int(part) for part in version.strip().split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def dependencies() -> list[str]:
    match = re.search(r"^dependencies = \[(.*)\]$", PYPROJECT, re.MULTILINE)
    assert match, "pyproject.toml's dependencies are not on one line"
    return re.findall(r'"([^"]+)"', match.group(1))


@pytest.fixture(scope="module")
def user_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv where ggopool is installed as the README says, ``pip install -e .``."""
    python = fresh_venv(tmp_path_factory.mktemp("user") / "venv")
    pip_install(python, "-e", REPO)
    return python


def test_editable_install_is_seen_by_mypy_strict_outside_the_repository(
    user_python: Path, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "good.py").write_text(GOOD)
    (app / "bad.py").write_text(BAD)
    # The application's own configuration, so nothing of this repository's applies.
    (app / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    mypy = [sys.executable, "-m", "mypy", "--config-file", "mypy.ini"]
    mypy += ["--python-executable", str(user_python), "--no-incremental"]
    proc = run(*mypy, "good.py", "bad.py", cwd=app)
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if ": error:" in line]
    # good.py is clean; bad.py's one error shows mypy read Task[int] from ggopool's annotations.
    assert len(errors) == 1, output
    assert re.fullmatch(
        r'bad\.py:4: error: Incompatible types in assignment \(expression has type "int", '
        r'variable has type "str"\)\s+\[assignment\]',
        errors[0],
    ), output
    assert proc.returncode == 1, output

    # The program runs, and __version__ is the version pip installed.
    assert check(user_python, "good.py", cwd=app) == f"6 {ggopool.__version__}\n"
    installed = check(
        user_python, "-c", "import importlib.metadata as m; print(m.version('ggopool'))", cwd=app
    )
    assert installed == f"{ggopool.__version__}\n"


def test_the_oldest_hatchling_allowed_builds_sdist_wheel_and_editable(
    user_python: Path, tmp_path: Path
) -> None:
    python, version = user_python, oldest_hatchling()
    pip_install(python, f"hatchling=={version}")
    installed = "import importlib.metadata as m; print(m.version('hatchling'))"
    assert release(check(python, "-c", installed, cwd=tmp_path)) == release(version)
    dist = tmp_path / "dist"

    def build(kind: str, source: Path) -> Path:
        # As a PEP 517 frontend does it: install what the backend asks for, then build.
        requires = check(python, "-c", REQUIRES_HOOK, kind, cwd=source).split()
        if requires:
            pip_install(python, *requires)
        return dist / check(python, "-c", BUILD_HOOK, kind, dist, cwd=source).strip()

    # The sdist, from the checkout.
    sdist = build("sdist", REPO)
    root = f"ggopool-{ggopool.__version__}"
    with tarfile.open(sdist) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "sdist", filter="data")
    for name in ["pyproject.toml", "README.md", "LICENSE", "NOTICE", "CHANGELOG.md", "PKG-INFO"]:
        assert f"{root}/{name}" in names, name
    for name in ["__init__.py", "_version.py", "py.typed"]:
        assert f"{root}/ggopool/{name}" in names, name

    # The wheel, from the sdist, as `python -m build` makes it.
    sources = tmp_path / "sdist" / root
    wheel = build("wheel", sources)
    info = f"{root}.dist-info"
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = whl.read(f"{info}/METADATA").decode()
        assert whl.read(f"{info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
        assert whl.read(f"{info}/licenses/NOTICE") == (REPO / "NOTICE").read_bytes()
    assert {name.split("/")[0] for name in names} == {"ggopool", info}
    assert {"ggopool/__init__.py", "ggopool/py.typed", "ggopool/bench/__init__.py"} <= names
    headers = metadata.split("\n\n")[0].splitlines()
    for header in [
        "Metadata-Version: 2.4",
        "Name: ggopool",
        f"Version: {ggopool.__version__}",
        "License-Expression: Apache-2.0",
        "License-File: LICENSE",
        "License-File: NOTICE",
        "Requires-Python: >=3.10",
    ]:
        assert header in headers, (header, headers)
    # The dependencies with no extra's marker are exactly pyproject.toml's.
    requires = [h.removeprefix("Requires-Dist: ") for h in headers if h.startswith("Requires-Dist")]
    assert [r for r in requires if ";" not in r] == dependencies(), headers

    # The wheel and the sdist each install into a fresh venv, where the package runs from
    # site-packages (not this checkout) at the version it was built with.
    for kind, artifact in (("wheel", wheel), ("sdist", sdist)):
        python_ = fresh_venv(tmp_path / f"from-{kind}")
        pip_install(python_, artifact)
        shown = check(python_, "-c", INSTALLED, cwd=tmp_path)
        assert shown.split() == [ggopool.__version__, "True", "6"], (kind, shown)

    # The editable wheel: a path entry in a .pth file (which type checkers follow), not a hook.
    editable = build("editable", REPO)
    with zipfile.ZipFile(editable) as whl:
        [pth] = [name for name in whl.namelist() if name.endswith(".pth")]
        assert whl.read(pth).decode().splitlines() == [str(REPO)]
