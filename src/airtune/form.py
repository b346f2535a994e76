"""The job form: JobSpec fields as Airflow `Param`s, and a DAG run's conf back as a job mapping.

`dag_params()` builds one Param per field of the job form (docs/form.md), in its section order, from the field table
in `airtune.spec`: title (the label), description (the help text with the seed's recommended range),
section, default, and the JSON schema of the field's single-field rules (`param_schema`, here), so
Airflow itself refuses a bad single value when a run is triggered (the form shows the error; the
REST API answers HTTP 400 naming the param). The enums of models, locations, templates, datasets and
GPU types come from the catalog. Rules between fields are the validate task's (`airtune.resolve`).

Airflow 3.3.2's trigger form has no per-section "collapsed" setting: it opens only its own default
section ("Run Parameters") and shows every named section as a closed accordion item, marking in red
a section that still lacks a required value. So all four of the form's sections start closed there, and
section 4 is last.

Labels and help are English or Chinese: the `lang` argument, else `AIRTUNE_FORM_LANG` (en, zh).
Cheap to import: spec and catalog only; Airflow's `Param` is imported inside `dag_params`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from airtune.spec import (ALL_ANY_CASE_PATTERN, CHOICE_ALIASES, EXTRA_ARGS_FROM_FIELDS, EXTRA_ARGS_RESERVED,
                          EXTRA_ARGS_RESERVED_PREFIXES, FIELD_BY_NAME, FIELDS, LORA_TARGET_TEXT_PATTERN,
                          MODULE_PATTERN, NAME_PATTERN, SECTIONS, FieldInfo, names_text_pattern)
from airtune.spec.fields import _FLOAT_MAX, _names_text_pattern, _pattern

LANGS = ("en", "zh")



# -- the JSON schema of one field (what Airflow checks when a run is triggered) -------------------

_JSON_TYPES = {"str": "string", "choice": "string", "int": "integer", "float": "number", "bool": "boolean",
               "object": "object"}
# NaN passes every bound of a JSON schema (each comparison with it is false), so it is the one number
# that passes both of these: `not` refuses NaN, and only NaN.
_NOT_NAN = {"not": {"type": "number", "minimum": 1, "maximum": 0}}
_DRAFT7 = "http://json-schema.org/draft-07/schema#"


def param_schema(field_name: str) -> dict:
    """The JSON schema of one field's single-field rules (what Airflow checks when a run is triggered).

    Every field that is not required may be left empty (null): empty means the default. Catalog
    enums (models, locations, ...) are not here: `airtune.form` adds them from the catalog.

    A choice with aliases (quantization_bit) keeps its top-level `type` and `enum` to the form's values:
    Airflow 3.3's trigger form draws a select from exactly those (and a field of several types without
    an `enum` as a text box). What is accepted is `definitions.accepted`, the values and the aliases:
    under the JSON Schema draft its `$schema` names (draft-07, which Airflow's jsonschema validation
    follows), a `$ref` stands for the whole schema and its sibling keywords are not checked.
    """
    f = FIELD_BY_NAME[field_name]
    pattern = _pattern(f)
    schema: dict[str, Any]
    if f.kind == "names":
        # The form shows a multi-select (an array); YAML files and REST calls may also give "a, b".
        schema = {"type": ["array", "string"], "items": {"type": "string", "pattern": f.pattern or NAME_PATTERN},
                  "minItems": 1 if f.required else 0,  # an optional multi-select left empty sends []
                  "uniqueItems": True, "pattern": _names_text_pattern(f)}
    elif f.kind == "target":
        schema = {"type": ["string", "array"], "pattern": LORA_TARGET_TEXT_PATTERN,
                  "items": {"type": "string", "pattern": MODULE_PATTERN, "not": {"pattern": ALL_ANY_CASE_PATTERN}}}
    else:
        schema = {"type": [_JSON_TYPES[f.kind]]}
        if f.kind == "choice":
            schema["enum"] = list(f.choices)
        for key, bound in (("exclusiveMinimum", f.gt), ("minimum", f.ge), ("exclusiveMaximum", f.lt),
                           ("maximum", f.le)):
            if bound is not None:
                schema[key] = bound
        if f.kind == "float":
            # inf and NaN are no numbers a field takes (YAML has .inf and .nan, Python's JSON Infinity and NaN)
            if f.gt is None and f.ge is None:
                schema["minimum"] = -_FLOAT_MAX
            if f.lt is None and f.le is None:
                schema["maximum"] = _FLOAT_MAX
            schema.update(_NOT_NAN)
        if pattern:
            schema["pattern"] = pattern
        if f.max_length:
            schema["maxLength"] = f.max_length
        if f.kind == "str" and f.required:
            schema["minLength"] = 1
        if f.kind == "object":
            # extra_args: the keys airtune sets itself, or a form field sets, are refused at trigger time too.
            schema["propertyNames"] = {"type": "string", "not": {"anyOf": [
                {"enum": sorted(EXTRA_ARGS_RESERVED | set(EXTRA_ARGS_FROM_FIELDS))},
                {"pattern": "^(" + "|".join(EXTRA_ARGS_RESERVED_PREFIXES) + ")"}]}}
    if not f.required:
        schema["type"] = [*schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    elif len(schema["type"]) == 1:
        schema["type"] = schema["type"][0]
    aliases = CHOICE_ALIASES.get(f.name)
    if aliases:
        accepted = [*f.choices, *aliases] + ([] if f.required else [None])
        schema = {"$schema": _DRAFT7, "$ref": "#/definitions/accepted",
                  "definitions": {"accepted": {"enum": accepted}}, **schema}
    return schema


def form_lang(lang: str | None = None) -> str:
    """The form's language: the argument, else AIRTUNE_FORM_LANG, else English."""
    chosen = (lang or os.environ.get("AIRTUNE_FORM_LANG") or "en").strip().lower()
    chosen = {"zh-cn": "zh", "zh_cn": "zh", "cn": "zh", "chinese": "zh", "english": "en"}.get(chosen, chosen)
    if chosen not in LANGS:
        raise ValueError(f"AIRTUNE_FORM_LANG / lang: {chosen!r} is not accepted: one of {', '.join(LANGS)}")
    return chosen


