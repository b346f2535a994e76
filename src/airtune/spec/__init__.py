"""The job spec: the form's field table (`airtune.spec.fields`) and its parser (`airtune.spec.parse`).

`FIELDS` is every field of the job form, in the form's order, with its section, en/zh labels and
help, accepted values, limits and the stage/method it is used with; docs/form.md is written from it,
the trigger form's params (`airtune.form`, with their JSON schema `param_schema`) and the create
wizard are built from it, and `airtune.resolved.JobSettings` is generated from it. `parse(mapping)`
checks a job's values against it (every single-field rule and every cross-field rule that needs no
catalog, all errors at once in one `SpecError`); catalog look-ups, `auto` values and hardware fit
are `airtune.resolve`'s.

Cheap to import: standard library only (the DAG file imports this at parse time).
"""

from __future__ import annotations

from airtune.spec.fields import (  # noqa: F401
    show_value, FieldError, SpecError, Section, SECTIONS, DNS_LABEL_PATTERN, DNS_LABEL_MAX,
    OPTIONAL_DNS_LABEL_PATTERN, NAME_PATTERN, MODULE_PATTERN, ALL_ANY_CASE_PATTERN, LORA_TARGET_TEXT_PATTERN,
    PROMOTE_METRIC_PATTERN, PROMOTE_METRICS, CONN_ID_TOKEN, CONN_ID_PATTERN, names_text_pattern,
    NAMES_TEXT_PATTERN, SEED_MAX, EXTRA_ARGS_RESERVED, EXTRA_ARGS_RESERVED_PREFIXES, reserved_reason,
    EXTRA_ARGS_FROM_FIELDS, LORA, SCHEDULERS, JobSpec, APPLIED_DEFAULTS, FieldInfo, FIELDS, FIELD_BY_NAME,
    field_info, CHOICE_ALIASES, _END,
)
from airtune.spec.parse import (  # noqa: F401
    METRIC_STAGES, LOWER_IS_BETTER, parse, parse_partial,
)
