"""Projects: the user's own packages of definitions, found by configuration and loaded the same way everywhere.

A project is a Python package (a folder with ``__init__.py``) or an importable
module that the user owns. Orchard never imports one by name in its own code:
the projects to load come from configuration, first match wins:

1. ``--project`` options (``orchard --project DIR_OR_MODULE ...``, every job too);
2. the ``ORCHARD_PROJECTS`` variable, entries separated by ``:``;
3. ``[tool.orchard] projects = [...]`` in the ``pyproject.toml`` of the folder
   Orchard runs in (folders relative to that file).

An entry with a ``/`` (or starting with ``.`` or ``~``) is a package folder; a
bare name is a module name if it imports, else the package folder of that name
next to the configuration (the cwd, or the ``pyproject.toml``). Loading a project imports the package and every
submodule in it (except names that start with ``_`` or ``test``), the way
Feast's ``apply`` reads every file of a feature repository. The engine then
collects definitions from the loaded modules *by type* (`collect`): each layer
asks for its own kinds (feature groups, views, models, data generators), so the
kernel knows nothing about them.

On a Ray cluster the projects' folders travel with the runtime env as
``py_modules`` and ``ORCHARD_PROJECTS`` names their modules
(`OrchardConfig.runtime_env`); a worker that needs a definition loads them
from there (`active_modules`), so the driver, Ray workers, Serve replicas and
``ray job submit`` jobs all see the same code.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping, TypeVar

from orchard.errors import NotFoundError, ProjectError

PROJECTS_ENV = "ORCHARD_PROJECTS"
PYPROJECT = "pyproject.toml"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")

T = TypeVar("T")


@dataclass(frozen=True)
class ProjectRef:
    """One project to load: its module name, and the package folder to ship to Ray workers (None if installed)."""

    module: str
    folder: str | None = None
    source: str = ""
    """Where the entry came from (shown in errors)."""

    def __post_init__(self) -> None:
        if not isinstance(self.module, str) or not _MODULE_NAME.match(self.module):
            raise ProjectError(f"project module name {self.module!r} (from {self.source or 'code'}) must be a dotted "
                               "Python name (letters, digits and '_', not starting with a digit)")

    def describe(self) -> str:
        return f"{self.module} ({self.folder})" if self.folder else self.module


def parse_entries(entries: Iterable[str], *, base: Path, source: str) -> tuple[ProjectRef, ...]:
    """Resolve configured entries: folders become absolute (relative to `base`), module names stay names."""
    refs = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        candidate = Path(entry).expanduser()
        candidate = candidate if candidate.is_absolute() else base / candidate
        explicit_folder = "/" in entry or os.sep in entry or entry.startswith((".", "~"))
        # A bare name is a module when it imports as one (a Ray worker finds the projects it was sent that way),
        # else the package folder of that name next to the configuration.
        if explicit_folder or (not _importable(entry) and candidate.is_dir()):
            refs.append(_folder_ref(entry, candidate.resolve(), source))
        elif _MODULE_NAME.match(entry):
            refs.append(ProjectRef(entry, None, source))
        else:
            raise ProjectError(f"project entry {entry!r} (from {source}) is neither a folder nor a module name")
    names = [ref.module for ref in refs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ProjectError(f"projects {clashes} are listed twice (from {source}); each module name may appear once")
    return tuple(refs)


def _folder_ref(entry: str, folder: Path, source: str) -> ProjectRef:
    if not folder.is_dir():
        raise ProjectError(f"project folder {entry!r} (from {source}) does not exist: {folder}")
    if not (folder / "__init__.py").is_file():
        raise ProjectError(f"project folder {folder} (from {source}) is not a Python package: it needs an __init__.py")
    if not _MODULE_NAME.match(folder.name):
        raise ProjectError(f"project folder {folder} (from {source}): {folder.name!r} is not a valid Python package "
                           "name (letters, digits and '_', not starting with a digit)")
    return ProjectRef(folder.name, str(folder), source)


def _importable(name: str) -> bool:
    if not _MODULE_NAME.match(name):
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def from_pyproject(folder: Path) -> tuple[ProjectRef, ...] | None:
    """`[tool.orchard] projects` of `folder/pyproject.toml`, or None when the file or the key is absent."""
    path = folder / PYPROJECT
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ProjectError(f"{path} cannot be read: {error}") from None
    projects = data.get("tool", {}).get("orchard", {}).get("projects")
    if projects is None:
        return None
    if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
        raise ProjectError(f"{path}: [tool.orchard] projects must be a list of strings, got {projects!r}")
    return parse_entries(projects, base=path.parent, source=str(path))


def configured(flags: Iterable[str] | None, env: Mapping[str, str], cwd: Path) -> tuple[ProjectRef, ...]:
    """The projects to load: `--project` flags, else $ORCHARD_PROJECTS, else the cwd's pyproject.toml."""
    flags = [f for f in (flags or ()) if f]
    if flags:
        return parse_entries(flags, base=cwd, source="--project")
    if env.get(PROJECTS_ENV):
        return parse_entries(env[PROJECTS_ENV].split(":"), base=cwd, source=PROJECTS_ENV)
    return from_pyproject(cwd) or ()


