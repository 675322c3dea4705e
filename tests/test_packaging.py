"""The package list is written once, in pyproject.toml ([tool.setuptools] ``packages`` and ``package-dir``);
everything else that names the packages is checked against it here:

- every folder of the mapped source trees that holds Python modules is a listed package (a new
  sub-package such as ``server/calls`` cannot be forgotten), and every listed package exists;
- the ``emotion2vec_serving/`` link folder holds exactly one link per top-level folder mapped into the
  namespace, pointing at it (docs/DESIGN.md, "Packaging: one list, and the link folder");
- each Dockerfile that installs the project copies exactly the mapped folders into its build context;
- the wheel built from the tree holds every module and data file of those folders.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.support.deploy import parse_dockerfile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "emotion2vec_serving"
LINKS = ROOT / NAMESPACE
DOCKER = ROOT / "deploy" / "docker"
SKIPPED_DIRS = {"__pycache__", "build", "dist"}

PROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS: dict[str, Any] = PROJECT["tool"]["setuptools"]
PACKAGES: list[str] = SETUPTOOLS["packages"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]
PACKAGE_DATA: dict[str, list[str]] = SETUPTOOLS.get("package-data", {})


def source_dir(package: str) -> PurePosixPath:
    """The checkout folder a package is built from: package-dir maps it or its nearest mapped parent."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in PACKAGE_DIR:
            return PurePosixPath(PACKAGE_DIR[head], *parts[n:])
    return PurePosixPath(*parts)


def mapped_roots() -> dict[str, PurePosixPath]:
    """Mapped package name -> its folder in the checkout (``emotion2vec_serving.server`` -> ``server``)."""
    return {name: PurePosixPath(folder) for name, folder in PACKAGE_DIR.items()}


def _walk(folder: Path) -> list[Path]:
    """Every folder under ``folder`` (itself included), skipping caches, build output and egg-info."""
    found = []
    for here, dirs, _ in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        found.append(Path(here))
    return found


def package_folders() -> dict[PurePosixPath, str]:
    """Folder -> package name for every folder under a mapped root, whether or not it is listed."""
    folders: dict[PurePosixPath, str] = {}
    for name, root in mapped_roots().items():
        for folder in _walk(ROOT / root):
            rel = PurePosixPath(folder.relative_to(ROOT).as_posix())
            folders[rel] = ".".join((name, *rel.relative_to(root).parts))
    return folders


def test_the_mapped_folders_are_top_level_folders_of_the_checkout() -> None:
    for name, folder in PACKAGE_DIR.items():
        assert (ROOT / folder).is_dir(), f"package-dir maps {name} to {folder}, which is not a folder"
    assert PACKAGE_DIR, "pyproject.toml maps no folder"


def test_every_listed_package_exists() -> None:
    for package in PACKAGES:
        folder = source_dir(package)
        assert (ROOT / folder).is_dir(), f"{package} is listed but {folder}/ is missing"
    assert len(set(PACKAGES)) == len(PACKAGES), "a package is listed twice"


def test_every_folder_with_modules_is_a_listed_package() -> None:
    """A folder with ``__init__.py`` under a mapped folder that pyproject does not list would be left out of
    the wheel (a plain install then fails with ModuleNotFoundError, while the checkout works)."""
    listed = set(PACKAGES)
    for folder, package in package_folders().items():
        has_init = (ROOT / folder / "__init__.py").is_file()
        modules = sorted(p.name for p in (ROOT / folder).glob("*.py"))
        if modules and not has_init:
            pytest.fail(f"{folder}/ holds {modules} but no __init__.py: a regular package needs one")
        if has_init:
            assert package in listed, f"{folder}/ is a package ({package}) missing from pyproject's packages"


def test_every_listed_package_without_modules_is_data() -> None:
    """A listed folder without ``__init__.py`` (the web page's files) carries package-data."""
    for package in PACKAGES:
        if not (ROOT / source_dir(package) / "__init__.py").is_file():
            assert PACKAGE_DATA.get(package), f"{package} has no __init__.py and no package-data"


