"""The registry is the one source of truth: every conf/norm/<name>.yaml and the README's method
table are generated from the registrations (`python -m normlab.norms.catalog --write`) and
must match them; a failure names the file and the command that fixes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from normlab.norms import available_norms, catalog, get_norm_spec
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.fast  # in-process: make test-fast

CONF_NORM = REPO_ROOT / "conf" / "norm"
FIX = f"run `{catalog.COMMAND}`"


@pytest.mark.parametrize("name", available_norms())
def test_conf_file_is_generated_from_the_registration(name: str) -> None:
    spec = get_norm_spec(name)
    path = CONF_NORM / f"{name}.yaml"
    assert path.exists(), f"conf/norm/{name}.yaml is missing; {FIX}"
    assert path.read_text() == catalog.conf_text(spec), (
        f"conf/norm/{name}.yaml is out of date with register_norm('{name}') in "
        f"{spec.builder.__module__}; {FIX}"
    )


@pytest.mark.parametrize("name", available_norms())
def test_conf_file_holds_the_name_and_the_builder_defaults(name: str) -> None:
    """What `norm=<name>` composes: the name and every parameter with the builder's default."""
    loaded = OmegaConf.to_container(OmegaConf.load(CONF_NORM / f"{name}.yaml"))
    assert loaded == {"name": name, **get_norm_spec(name).defaults}, f"conf/norm/{name}.yaml; {FIX}"


def test_every_conf_file_names_a_registered_method() -> None:
    registered = set(available_norms())
    extra = sorted(p.name for p in CONF_NORM.glob("*.yaml") if p.stem not in registered)
    assert not extra, f"conf/norm/{extra} name no registered method; delete them or register them"


def test_readme_method_table_is_generated_from_the_registry() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert readme == catalog.readme_with_table(readme), (
        f"README.md's method table is out of date with the norm registry; {FIX}"
    )


def test_readme_rows_show_the_summary_parameters_and_batch_dependence() -> None:
    rows = catalog.table_lines()[2:]
    assert len(rows) == len(available_norms())
    for name in available_norms():
        spec = get_norm_spec(name)
        (row,) = [r for r in rows if r.startswith(f"| `{name}` |")]
        assert f"| {spec.summary} |" in row
        assert all(f"`{key}`" in row for key in spec.defaults if key != "compile")
        assert row.endswith("| yes |" if spec.batch_dependent else "| no |")


@pytest.mark.parametrize("value", [0.1, 1e-5, 1e-6, 0.03, 3.0, 1e16, 5000, 0, None, True, False])
def test_yaml_scalars_read_back_as_themselves(value: object) -> None:
    text = catalog.yaml_scalar(value)
    assert yaml.safe_load(text) == value and type(yaml.safe_load(text)) is type(value)
    assert OmegaConf.create(f"k: {text}").k == value


@pytest.mark.parametrize("value", ["naive", "null", "yes", "1.5", "a: b"])
def test_yaml_strings_read_back_as_strings(value: str) -> None:
    assert yaml.safe_load(catalog.yaml_scalar(value)) == value


def test_check_names_stale_files_and_write_fixes_them(tmp_path: Path) -> None:
    shutil.copytree(CONF_NORM, tmp_path / "conf" / "norm")
    shutil.copy(REPO_ROOT / "README.md", tmp_path / "README.md")
    assert catalog.main(["--root", str(tmp_path)]) == 0
    bn = tmp_path / "conf" / "norm" / "bn.yaml"
    bn.write_text(bn.read_text().replace("momentum: 0.1", "momentum: 0.2"))
    generated_orphan = tmp_path / "conf" / "norm" / "gone.yaml"
    generated_orphan.write_text(catalog.GENERATED + '("gone")\nname: gone\n')
    problems = catalog.stale(tmp_path)
    assert any(p.startswith("conf/norm/bn.yaml") and catalog.COMMAND in p for p in problems)
    assert any(p.startswith("conf/norm/gone.yaml") for p in problems)
    assert catalog.main(["--root", str(tmp_path)]) == 1
    assert catalog.main(["--write", "--root", str(tmp_path)]) == 0
    assert "momentum: 0.1" in bn.read_text() and not generated_orphan.exists()
    assert catalog.stale(tmp_path) == []
