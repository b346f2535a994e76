"""One grammar of values: what `airtune validate` accepts for a field is what the field's param schema
(the trigger form, the REST API's `conf`) accepts, and nothing else.

For every field of the table, hypothesis generates values (valid ones, aliases, near misses in case
and spacing, numbers as text, wrong types, numbers out of range, odd strings, None, lists, objects)
and holds the two to one rule: the schema Airflow checks (`form.field_schema`, with the catalog's
enums) accepts a value iff validate reports no error for that field. "Validate accepts" means: the
spec parser (`spec.parse_partial`) refuses nothing of the field in some job where its cross-field
rules hold (they are validate's alone), and, for a catalog field, each name is in the catalog (the
look-up `resolve` does). The schema is checked with jsonschema as Airflow does and through Airflow's
own `Param.resolve`; the fixed cases at the end also through a serialized DAG, as the API server
validates a triggered run.
"""

from __future__ import annotations

import math
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airtune import form, jobfile
from airtune import spec as S
from airtune.catalog import Catalog
from airtune.resolve import validate_mapping
from airtune.spec import FIELD_BY_NAME, FIELDS, SpecError, parse_partial

CATALOG = Catalog.load()
BASE = {"name": "demo-job", "base_model": "tiny-llama-dev", "dataset": ["identity"]}

# Jobs in which a field's cross-field rules hold for its good values (the field itself overrides).
CONTEXTS: dict[str, list[dict]] = {
    "reward_model": [{}, {"stage": "grpo"}],
    "freeze_trainable_layers": [{"finetuning_method": "freeze"}],
    "pref_loss": [{"stage": "dpo", "dataset": ["dpo_en_demo"]}],
    "pref_beta": [{"stage": "dpo", "dataset": ["dpo_en_demo"]}],
    "min_lr_rate": [{"lr_scheduler_type": "cosine_with_min_lr"}],
    "decay_ratio": [{"lr_scheduler_type": "warmup_stable_decay"}],
    "promote_timeout_hours": [{"promote": "approve", "val_size": 0.1}],
    "quantization_method": [{}, {"quantization_bit": "8"}],
}

CATALOG_NAMES = {
    "models": list(CATALOG.models), "locations": list(CATALOG.locations),
    "templates": ["auto", *CATALOG.templates], "datasets": list(CATALOG.datasets),
    "benchmarks": list(CATALOG.benchmarks),
    None: ["smtp_default", "team.mail", "hook-1"],  # notify: Airflow connection ids, no catalog
    "gpu_types": sorted({g.name for loc in CATALOG.locations.values() for g in loc.gpu_types.values()}),
}


def validate_accepts(name: str, value) -> bool:
    """No error of validate's for this field (single-field rules: in some job where its cross-field rules hold)."""
    f = FIELD_BY_NAME[name]
    for context in CONTEXTS.get(name, [{}]):
        spec, errors, _ = parse_partial({**BASE, **context, name: value})
        if any(e.field == name or e.field.startswith(name + ".") for e in errors):
            continue
        if f.catalog:
            given = getattr(spec, name)
            names = given if isinstance(given, list) else [given]
            if any(n is not None and n not in CATALOG_NAMES[f.catalog] for n in names):
                continue
        return True
    return False


SCHEMAS = {f.name: form.field_schema(f, CATALOG) for f in FIELDS}
VALIDATORS = {name: jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
              for name, schema in SCHEMAS.items()}


def schema_accepts(name: str, value) -> bool:
    return VALIDATORS[name].is_valid(value)


def airflow_accepts(name: str, value) -> bool:
    from airflow.sdk.definitions.param import Param
    from airflow.sdk.exceptions import ParamValidationError

    f = FIELD_BY_NAME[name]
    param = Param(**SCHEMAS[name]) if f.required else Param(f.default, **SCHEMAS[name])
    try:
        param.resolve(value)
    except ParamValidationError:
        return False
    return True


# -- values ---------------------------------------------------------------------------------------