def test_the_link_folder_has_one_link_per_mapped_folder() -> None:
    """``emotion2vec_serving/`` holds a relative link to each folder mapped into the namespace, and
    nothing else (no ``__init__.py``: the namespace stays a PEP 420 namespace package)."""
    expected: dict[str, PurePosixPath] = {}
    for name, folder in mapped_roots().items():
        if name.startswith(NAMESPACE + "."):
            sub = name.removeprefix(NAMESPACE + ".")
            assert "." not in sub, f"package-dir maps the nested {name}: links are for top-level folders"
            expected[sub] = folder
    present = {entry.name: entry for entry in LINKS.iterdir()}
    assert sorted(present) == sorted(expected), (
        f"{NAMESPACE}/ holds {sorted(present)}; pyproject maps {sorted(expected)}"
    )
    for sub, folder in expected.items():
        link = present[sub]
        assert link.is_symlink(), f"{NAMESPACE}/{sub} is not a link"
        target = os.readlink(link)
        assert not os.path.isabs(target), f"{NAMESPACE}/{sub} -> {target}: links must be relative"
        assert link.resolve() == (ROOT / folder).resolve(), f"{NAMESPACE}/{sub} -> {target}, not {folder}"


def _installs_the_project(commands: list[Any]) -> bool:
    runs = " ".join(c.value[0] for c in commands if c.cmd == "RUN")
    return any(arg in {".", '"."', "'.'"} or arg.strip("\"'").startswith(".[")
               for line in runs.split("pip install")[1:] for arg in line.split("&&")[0].split())


def _dockerfiles() -> list[str]:
    return sorted(p.name for p in DOCKER.glob("Dockerfile.*")
                  if _installs_the_project(parse_dockerfile(p)))


def test_some_dockerfiles_install_the_project() -> None:
    assert {"Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.export"} <= set(_dockerfiles())


@pytest.mark.parametrize("name", _dockerfiles())
def test_dockerfiles_copy_exactly_the_mapped_folders(name: str) -> None:
    commands = parse_dockerfile(DOCKER / name)
    copied = sorted(src.rstrip("/").removeprefix("./") for c in commands
                    if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
                    for src in c.value[:-1])
    expected = sorted({"pyproject.toml", PROJECT["project"]["readme"]}
                      | {folder.split("/")[0] for folder in PACKAGE_DIR.values()})
    assert copied == expected, f"{name} copies {copied}; pyproject maps {expected}"


def _data_files(package: str) -> list[tuple[Path, str]]:
    """(file in the checkout, its path in the wheel) for each package-data pattern of a package."""
    folder = ROOT / source_dir(package)
    prefix = PurePosixPath(*package.split("."))
    found = []
    for pattern in PACKAGE_DATA.get(package, []):
        for path in sorted(folder.glob(pattern)):
            if path.is_file():
                found.append((path, str(prefix / path.relative_to(folder).as_posix())))
    return found


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The wheel built (no dependencies, no isolated build env) from a copy of exactly what the Dockerfiles
    copy, so the checkout gets no build/ or egg-info."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", PROJECT["project"]["readme"]):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for folder in sorted({f.split("/")[0] for f in PACKAGE_DIR.values()}):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(base / "dist"), str(src)],
        capture_output=True, text=True, env=env, cwd=base, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (base / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_the_wheel_holds_every_module_of_the_mapped_folders(wheel_names: set[str]) -> None:
    missing = []
    for name, root in mapped_roots().items():
        prefix = PurePosixPath(*name.split("."))
        for path in sorted((ROOT / root).rglob("*.py")):
            rel = path.relative_to(ROOT / root)
            if SKIPPED_DIRS & set(rel.parts):
                continue
            if str(prefix / rel.as_posix()) not in wheel_names:
                missing.append(str(PurePosixPath(root, rel.as_posix())))
    assert not missing, f"the wheel lacks {missing}"
    assert any(n.startswith(f"{NAMESPACE}/server/calls/") for n in wheel_names)


def test_the_wheel_holds_the_package_data(wheel_names: set[str]) -> None:
    for package in PACKAGE_DATA:
        files = _data_files(package)
        assert files, f"package-data of {package} matches no file"
        missing = [wheel_path for _, wheel_path in files if wheel_path not in wheel_names]
        assert not missing, f"the wheel lacks {missing}"
    static = ROOT / "server" / "http" / "static"
    in_wheel = {n.removeprefix(f"{NAMESPACE}/server/http/static/") for n in wheel_names
                if n.startswith(f"{NAMESPACE}/server/http/static/")}
    assert in_wheel == {p.name for p in static.iterdir() if p.is_file()}, in_wheel


def test_the_wheel_installs_nothing_outside_its_packages(wheel_names: set[str]) -> None:
    """Only the namespace and the stubs' ``emotion`` package (and the metadata) are installed: no stray
    top-level ``server``/``batching`` that would shadow or be shadowed by another distribution."""
    tops = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {p.split(".")[0] for p in PACKAGES}, tops
    assert not [n for n in wheel_names if fnmatch.fnmatch(n, "*__pycache__*")]