def _default_label(f: FieldInfo, lang: str) -> str:
    """How an empty select reads: '(default: cosine)'."""
    described = f.default_zh if lang == "zh" else f.default_en
    if described:
        return f"（{described}）" if lang == "zh" else f"({described})"
    if f.default is None:
        return "（留空）" if lang == "zh" else "(empty)"
    return f"（默认：{f.default}）" if lang == "zh" else f"(default: {f.default})"


def _catalog_choices(catalog, f: FieldInfo, lang: str) -> tuple[list, dict]:
    """(enum values, readable names) of a catalog field."""
    zh = lang == "zh"
    if f.catalog == "models":
        return list(catalog.models), {
            n: f"{n} ({m.family}, {m.kind}, {m.params_b:g}B, template {m.template})" for n, m in catalog.models.items()}
    if f.catalog == "locations":
        names = {}
        for n, loc in catalog.locations.items():
            if loc.is_local:
                names[n] = f"{n}（本机）" if zh else f"{n} (this machine)"
            else:
                names[n] = f"{n} (Kubernetes: {loc.connection_id} / {loc.namespace})"
        return list(catalog.locations), names
    if f.catalog == "templates":
        auto = "auto（模型自带的模版）" if zh else "auto (the model's own template)"
        return ["auto", *catalog.templates], {"auto": auto}
    if f.catalog == "datasets":
        return list(catalog.datasets), {n: f"{n} ({d.kind}, {d.format})" for n, d in catalog.datasets.items()}
    if f.catalog == "benchmarks":
        return list(catalog.benchmarks), {n: f"{n} ({b.lang}, {len(b.files)} file{'s' if len(b.files) != 1 else ''})"
                                          for n, b in catalog.benchmarks.items()}
    if f.catalog == "gpu_types":
        values, names = [], {}
        for loc in catalog.locations.values():
            for g in loc.gpu_types.values():
                if g.name in names:
                    continue
                values.append(g.name)
                if loc.is_local:
                    names[g.name] = f"{g.name} ({loc.name})"
                else:
                    bf16 = ("bf16" if g.bf16 else ("无bf16" if zh else "no bf16"))
                    names[g.name] = f"{g.name} ({loc.name}: {g.gpus_per_node} × {g.memory_gib:g} GiB, {bf16})"
        return values, names
    raise AssertionError(f.catalog)


