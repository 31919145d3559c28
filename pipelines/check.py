"""`orchard check`: validate the loaded projects' definitions and say what a run of each would change.

Loading the projects already checks each definition on its own (a feature
group's key columns, a view's joins and sensitive features, a model's flavor)
and that no two definitions share a name. This adds what needs the catalog and
the storage root: every group a view joins is defined in a loaded project, every
model's view exists and has the features it excludes, every estimator or build
function imports, and no existing group version changed its schema. For each
definition it says what the next run would do: create a table or append to
it (with how many new source files), make training dataset version N, register
model version N.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from features.catalog import all_groups, all_views, generators, get_view
from features.datasets import dataset_versions
from features.pipeline import pending_files
from features.store import OfflineStore
from orchard.errors import OrchardError, UsageError
from orchard.projects import active
from orchard.registry import ModelRegistry
from orchard.storage import Storage
from training.catalog import model_specs


class CheckFailed(UsageError):
    """At least one definition is inconsistent or would be refused by a run."""


@dataclass
class Plan:
    projects: list[str]
    groups: list[dict] = field(default_factory=list)
    views: list[dict] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)
    generators: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"projects": self.projects, "groups": self.groups, "views": self.views, "models": self.models,
                "generators": self.generators, "problems": self.problems, "ok": not self.problems}

    def human(self) -> str:
        lines = [f"projects: {', '.join(self.projects) or 'none'}"]
        for title, rows, key in (("feature groups", self.groups, "group"), ("feature views", self.views, "view"),
                                 ("models", self.models, "model")):
            lines.append(f"{title}:")
            lines += [f"  {row[key]:32} {row['plan']}" for row in rows] or ["  none"]
        if self.generators:
            lines.append(f"data generators: {', '.join(self.generators)}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {problem}" for problem in self.problems]
        else:
            lines.append("ok: every definition is consistent")
        return "\n".join(lines)


def check(storage: Storage) -> Plan:
    plan = Plan(projects=[ref.describe() for ref in active()])
    store, registry = OfflineStore(storage), ModelRegistry(storage)
    groups = all_groups()
    defined = {group.ref for group in groups}
    for group in groups:
        row = {"group": group.ref, "table": store.table_uri(group)}
        changes = store.schema_changes(group)
        if changes:
            plan.problems.append(f"feature group {group.ref}: its schema differs from its table's "
                                 f"({'; '.join(changes)}); define it as version {group.version + 1} instead")
            row["plan"] = "REFUSED: schema changed; make a new version"
        elif group.aggregation is not None:
            upstream = group.aggregation.upstream
            if upstream.ref not in defined:
                plan.problems.append(f"feature group {group.ref} aggregates {upstream.ref}, which no loaded project "
                                     "defines")
            row["plan"] = (f"{'append to' if store.exists(group) else 'create'} table: totals of {upstream.ref}'s "
                           "new rows")
        else:
            sql = sum(1 for source in group.sources if source.format == "sql")
            reads = [f"{sql} SQL table(s) past their watermark"] if sql else []
            if len(group.sources) > sql:
                reads.insert(0, f"{len(pending_files(storage, group, store.checkpoint(group).files))} new file(s)")
            row["plan"] = f"{'append to' if store.exists(group) else 'create'} table: read {', '.join(reads)}"
        plan.groups.append(row)
    for view in all_views():
        used = [view.label.group, *(selection.group for selection in view.selections)]
        missing = sorted({group.ref for group in used if group.ref not in defined})
        if missing:
            plan.problems.append(f"feature view {view.ref} joins {missing}, which no loaded project defines")
        existing = dataset_versions(storage, view)
        plan.views.append({"view": view.ref, "datasets": existing,
                           "plan": f"`datasets create` makes training dataset version {max(existing, default=0) + 1}"})
    for name, spec in model_specs().items():
        row = {"model": name, "flavor": spec.flavor.name, "view": spec.view}
        try:
            view = get_view(spec.view)
            problems = _model_problems(spec, view)
            spec.flavor.verify()
        except OrchardError as error:
            problems = [str(error)]
        plan.problems += [f"model {name}: {problem}" for problem in problems]
        versions = registry.versions(name) if name in registry.models() else []
        row["plan"] = ("REFUSED: " + problems[0]) if problems else (
            f"`train` registers version {max(versions, default=0) + 1} ({spec.flavor.name} on {spec.view})")
        plan.models.append(row)
    plan.generators = list(generators())
    return plan


def _model_problems(spec, view) -> list[str]:
    features = view.feature_columns()
    problems = [f"excluded feature {name!r} is not a feature of {view.ref} (its features: {features})"
                for name in spec.excluded_features if name not in features]
    target = spec.target or view.label.target
    if target != view.label.target and target not in features:
        problems.append(f"target {target!r} is neither {view.ref}'s label {view.label.target!r} nor one of its features")
    if not [name for name in features if name not in spec.excluded_features and name != target]:
        problems.append(f"no feature of {view.ref} is left as an input")
    return problems