def shipped_folder(ref: ProjectRef) -> str | None:
    """The package folder Ray workers need for `ref`: its own folder, or an importable module's if not installed."""
    if ref.folder:
        return ref.folder
    top = ref.module.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    location = Path(list(spec.submodule_search_locations)[0])
    if any(part in ("site-packages", "dist-packages") for part in location.parts):
        return None  # installed: every node that runs Orchard installs it the same way
    return str(location)


# -- loading


_lock = threading.RLock()
_active: tuple[ProjectRef, ...] | None = None
_modules: list[ModuleType] = []


def activate(refs: Iterable[ProjectRef]) -> list[ModuleType]:
    """Load these projects and make them the ones definitions are collected from (replacing any before)."""
    global _active, _modules
    refs = tuple(refs)
    with _lock:
        modules = []
        for ref in refs:
            modules.extend(_load(ref))
        _active, _modules = refs, modules
        return list(modules)


def active() -> tuple[ProjectRef, ...]:
    with _lock:
        if _active is None:
            activate(configured(None, os.environ, Path.cwd()))
        return _active or ()


def active_modules() -> list[ModuleType]:
    """The modules of the active projects; in a process that activated none (a Ray worker), those configured
    by its environment."""
    active()
    with _lock:
        return list(_modules)


def _load(ref: ProjectRef) -> list[ModuleType]:
    if ref.folder:
        parent = str(Path(ref.folder).parent)
        existing = sys.modules.get(ref.module)
        existing_file = getattr(existing, "__file__", None)
        if existing is not None and existing_file and Path(existing_file).parent != Path(ref.folder):
            raise ProjectError(f"project {ref.describe()}: a different module named {ref.module!r} is already "
                               f"imported from {Path(existing_file).parent}; rename the project's folder")
        if parent not in sys.path:
            sys.path.insert(0, parent)
    package = _import(ref, ref.module)
    modules = [package]
    if hasattr(package, "__path__"):
        for info in sorted(pkgutil.walk_packages(package.__path__, prefix=f"{ref.module}."), key=lambda i: i.name):
            leaf_parts = info.name.split(".")[1:]
            if any(part.startswith(("_", "test")) for part in leaf_parts):
                continue
            modules.append(_import(ref, info.name))
    return modules


def _import(ref: ProjectRef, name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == name or name.startswith(f"{error.name}."):
            raise ProjectError(f"project {ref.describe()} (from {ref.source or 'configuration'}): no module named "
                               f"{name!r}; install it or name its folder") from error
        raise ProjectError(f"project {ref.describe()}: importing {name} failed: {error}") from error
    except Exception as error:  # noqa: BLE001 - a user's module may raise anything at import
        raise ProjectError(f"project {ref.describe()}: importing {name} failed: {type(error).__name__}: {error}") \
            from error


# -- collecting definitions by type


@dataclass(frozen=True)
class Found:
    """A definition and where it was defined (module.attribute and file), for messages."""

    value: Any
    origin: str


def collect(kind: type[T] | tuple[type, ...], key: Callable[[Any], str], what: str,
            modules: Iterable[ModuleType] | None = None) -> dict[str, Found]:
    """Every module-level object of type `kind` in the active projects, by `key`.

    The same object reached through two modules (one imports the other's) counts
    once; two different objects with one key are a `ProjectError` naming both places.
    """
    found: dict[str, Found] = {}
    for module in active_modules() if modules is None else modules:
        for attribute, value in vars(module).items():
            if not isinstance(value, kind) or attribute.startswith("__"):
                continue
            name = key(value)
            origin = f"{module.__name__}.{attribute} ({_where(module)})"
            if name in found:
                if found[name].value is value:
                    continue
                raise ProjectError(f"two {what} named {name!r}: {found[name].origin} and {origin}; "
                                   "give one another name (or version)")
            found[name] = Found(value, origin)
    return dict(sorted(found.items()))


def lookup(found: Mapping[str, Found], name: str, what: str) -> Any:
    """`found[name]`, or a NotFoundError listing what is known and which projects are loaded."""
    if name in found:
        return found[name].value
    projects = ", ".join(ref.describe() for ref in active()) or (
        f"none: set --project, ${PROJECTS_ENV} or [tool.orchard] projects in {PYPROJECT}")
    raise NotFoundError(f"no {what} named {name!r}; known: {', '.join(found) or 'none'} (projects loaded: {projects})")


def _where(module: ModuleType) -> str:
    try:
        return inspect.getsourcefile(module) or module.__name__
    except TypeError:
        return module.__name__