def _regex_literal(text: str) -> str:
    """A catalog name inside a JSON Schema pattern (the characters regexes give a meaning escaped)."""
    return "".join("\\" + ch if ch in ".^$*+?()[]{}|\\" else ch for ch in text)


def _default_listed_once(schema: dict) -> dict:
    """A select whose default is one of its values, without a second, empty entry for that default.

    Airflow 3.3's trigger form lists every item of the top-level `enum`, null included (shown by its
    `values_display` name, "(default: cosine)"), so a field whose default is a value of the list showed
    that value twice. The form pre-selects the default, so the empty entry is left out of the list;
    an empty value (null: the default, docs/form.md) is still accepted, from REST or a select the user
    cleared: what is checked is `definitions.accepted` (the whole schema with null), which the `$ref`
    stands for under draft-07, as `param_schema` does for quantization_bit's aliases.
    """
    shown = [v for v in schema["enum"] if v is not None]
    if "$ref" in schema:  # quantization_bit: its definitions already hold what is accepted
        return {**schema, "enum": shown}
    accepted = {k: v for k, v in schema.items() if k != "$schema"}
    return {"$schema": _DRAFT7, "$ref": "#/definitions/accepted", "definitions": {"accepted": accepted},
            **schema, "enum": shown}


def field_schema(f: FieldInfo, catalog, lang: str = "en") -> dict:
    """One field's Param keyword arguments except the default: JSON schema + title, description, section."""
    schema = param_schema(f.name)
    labels: dict[str, str] = {}
    if f.catalog:
        values, labels = _catalog_choices(catalog, f, lang)
        if f.kind == "names":
            # A multi-select (Airflow shows one for an array with `examples`); each item from the catalog, and
            # the same names in the "a, b" text a YAML file or a REST call may give.
            schema["items"] = {**schema["items"], "enum": values}
            schema["examples"] = values
            schema["pattern"] = names_text_pattern("|".join(_regex_literal(v) for v in values) or "(?!)")
        else:
            schema["enum"] = values + ([None] if not f.required else [])
    elif f.choices:
        labels = {c: (f.choice_labels[c][1] if lang == "zh" else f.choice_labels[c][0])
                  for c in f.choices if c in f.choice_labels}
    if f.default is not None and f.default in schema.get("enum", []) and None in schema["enum"]:
        schema = _default_listed_once(schema)
    if "enum" in schema or "examples" in schema:
        if None in schema.get("enum", []):
            # the null option is the default only where the default is no value of the list (gpu_type,
            # promote, pref_loss: "empty: ..."); Airflow's select names it "null"
            labels["null"] = _default_label(f, lang)
        if labels:
            schema["values_display"] = labels
    section = SECTIONS[f.section - 1]
    return {
        **schema,
        "title": f.label(lang),
        "description": f.help(lang),
        "section": section.title(lang),
    }


def dag_params(lang: str | None = None, catalog=None) -> dict:
    """One Airflow Param per field, in the form's order (name -> airflow.sdk.Param)."""
    from airflow.sdk import Param

    from airtune.catalog import Catalog

    lang = form_lang(lang)
    catalog = catalog or Catalog.load()
    params = {}
    for f in FIELDS:
        kwargs = field_schema(f, catalog, lang)
        if f.required:
            # No default: the form asks for a value, and a REST call without one is refused (HTTP 400).
            params[f.name] = Param(**kwargs)
        else:
            params[f.name] = Param(_form_default(f), **kwargs)
    return params


def _form_default(f: FieldInfo) -> Any:
    """What the form shows before the user types: the field's default (empty for 'auto-by-context' ones)."""
    if isinstance(f.default, dict):
        return dict(f.default)
    return f.default


def conf_to_mapping(params_or_conf: Mapping) -> dict:
    """A DAG run's params / conf as the job mapping `spec.parse` takes: empty values dropped, so parse
    applies the defaults (docs/form.md: a value left empty means the default). Unknown keys are kept, so
    parse refuses them."""
    out = {}
    for key, value in dict(params_or_conf).items():
        if value is None:
            continue
        if isinstance(value, str) and not value.strip():
            continue
        if isinstance(value, (list, tuple, dict)) and len(value) == 0:
            continue
        out[key] = value
    return out
