"""Expectation suites as versioned data: load a YAML suite, expand it, apply overrides, version it.

A suite file (``suites/<kind>.yaml``) names its ``kind``, a ``version``, fragments to ``include``
(``common``; ``conversation``, whose entries are repeated for each conversation column of the kind
with ``{column}`` filled in), its own ``expectations`` and ``overrides`` of included ones. The
runner adds ``media`` (repeated per media type, ``{media}``) and ``<media>.yaml`` for each media
type the dataset carries.

An expectation entry::

    - name: no_empty_text              # unique; overrides address it (or one expansion: name[col])
      type: expect_column_values_to_be_between    # a GX expectation over derived columns
      column: messages_empty_parts     # or columns: [a, b] (one check each) or column_A/column_B
      kwargs: {min_value: 0, max_value: 0}
      mostly: 1.0                      # fraction of rows that must meet it (default 1.0)
      severity: error                  # error fails the dataset; warning is reported only
      description: ...

The suite version string is the declared version plus a digest of everything resolved (entries,
thresholds, overrides, the derived-column code version), so any change to what is checked
changes the version and with it the validation cache key.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from align_core.errors import UsageError
from align_core.io import sha256_json
from align_core.shards.schema import CONVERSATION_COLUMNS, Kind, parse_kind

SUITES_DIR = Path(__file__).parent / "suites"
SEVERITIES = ("error", "warning")
# Bump when a derived column (data_contracts/derive.py) changes meaning: it is part of every suite version.
# 2: unbacked_media_placeholders; messages without parts count as empty. 3: damaged_text_parts; preference
# pairs' length_difference_chars, longer_is_chosen, pair_similarity, score_margin, safety_label_conflict.
# 4: {column}_chars, text_script, prompt_near_duplicate.
DERIVED_COLUMNS_VERSION = 4
# Whole-dataset expectations the runner evaluates over the total row count (GX sees one chunk at a time).
TABLE_EXPECTATIONS = ("expect_table_row_count_to_be_between", "expect_table_row_count_to_equal")
# Column aggregates the runner judges over the whole dataset from sums that add up over chunks.
DATASET_AGGREGATES = ("expect_column_mean_to_be_between",)
DOMAIN_KEYS = ("column", "column_A", "column_B", "column_list")
SUITE_KEYS = {"name", "kind", "version", "description", "include", "overrides", "expectations"}
FRAGMENT_KEYS = {"version", "description", "for_each", "expectations"}
ENTRY_KEYS = {"name", "type", "columns", "kwargs", "mostly", "severity", "description", *DOMAIN_KEYS}
OVERRIDE_FIELDS = ("mostly", "severity", "enabled")


@dataclass(frozen=True)
class ExpectationSpec:
    """One check, fully resolved: a GX expectation type over derived columns plus its thresholds."""

    name: str  # unique in the suite, e.g. "no_empty_text[chosen]"
    group: str  # the entry it was expanded from, e.g. "no_empty_text"
    type: str
    domain: dict[str, Any]  # {"column": c} | {"column_A": a, "column_B": b} | {} for table-level
    kwargs: dict[str, Any]
    mostly: float = 1.0
    severity: str = "error"
    description: str = ""

    @property
    def table_level(self) -> bool:
        return self.type in TABLE_EXPECTATIONS

    @property
    def dataset_aggregate(self) -> bool:
        return self.type in DATASET_AGGREGATES

    @property
    def columns(self) -> list[str]:
        """The derived columns this check reads."""
        values = [self.domain[key] for key in DOMAIN_KEYS if key in self.domain]
        return [column for value in values for column in (value if isinstance(value, list) else [value])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Suite:
    name: str
    kind: Kind
    version: str
    expectations: tuple[ExpectationSpec, ...]
    source: str  # the suite file
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def expectation(self, name: str) -> ExpectationSpec:
        for spec in self.expectations:
            if spec.name == name:
                return spec
        raise KeyError(name)


def available_suites() -> list[str]:
    """Names of the built-in suites (fragments such as ``common`` are not suites)."""
    return sorted(path.stem for path in SUITES_DIR.glob("*.yaml") if "kind" in (_read_yaml(path) or {}))


def load_suite(
    suite: str | None,
    kind: Kind | str,
    media: tuple[str, ...] = (),
    overrides: dict[str, Any] | None = None,
) -> Suite:
    """The resolved suite ``suite`` (a built-in name or a YAML path; default: the one named after
    ``kind``) for a dataset of ``kind`` carrying ``media``, with ``overrides`` applied."""
    kind = parse_kind(kind)
    path = _suite_path(suite or kind.value)
    data = _read_mapping(path, SUITE_KEYS)
    where = str(path)
    if parse_kind(_required(data, "kind", where)) is not kind:
        raise UsageError(f"suite {where} is for {data['kind']!r} shards, the dataset holds {kind.value!r} shards")
    specs: list[ExpectationSpec] = []
    for include in data.get("include") or []:
        specs += load_fragment(_fragment_path(include, path.parent), kind, media)
    specs += _expand_entries(data.get("expectations") or [], where, {})
    for media_type in media:
        specs += load_fragment(_fragment_path("media", path.parent), kind, (media_type,))
        own_checks = SUITES_DIR / f"{media_type}.yaml"
        if own_checks.is_file():
            specs += load_fragment(own_checks, kind, (media_type,))
    _check_unique(specs, where)
    specs = apply_overrides(specs, data.get("overrides") or {}, where)
    user_overrides = normalize_overrides(overrides)
    specs = apply_overrides(specs, user_overrides, "overrides")
    version = f"{data.get('name') or path.stem}-v{_required(data, 'version', where)}-" + sha256_json(
        {"expectations": [spec.to_dict() for spec in specs], "derived": DERIVED_COLUMNS_VERSION}
    )[:12]
    return Suite(
        name=str(data.get("name") or path.stem),
        kind=kind,
        version=version,
        expectations=tuple(specs),
        source=str(path),
        overrides=user_overrides,
    )


def normalize_overrides(overrides: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"name": {"mostly": 0.9}}`` or dotted ``{"name.mostly": 0.9}`` -> the nested form."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            nested.setdefault(str(key), {}).update(value)
            continue
        name, dot, setting = str(key).rpartition(".")
        if not dot or not name:
            raise UsageError(f"override {key!r} must be 'expectation.setting' (e.g. no_empty_text.mostly) or a mapping")
        nested.setdefault(name, {})[setting] = value
    return nested


def parse_override_pairs(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """CLI ``name.setting=value`` pairs; values read as YAML scalars (``0.99``, ``warning``, ``false``)."""
    flat = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"override {pair!r} must look like expectation.setting=value")
        flat[key.strip()] = yaml.safe_load(value)
    return normalize_overrides(flat)


def apply_overrides(specs: list[ExpectationSpec], overrides: dict[str, dict[str, Any]], where: str) -> list[ExpectationSpec]:
    """Override thresholds by expectation name or group; ``enabled: false`` drops the check."""
    for target, settings in overrides.items():
        if not any(target in (spec.name, spec.group) for spec in specs):
            known = ", ".join(sorted({s.group for s in specs} | {s.name for s in specs}))
            raise UsageError(f"{where}: no expectation {target!r} to override; expectations: {known}")
        updated = (_override(spec, settings, f"{where}: {target}") if target in (spec.name, spec.group) else spec for spec in specs)
        specs = [spec for spec in updated if spec is not None]
    return specs


def _override(spec: ExpectationSpec, settings: dict[str, Any], where: str) -> ExpectationSpec | None:
    if not isinstance(settings, dict):
        raise UsageError(f"{where}: expected a mapping of settings, got {settings!r}")
    kwargs = dict(spec.kwargs)
    changes: dict[str, Any] = {}
    for setting, value in settings.items():
        if setting == "enabled":
            if not isinstance(value, bool):
                raise UsageError(f"{where}.enabled: expected true or false, got {value!r}")
            if not value:
                return None
        elif setting in ("mostly", "severity"):
            changes[setting] = value
        elif setting in kwargs:
            kwargs[setting] = value
        else:
            valid = ", ".join([*OVERRIDE_FIELDS, *kwargs])
            raise UsageError(f"{where}: unknown setting {setting!r}; settings of this expectation: {valid}")
    updated = replace(spec, kwargs=kwargs, **changes)
    _check_thresholds(updated, where)
    return updated


def _suite_path(suite: str) -> Path:
    if suite.endswith((".yaml", ".yml")) or "/" in suite:
        path = Path(suite)
        if not path.is_file():
            raise UsageError(f"suite file {suite} does not exist")
        return path
    path = SUITES_DIR / f"{suite}.yaml"
    if not path.is_file() or suite not in available_suites():
        raise UsageError(f"unknown suite {suite!r}; built-in suites: {', '.join(available_suites())} (or give a .yaml path)")
    return path


def _fragment_path(name: str, suite_dir: Path) -> Path:
    """A fragment beside the suite file first (user suites), then the built-in one."""
    for folder in (suite_dir, SUITES_DIR):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    raise UsageError(f"suite fragment {name!r} not found in {suite_dir} or {SUITES_DIR}")


def load_fragment(path: Path, kind: Kind, media: tuple[str, ...]) -> list[ExpectationSpec]:
    data = _read_mapping(path, FRAGMENT_KEYS)
    entries = data.get("expectations") or []
    for_each = data.get("for_each")
    if for_each is None:
        return _expand_entries(entries, str(path), {})
    values = {"column": CONVERSATION_COLUMNS[kind], "media": media}.get(for_each)
    if values is None:
        raise UsageError(f"{path}: for_each must be 'column' or 'media', got {for_each!r}")
    return [spec for value in values for spec in _expand_entries(entries, str(path), {for_each: value})]


def _expand_entries(entries: Any, where: str, placeholders: dict[str, str]) -> list[ExpectationSpec]:
    if not isinstance(entries, list):
        raise UsageError(f"{where}: 'expectations' must be a list")
    specs = []
    for position, entry in enumerate(entries):
        entry_where = f"{where}: expectations[{position}]"
        if not isinstance(entry, dict):
            raise UsageError(f"{entry_where}: expected a mapping, got {entry!r}")
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            raise UsageError(f"{entry_where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(ENTRY_KEYS))}")
        entry = _fill(entry, placeholders)
        group = str(_required(entry, "name", entry_where))
        name = "".join([group, *(f"[{value}]" for value in placeholders.values())])
        columns = entry.get("columns")
        domains = [{"column": column} for column in columns] if columns else [{k: entry[k] for k in DOMAIN_KEYS if k in entry}]
        for domain in domains:
            spec = ExpectationSpec(
                name=f"{name}[{domain['column']}]" if columns else name,
                group=group,
                type=str(_required(entry, "type", entry_where)),
                domain=domain,
                kwargs=dict(entry.get("kwargs") or {}),
                mostly=entry.get("mostly", 1.0),
                severity=entry.get("severity", "error"),
                description=str(entry.get("description", "")),
            )
            if not spec.table_level and not spec.domain:
                raise UsageError(f"{entry_where} ({group}): needs 'column', 'columns' or 'column_A'/'column_B'")
            _check_thresholds(spec, entry_where)
            specs.append(spec)
    return specs


def _fill(value: Any, placeholders: dict[str, str]) -> Any:
    """Replace ``{column}``/``{media}`` in strings (plain replace: regexes keep their own braces)."""
    if isinstance(value, str):
        for key, replacement in placeholders.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, list):
        return [_fill(item, placeholders) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, placeholders) for key, item in value.items()}
    return value


def _check_thresholds(spec: ExpectationSpec, where: str) -> None:
    if isinstance(spec.mostly, bool) or not isinstance(spec.mostly, (int, float)) or not 0.0 <= spec.mostly <= 1.0:
        raise UsageError(f"{where} ({spec.name}): mostly must be a number between 0 and 1, got {spec.mostly!r}")
    if spec.severity not in SEVERITIES:
        raise UsageError(f"{where} ({spec.name}): severity must be one of {', '.join(SEVERITIES)}, got {spec.severity!r}")


def _check_unique(specs: list[ExpectationSpec], where: str) -> None:
    seen = set()
    for spec in specs:
        if spec.name in seen:
            raise UsageError(f"{where}: expectation name {spec.name!r} is defined twice")
        seen.add(spec.name)


def _read_yaml(path: Path) -> Any:
    try:
        return copy.deepcopy(_parse_yaml(path.read_text()))  # a copy: callers may change what they get
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"suite file {path}: unreadable ({error})") from error


@functools.lru_cache(maxsize=256)
def _parse_yaml(text: str) -> Any:
    """Parsed once per distinct text: a pipeline resolves suites hundreds of times (every suite file is read
    to list the suites), and parsing them all each time took ~4 s of a warm pipeline rerun."""
    return yaml.safe_load(text)


def _read_mapping(path: Path, allowed: set[str]) -> dict[str, Any]:
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise UsageError(f"suite file {path}: expected a mapping at the top level")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UsageError(f"suite file {path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")
    return data


def _required(data: dict[str, Any], key: str, where: str) -> Any:
    if data.get(key) is None:
        raise UsageError(f"{where}: missing required key {key!r}")
    return data[key]