ODD = ["", " ", "\n", "null", "None", "none", "NONE", "true", "True", "yes", "no", "on", "1", "0", "-1", "8", "8.0",
       "1e-4", "1E-4", " 1e-4 ", "0x10", "1_000", "inf", "-inf", "nan", "Infinity", "all", "ALL", "All", ",", "a,",
       ",a", "a,,b", "a b", "é", "\t", "x\n", "\x00", "ppo", "PPO", "int4", "INT8", "int16", "4bit"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10), st.sampled_from(ODD))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                                                                max_size=3),
                           max_leaves=5)


def spelled(texts: list[str]) -> st.SearchStrategy:
    """The values themselves and their near misses: another case, spaces or a newline around them."""
    text = st.sampled_from(texts)
    return st.one_of(text, text.map(str.upper), text.map(str.title), text.map(lambda t: f" {t}"),
                     text.map(lambda t: f"{t} "), text.map(lambda t: f"{t}\n"), text.map(lambda t: f"\t{t}\t"),
                     text.map(lambda t: t.replace("_", "-")), text.map(lambda t: t[:-1]))


def numbers(f) -> st.SearchStrategy:
    bounds = [b for b in (f.gt, f.ge, f.lt, f.le) if b is not None] or [0]
    near = [x for b in bounds for x in (b, b + 1, b - 1, b + 1e-9, b - 1e-9, b * 2, -b, b / 2, b + 0.5)]
    if f.name == "seed":
        near += [S.SEED_MAX, S.SEED_MAX + 1]
    base = st.one_of(st.sampled_from(near), st.integers(-10, 10**6), st.floats(-1e6, 1e6),
                     st.sampled_from([0.0, 1.0, 3.0, 512.0, 1e300, 10**400, -10**400, 2**1024, 2**1024 - 2**970,
                                      1.7976931348623157e308, math.inf, -math.inf, math.nan]))
    return st.one_of(base, base.map(lambda x: int(x) if isinstance(x, float) and x.is_integer() else x),
                     base.map(repr), base.map(lambda x: f" {x}"))


def values_for(f) -> st.SearchStrategy:
    kind = f.kind
    if kind in ("int", "float"):
        special = numbers(f)
    elif kind == "bool":
        special = st.sampled_from([True, False, 0, 1, 0.0, 1.0, 2, "true", "false", "yes", "no", "on", "off", "1", "0",
                                   "True", " true", [True]])
    elif kind == "choice":
        aliases = list(S.CHOICE_ALIASES.get(f.name, {}))
        special = st.one_of(spelled(list(f.choices) + [a for a in aliases if isinstance(a, str)] + ["ppo"]),
                            st.sampled_from([*aliases, 4.0, 8.0, 4.5, 3, 16, 0, True, [f.choices[0]]]))
    elif kind == "str":
        texts = CATALOG_NAMES[f.catalog] if f.catalog else (
            list(S.PROMOTE_METRICS) + ["benchmark:mmlu", "benchmark:", "benchmark:a b"]
            if f.name == "promote_metric" else ["demo-job", "rm-job", "a", "a-", "-a", "a" * 63, "a" * 64, "A", "a_b"])
        special = st.one_of(spelled(texts), st.from_regex(r"[a-z0-9][-a-z0-9]{0,70}", fullmatch=True),
                            st.sampled_from(["", 12345, 1.5, True, ["demo-job"]]))
    elif kind == "names":
        names = CATALOG_NAMES[f.catalog] + ["nope", "a b", " identity", "identity ", "", "x,y"]
        lists = st.lists(st.sampled_from(names), max_size=4)
        special = st.one_of(lists, lists.map(tuple).map(list),
                            st.lists(st.sampled_from(CATALOG_NAMES[f.catalog] or ["x"]), min_size=1, max_size=3).flatmap(
                                lambda ns: st.sampled_from([",", ", ", " , ", " ,", ",\n"]).map(lambda sep: sep.join(ns))),
                            st.lists(scalars, max_size=3))
    elif kind == "target":
        modules = ["q_proj", "v_proj", "model.layers.0.mlp.down_proj", "all", "ALL", "All", "allx", "q-proj", "q proj",
                   " q_proj", "q_proj\n", ""]
        lists = st.lists(st.sampled_from(modules), max_size=4)
        special = st.one_of(spelled(["all"]), lists,
                            lists.flatmap(lambda ms: st.sampled_from([",", ", ", " ,", ";"]).map(lambda sep: sep.join(ms))),
                            st.lists(scalars, max_size=3))
    elif kind == "object":
        keys = st.one_of(st.sampled_from(sorted(S.EXTRA_ARGS_RESERVED)[:8] + list(S.EXTRA_ARGS_FROM_FIELDS)[:6]
                                         + ["weight_decay", "adam_beta2", "hub_token", "hubby", "torch_compile"]),
                         st.text(max_size=8))
        special = st.dictionaries(keys, json_values, max_size=3)
    else:
        raise AssertionError(kind)
    return st.one_of(special, special, json_values)


