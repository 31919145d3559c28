"""`orchard init DIR`: write a small new project that runs end to end at once.

The project is a folder with a `pyproject.toml` whose `[tool.orchard] projects`
names one package: a feature group read from CSV files, a feature view, a model
and a development data generator (`pipelines/templates/project/`). Run from that
folder, every `orchard` command loads it.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from orchard.errors import UsageError

TEMPLATES = Path(__file__).parent / "templates" / "project"
PACKAGE_FILES = ("__init__.py", "groups.py", "models.py", "generate.py")
TOP_FILES = ("pyproject.toml", "README.md")


class InitError(UsageError):
    """The new project cannot be written where or as asked."""


def package_name(folder: Path) -> str:
    """A Python package name from a folder name: `My Shop-2` -> `my_shop_2`."""
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", folder.name).strip("_").lower()
    if not name or name[0].isdigit() or keyword.iskeyword(name):
        name = f"project_{name}".rstrip("_")
    return name


def init_project(folder: Path, package: str | None = None) -> dict:
    """Write the project into `folder` (created if missing; it must not hold a project already)."""
    folder = folder.expanduser().resolve()
    package = package or package_name(folder)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", package) or keyword.iskeyword(package):
        raise InitError(f"package name {package!r} must be lower case letters, digits and '_', not starting with a digit")
    targets = [folder / name for name in TOP_FILES] + [folder / package / name for name in PACKAGE_FILES]
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise InitError(f"{folder} already holds {', '.join(existing)}; choose an empty or new folder")
    values = {"package": package, "distribution": package.replace("_", "-"), "folder": str(folder)}
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template((TEMPLATES / f"{path.name}.tmpl").read_text()).substitute(values))
    return {"folder": str(folder), "package": package, "files": [str(path.relative_to(folder)) for path in targets]}


def next_steps(result: dict) -> str:
    package = result["package"]
    return "\n".join([
        f"created the Orchard project {package} in {result['folder']}:",
        *(f"  {name}" for name in result["files"]),
        "",
        "run it end to end:",
        f"  cd {result['folder']}",
        "  orchard check",
        f"  orchard generate {package} && orchard features run orders && orchard datasets create order_returns",
        "  orchard train returns_classifier && orchard serve",
        "",
        f"then edit {package}/groups.py (your data and its columns), {package}/models.py (your models); "
        "README.md says how",
    ])
