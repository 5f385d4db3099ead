"""normlab.data.shared finds the project, the shared archive and the cache wherever normlab is
installed: from the current directory, with the environment variables overriding."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from normlab.data import shared

PYPROJECT = '[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "normlab"\n'


def make_archive(folder: Path) -> Path:
    """A tiny stand-in for the shared archive: cifar10/train/ and cifar10/test/, one file each."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / shared.ARCHIVE_NAME
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            data = b"not a jpeg"
            info = tarfile.TarInfo(f"cifar10/{split}/airplane/0.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


@pytest.fixture
def installed_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """normlab as a non-editable install: its files in a site-packages outside any checkout,
    neither environment variable set. Returns the temporary folder."""
    site = tmp_path / "venv" / "lib" / "site-packages" / "normlab" / "data"
    site.mkdir(parents=True)
    monkeypatch.setattr(shared, "__file__", str(site / "shared.py"))
    monkeypatch.delenv(shared.SHARED_DATA_ENV, raising=False)
    monkeypatch.delenv(shared.CACHE_ENV, raising=False)
    return tmp_path


def test_project_and_archive_are_found_from_the_current_directory(
    installed_elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = installed_elsewhere / "work" / "normlab"
    (checkout / "conf" / "data").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text(PYPROJECT)
    archive = make_archive(installed_elsewhere / "work" / "shared" / "data")
    monkeypatch.chdir(checkout / "conf" / "data")

    assert shared.find_project_root() == checkout.resolve()
    assert shared.shared_archive() == archive.resolve()
    assert shared.default_cache_dir() == checkout.resolve() / ".cache"
    root = shared.ensure_shared_cifar10()
    assert root == checkout.resolve() / ".cache" / "data" / "cifar10"
    assert (root / "train" / "airplane" / "0.jpg").is_file() and (root / ".unpacked").exists()


def test_only_a_pyproject_naming_normlab_marks_the_project(
    installed_elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = installed_elsewhere / "normlab"
    other = checkout / "notebooks" / "other"
    other.mkdir(parents=True)
    (checkout / "pyproject.toml").write_text(PYPROJECT)
    # Another project's name, and "normlab" as a name outside the [project] table.
    (other / "pyproject.toml").write_text(
        '[project]\nname = "other"\n\n[tool.something]\nname = "normlab"\n'
    )
    monkeypatch.chdir(other)
    assert shared.find_project_root() == checkout.resolve()
    assert shared.find_project_root(installed_elsewhere) is None


def test_environment_variables_override(
    installed_elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive(installed_elsewhere / "data")
    monkeypatch.setenv(shared.SHARED_DATA_ENV, str(archive.parent))
    monkeypatch.setenv(shared.CACHE_ENV, str(installed_elsewhere / "cache"))
    monkeypatch.chdir(installed_elsewhere)

    assert shared.shared_archive() == archive
    root = shared.ensure_shared_cifar10()
    assert root == installed_elsewhere / "cache" / "data" / "cifar10"
    assert (root / "test" / "airplane" / "0.jpg").is_file()


def test_nothing_found_names_the_environment_variables(
    installed_elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(installed_elsewhere)
    assert shared.find_project_root() is None
    assert shared.shared_archive() is None
    with pytest.raises(FileNotFoundError, match=shared.CACHE_ENV):
        shared.default_cache_dir()
    with pytest.raises(FileNotFoundError, match=shared.SHARED_DATA_ENV):
        shared.ensure_shared_cifar10(installed_elsewhere / "cache")


def test_make_data_runs_from_the_project_root(
    installed_elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make data` is `python -m normlab.data.shared` from the checkout's root.
    checkout = installed_elsewhere / "normlab"
    checkout.mkdir()
    (checkout / "pyproject.toml").write_text(PYPROJECT)
    make_archive(checkout / "shared" / "data")
    src = Path(shared.__spec__.origin).parents[2]  # type: ignore[union-attr]
    monkeypatch.setenv("PYTHONPATH", str(src))
    result = subprocess.run(
        [sys.executable, "-m", "normlab.data.shared"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(result.stdout.strip()) == checkout.resolve() / ".cache" / "data" / "cifar10"