# -- the property ---------------------------------------------------------------------------------


def test_every_field_is_generated():
    assert {f.kind for f in FIELDS} == {"str", "choice", "int", "float", "bool", "names", "target", "object"}


@pytest.mark.parametrize("name", [f.name for f in FIELDS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_validate_and_the_param_schema_agree(name, data):
    value = data.draw(values_for(FIELD_BY_NAME[name]), label=name)
    expected = validate_accepts(name, value)
    assert schema_accepts(name, value) == expected, (name, value, "validate accepts" if expected else "validate refuses")
    assert airflow_accepts(name, value) == expected, (name, value)


# -- fixed cases, through the API server's own validation ----------------------------------------

# (field, value, accepted): the aliases kept, the spellings dropped.
CASES = [
    ("quantization_bit", 4, True), ("quantization_bit", 8, True), ("quantization_bit", "4", True),
    ("quantization_bit", "int4", True), ("quantization_bit", "int8", True), ("quantization_bit", 8.0, True),
    ("quantization_bit", "INT8", False), ("quantization_bit", " 4", False), ("quantization_bit", 16, False),
    ("quantization_bit", True, False),
    ("learning_rate", 1e-4, True), ("learning_rate", 1, True), ("learning_rate", "1e-4", False),
    ("learning_rate", math.nan, False), ("max_grad_norm", math.inf, False), ("max_grad_norm", 10**400, False),
    ("cutoff_len", 512.0, True), ("cutoff_len", "512", False), ("cutoff_len", 512.5, False),
    ("use_dora", True, True), ("use_dora", "true", False), ("use_dora", 1, False),
    ("stage", "sft", True), ("stage", "SFT", False), ("stage", " sft", False), ("stage", "ppo", False),
    ("finetuning_method", "LoRA", False),
    ("name", "demo-job", True), ("name", "demo-job\n", False), ("name", " demo-job", False),
    ("template", "chatml", True), ("template", "chatml ", False), ("reward_model", "", True),
    ("dataset", "identity, alpaca_en_demo", True), ("dataset", "identity,identity", False),
    ("dataset", ["identity", "identity"], False), ("dataset", "identity, nope", False), ("dataset", [" identity"], False),
    ("eval_dataset", [], True), ("eval_dataset", "", False),
    ("lora_target", "all", True), ("lora_target", " all ", True), ("lora_target", "ALL", False),
    ("lora_target", ["q_proj", "v_proj"], True), ("lora_target", ["all"], False), ("lora_target", "all, q_proj", False),
    ("lora_target", [], True), ("max_samples", "", False), ("max_samples", None, True),
    ("extra_args", {"weight_decay": 0.01}, True), ("extra_args", {"save_only_model": True}, False),
]


@pytest.fixture(scope="module")
def server_params(tmp_path_factory):
    """The params as the API server holds them: a DAG serialized and deserialized (tests/test_form.py)."""
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("grammar_test", schedule=None, params=form.dag_params("en")) as dag:
        pass
    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).params


@pytest.mark.parametrize("name, value, accepted", CASES, ids=[f"{n}={v!r}" for n, v, _ in CASES])
def test_the_grammar_as_built(server_params, name, value, accepted):
    from airflow.sdk.exceptions import ParamValidationError

    assert validate_accepts(name, value) is accepted
    assert schema_accepts(name, value) is accepted
    assert airflow_accepts(name, value) is accepted
    try:
        server_params.deep_merge({**BASE, name: value}).validate()
    except (ParamValidationError, ValueError):
        on_server = False
    else:
        on_server = True
    assert on_server is accepted


def test_the_server_keeps_what_the_alias_means(server_params):
    values = server_params.deep_merge({**BASE, "quantization_bit": 4}).validate()
    assert values["quantization_bit"] == 4
    resolved = validate_mapping(form.conf_to_mapping(values), hardware={"cuda_devices": 0})
    assert resolved["spec"]["quantization_bit"] == "4"


# -- the form keeps its drop-downs ----------------------------------------------------------------


def _ui_widget(schema: dict) -> str:
    """Airflow 3.3.2's trigger form (airflow/ui, FieldSelector): the widget a param's schema gets."""
    types = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    if len([t for t in types if t and t != "null"]) > 1 and "enum" not in schema and "examples" not in schema:
        return "multi-type text"
    first = next((t for t in types if t and t != "null"), "string")
    if first == "boolean":
        return "switch"
    if first in ("null", "string", "number", "integer") and isinstance(schema.get("enum"), list):
        return "select"
    if first == "array" and (isinstance(schema.get("examples"), list) or isinstance(schema.get("enum"), list)):
        return "multi-select"
    return first


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_choice_fields_keep_a_select_of_the_form_values_only(lang):
    params = form.dag_params(lang)
    for f in FIELDS:
        schema = params[f.name].schema
        if f.kind == "choice":
            assert _ui_widget(schema) == "select", f.name
            # no alias in the list, and no empty entry beside a default that is listed (tests/test_form.py)
            listed_default = f.required or f.default in f.choices
            assert schema["enum"] == [*f.choices, *([] if listed_default else [None])], f.name
            assert set(schema["values_display"]) >= set(f.choice_labels), f.name
        elif f.catalog and f.kind == "str":
            assert _ui_widget(schema) == "select", f.name
        elif f.kind == "names" and f.catalog:
            assert _ui_widget(schema) == "multi-select", f.name
        elif f.kind == "bool":
            assert _ui_widget(schema) == "switch", f.name


def test_ppo_points_to_grpo_in_validate_and_in_the_form():
    with pytest.raises(SpecError) as info:
        validate_mapping({**BASE, "stage": "ppo"}, hardware={"cuda_devices": 0})
    assert "use grpo" in str(info.value)
    for lang in ("en", "zh"):
        assert re.search(r"ppo.*grpo", form.dag_params(lang)["stage"].description, re.S)


# -- YAML files: 1e-4 is a number -----------------------------------------------------------------


def test_a_yaml_file_writes_numbers_as_llama_factory_does(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: yaml-job\nbase_model: tiny-llama-dev\ndataset: identity,alpaca_en_demo\n"
                    "learning_rate: 1e-4\nquantization_bit: 4\nextra_args: {weight_decay: 1e-2}\n")
    mapping = jobfile.load(path)
    assert mapping["learning_rate"] == 1e-4 and mapping["extra_args"]["weight_decay"] == 0.01
    for name in ("learning_rate", "quantization_bit", "dataset"):
        assert schema_accepts(name, mapping[name]) and validate_accepts(name, mapping[name]), name
    resolved = validate_mapping(mapping, hardware={"cuda_devices": 0})
    assert resolved["spec"]["learning_rate"] == 1e-4 and resolved["spec"]["quantization_bit"] == "4"
    path.write_text("name: yaml-job\nbase_model: tiny-llama-dev\ndataset: identity\nlearning_rate: '1e-4'\n")
    with pytest.raises(SpecError, match="'1e-4' is text, not a number: write it without quotes"):
        validate_mapping(jobfile.load(path), hardware={"cuda_devices": 0})
