"""`parse(mapping)`: the flat mapping of a job YAML file, the trigger form or a REST `conf` as a `JobSpec`.

Empty values (None, "") mean "the default", unknown keys are an error, and every single-field rule
(the field table's, `airtune.spec.fields`) and every cross-field rule that needs no catalog is
checked. All errors are reported at once, in one `SpecError`. Catalog look-ups, `auto` values and
hardware fit are `airtune.resolve`'s.

Cheap to import: standard library only.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any, Mapping

from airtune.spec.fields import (_FLOAT_MAX, ALL_ANY_CASE_PATTERN, CHOICE_ALIASES, EXTRA_ARGS_FROM_FIELDS,
                                  EXTRA_ARGS_RESERVED, EXTRA_ARGS_RESERVED_PREFIXES, FIELD_BY_NAME, FIELDS,
                                  LORA_TARGET_TEXT_PATTERN, MODULE_PATTERN, NAME_PATTERN, FieldError, FieldInfo,
                                  JobSpec, SpecError, _names_text_pattern, _num, _pattern, reserved_reason,
                                  show_value)


class _Bad(Exception):
    """A value refused by its own field's rules; the message says what is accepted."""


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or \
        (isinstance(value, (list, tuple, dict)) and len(value) == 0)


def _number_text(value: Any) -> bool:
    """A text that reads as a finite number ('8', '1e-4'): quoted in YAML, or a string in JSON."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        return math.isfinite(float(value))
    except (ValueError, OverflowError):
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_int(f: FieldInfo, value: Any) -> int:
    """An integer: a JSON/YAML integer, or a number with nothing after the point (512.0), as JSON Schema's."""
    if isinstance(value, bool):
        raise _Bad(f"must be {f.accepted()}, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if _number_text(value):
        raise _Bad(f"must be {f.accepted()}; {value!r} is text, not a number: write it without quotes")
    raise _Bad


def _to_float(f: FieldInfo, value: Any) -> int | float:
    """A finite number (an integer too), as given: the limits compare it exactly, as JSON Schema does."""
    if isinstance(value, bool):
        raise _Bad(f"must be {f.accepted()}, not true/false")
    if _is_number(value) and not (isinstance(value, float) and not math.isfinite(value)):
        return value
    if _number_text(value):
        raise _Bad(f"must be {f.accepted()}; {value!r} is text, not a number: write it without quotes "
                   f"(YAML and JSON read {value.strip()} as a number)")
    raise _Bad


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _to_bool(f: FieldInfo, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        word = "true" if value.strip().lower() in _TRUE else "false"
        raise _Bad(f"must be true or false; {value!r} is text: write {word} without quotes")
    if _is_number(value) and value in (0, 1):
        raise _Bad(f"must be true or false, not the number {show_value(value)}")
    raise _Bad


def _check_limits(f: FieldInfo, number: float) -> None:
    if (f.gt is not None and not number > f.gt) or (f.ge is not None and not number >= f.ge) or \
            (f.lt is not None and not number < f.lt) or (f.le is not None and not number <= f.le):
        raise _Bad(f"must be {f.limits_text()}")


def _to_choice(f: FieldInfo, value: Any) -> str:
    if isinstance(value, str) and value in f.choices:
        return value
    aliases = CHOICE_ALIASES.get(f.name, {})
    if (isinstance(value, str) or _is_number(value)) and value in aliases:
        return aliases[value]
    if not isinstance(value, str):
        raise _Bad
    text = value.strip().lower()
    if f.name == "stage" and text == "ppo":
        raise _Bad("ppo is not offered: TRL, which airtune trains with, no longer has a PPO trainer; "
                   "use grpo (online RL against a reward model, with reward_model naming a finished rm job)")
    if text in f.choices or text in aliases:
        raise _Bad(f"must be {f.accepted()}; write {text!r} (lower case, no spaces around it)")
    raise _Bad


def _to_names(f: FieldInfo, value: Any) -> list | None:
    what = {"benchmarks": "benchmark", "datasets": "dataset"}.get(f.catalog or "", "connection")
    item_pattern = f.pattern or NAME_PATTERN
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        if not value:
            return None  # an optional multi-select left empty: the default
        names = list(value)
        bad = [n for n in names if not isinstance(n, str) or not re.search(item_pattern, n)]
        if bad:
            spaced = [n for n in bad if isinstance(n, str) and re.search(item_pattern, n.strip())]
            spelled = "as the catalog spells it" if f.catalog else "as Airflow's connections list spells it"
            raise _Bad(f"must be {f.accepted()}; each {what} name {spelled}"
                       + (f", without spaces around it ({spaced[0].strip()!r})" if spaced else ""))
    else:
        raise _Bad
    duplicates = sorted({n for n in names if isinstance(n, str) and n and names.count(n) > 1})
    if duplicates:
        raise _Bad(f"each {what} at most once ({', '.join(duplicates)} given twice)")
    if isinstance(value, str) and not re.search(_names_text_pattern(f), value):
        raise _Bad
    return names


_MODULES_TEXT = "all, or module names such as q_proj, v_proj (letters, digits, '_' and '.')"


def _to_target(f: FieldInfo, value: Any) -> str | list | None:
    if isinstance(value, str):
        if re.search(LORA_TARGET_TEXT_PATTERN, value):
            return "all" if value.strip() == "all" else [part.strip() for part in value.split(",")]
        names = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        if not value:
            return None  # the default
        names = list(value)
        if any(isinstance(n, str) and re.search(ALL_ANY_CASE_PATTERN, n) for n in names):
            raise _Bad("either all (alone, as text: lora_target: all), or a list of module names, not both")
        bad = [n for n in names if not isinstance(n, str) or not re.search(MODULE_PATTERN, n)]
        if not bad:
            return names
        raise _Bad(f"{_MODULES_TEXT}; not a module name: {', '.join(map(repr, bad))}")
    else:
        raise _Bad(_MODULES_TEXT)
    if "all" in names and len(names) > 1:
        raise _Bad("either all, or a list of module names, not both")
    if any(n.lower() == "all" for n in names):
        raise _Bad(f"{_MODULES_TEXT}; write all in lower case")
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.]+", n)]
    raise _Bad(_MODULES_TEXT + (f"; not a module name: {', '.join(map(repr, bad))}" if bad else ""))


def _to_text(f: FieldInfo, value: Any) -> str | None:
    if isinstance(value, bool) or _is_number(value):
        read = "true/false" if isinstance(value, bool) else "a number"
        raise _Bad(f"it was read as {read}, and {f.name} is text: quote it ({f.name}: \"{show_value(value)}\" in "
                   f"YAML); accepted: {f.accepted()}")
    if not isinstance(value, str):
        raise _Bad
    if f.max_length and len(value) > f.max_length:
        raise _Bad(f"at most {f.max_length} characters (this one has {len(value)}); accepted: {f.accepted()}")
    pattern = _pattern(f)
    if pattern and not re.search(pattern, value):
        if value.strip() != value and re.search(pattern, value.strip()):
            raise _Bad(f"must be {f.accepted()}, without spaces around it: {value.strip()!r}")
        raise _Bad
    return value or None  # "" where the pattern takes it (reward_model, parent_job): empty, the default


def _to_object(f: FieldInfo, value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise _Bad
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _Bad("an object whose keys are trainer argument names")
        try:
            json.dumps(item)
        except (TypeError, ValueError):
            raise _Bad(f"JSON values only ({key!r} is not)") from None
        out[key] = item
    return out


def _convert(f: FieldInfo, value: Any) -> Any:
    """One field's value (not None), converted and checked on its own, by the grammar `param_schema`
    writes as JSON Schema. None: the value means "empty" (the default). Raises _Bad (message: what is
    accepted)."""
    if isinstance(value, str) and not value.strip():
        pattern = _pattern(f)
        if f.kind == "str" and (pattern is None or re.search(pattern, value)):
            return value or None
        raise _Bad(f"must be {f.accepted()}; to leave it empty, leave the key out or give no value (null), "
                   f"not {'an empty text' if not value else 'spaces'}")
    if f.kind == "int":
        number = _to_int(f, value)
        _check_limits(f, number)
        return number
    if f.kind == "float":
        number = _to_float(f, value)
        _check_limits(f, number)
        if abs(number) > _FLOAT_MAX:
            raise _Bad(f"must be {f.accepted()} (this number is larger than any float)")
        return float(number)
    if f.kind == "bool":
        return _to_bool(f, value)
    if f.kind == "choice":
        return _to_choice(f, value)
    if f.kind == "str":
        return _to_text(f, value)
    if f.kind == "names":
        return _to_names(f, value)
    if f.kind == "target":
        return _to_target(f, value)
    if f.kind == "object":
        return _to_object(f, value)
    raise AssertionError(f.kind)


def _unknown_key_error(key: str, value: Any) -> FieldError:
    close = difflib.get_close_matches(str(key), list(FIELD_BY_NAME), n=1, cutoff=0.75)
    if not close and len(str(key)) >= 4:  # 'epochs' -> num_train_epochs
        close = [name for name in FIELD_BY_NAME if str(key).lower() in name][:1]
    hint = f"did you mean {close[0]!r}? " if close else ""
    return FieldError(str(key), value, f"unknown key; {hint}the accepted keys (docs/form.md): " + ", ".join(FIELD_BY_NAME))


def _extra_args_errors(extra: dict) -> list[FieldError]:
    errors = []
    for key, value in extra.items():
        if key in EXTRA_ARGS_RESERVED or key.startswith(EXTRA_ARGS_RESERVED_PREFIXES):
            errors.append(FieldError(f"extra_args.{key}", value, f"airtune sets this itself ({reserved_reason(key)}); remove it"))
        elif key in EXTRA_ARGS_FROM_FIELDS:
            errors.append(FieldError(f"extra_args.{key}", value,
                                     f"set by the field {EXTRA_ARGS_FROM_FIELDS[key]}; use that field instead"))
    return errors


def _given(value: Any) -> bool:
    """An option counts as given when it holds something other than "empty" or "off"."""
    return value is not None and value is not False


def _cross_field_errors(v: dict, bad: set) -> list[FieldError]:
    """The form's rules between fields that need no catalog (docs/form.md). Fields already refused are skipped."""
    errors: list[FieldError] = []

    def refuse(name: str, message: str, *others: str) -> None:
        if name not in bad and not bad.intersection(others):
            errors.append(FieldError(name, v[name], message))

    # Options used only with some methods / stages / schedulers (docs/form.md: an error when given otherwise).
    for f in FIELDS:
        for other, allowed in f.used_with.items():
            if _given(v[f.name]) and v[other] not in allowed:
                what = " or ".join(allowed)
                refuse(f.name, f"used only with {other} {what} (this job has {other} {v[other]!r}); leave it empty",
                       other)

    method, bits, qmethod = v["finetuning_method"], v["quantization_bit"], v["quantization_method"]
    if bits != "none" and method != "lora":
        refuse("quantization_bit", f"none unless finetuning_method is lora (QLoRA quantizes the frozen base "
                                   f"under LoRA adapters); this job has finetuning_method {method!r}",
               "finetuning_method")
    if qmethod == "eetq" and bits == "4":
        refuse("quantization_method", "eetq quantizes to 8 bits only: use quantization_bit 8, or bnb or hqq "
                                      "for 4 bits", "quantization_bit")
    if qmethod != "bnb" and bits == "none":
        refuse("quantization_method", f"has no effect without quantization_bit 4 or 8; set quantization_bit or "
                                      f"leave quantization_method at bnb", "quantization_bit")
    if v["distributed"] in ("zero3", "zero3_offload") and bits != "none" and (bits, qmethod) != ("4", "bnb"):
        refuse("quantization_bit", f"with distributed {v['distributed']} only 4-bit bnb quantization works "
                                   f"(this job has {bits}-bit {qmethod}); use quantization_bit 4 with "
                                   f"quantization_method bnb, or distributed zero2/ddp",
               "distributed", "quantization_method")
    if v["export_merged"] and method == "lora" and bits != "none":
        refuse("export_merged", "not with quantization: a quantized base cannot take the adapter exactly; "
                                "set quantization_bit none, or leave export_merged off", "quantization_bit")
    if v["booster"] == "unsloth" and v["distributed"] in ("zero3", "zero3_offload"):
        refuse("booster", f"unsloth does not work with DeepSpeed ZeRO-3 (distributed {v['distributed']!r}); "
                          f"use another booster or distributed ddp/zero2", "distributed")
    if v["stage"] == "grpo" and not v["reward_model"]:
        refuse("reward_model", "required with stage grpo: the name of a finished rm job", "stage")
    errors += _evaluation_errors(v, bad | {e.field for e in errors})
    return errors


# What each promote_metric needs (docs/form.md, section 5): the stages it exists for, and whether it
# needs held-out data (a validation split or eval_dataset) and generated answers.
METRIC_STAGES = {
    "eval_loss": ("pt", "sft", "rm", "dpo", "kto"),
    "rouge-1": ("sft",), "rouge-2": ("sft",), "rouge-l": ("sft",), "bleu-4": ("sft",),
    "reward_accuracy": ("rm", "dpo"),
}
LOWER_IS_BETTER = ("eval_loss",)


def _evaluation_errors(v: dict, bad: set) -> list[FieldError]:
    """Section 5's rules: held-out data from one place, and a promote_metric the job can compute."""
    errors: list[FieldError] = []

    def refuse(name: str, message: str, *others: str) -> None:
        if name not in bad and not bad.intersection(others):
            errors.append(FieldError(name, v[name], message))

    if v["eval_dataset"] and v["val_size"]:
        refuse("eval_dataset", f"either eval_dataset or val_size (this job has val_size {_num(v['val_size'])}): "
                               "held-out data comes from one place; set val_size to 0, or leave eval_dataset empty",
               "val_size")
    if v["promote"] not in ("auto", "approve"):
        return errors
    metric, stage = v["promote_metric"], v["stage"]
    held_out = bool(v["val_size"] or v["eval_dataset"])
    if metric.startswith("benchmark:"):
        name = metric.removeprefix("benchmark:")
        if name not in (v["eval_benchmarks"] or []):
            refuse("promote_metric", f"benchmark {name!r} is not in eval_benchmarks "
                                     f"({', '.join(v['eval_benchmarks'] or []) or 'empty'}); add it there", "eval_benchmarks")
        return errors
    if stage not in METRIC_STAGES[metric]:
        refuse("promote_metric", f"{metric} is measured for stage {' or '.join(METRIC_STAGES[metric])}; this job has "
                                 f"stage {stage!r}", "stage")
    elif stage == "grpo":
        pass  # unreachable: no metric lists grpo
    elif not held_out:
        refuse("promote_metric", f"{metric} is measured on held-out data and this job has none: with promote "
                                 f"{v['promote']}, set val_size > 0 or eval_dataset", "val_size", "eval_dataset", "promote")
    elif metric in ("rouge-1", "rouge-2", "rouge-l", "bleu-4") and v["eval_max_samples"] == 0:
        refuse("promote_metric", f"{metric} scores generated answers and eval_max_samples is 0; set "
                                 f"eval_max_samples > 0 or promote on eval_loss", "eval_max_samples", "promote")
    return errors


def _collect(mapping: Mapping) -> tuple[dict, list[FieldError], set]:
    """(values, errors, refused field names). Refused or missing fields hold their default (None
    for required ones), so `resolve` can still check the rest: all errors are reported at once."""
    if not isinstance(mapping, Mapping):
        raise SpecError([FieldError("job", type(mapping).__name__, "a job is one flat mapping of the keys of docs/form.md")])
    errors: list[FieldError] = []
    bad: set[str] = set()
    values = {f.name: (None if f.required else json.loads(json.dumps(f.default))) for f in FIELDS}
    for key, value in mapping.items():
        f = FIELD_BY_NAME.get(key) if isinstance(key, str) else None
        if f is None:
            errors.append(_unknown_key_error(key, value))
            continue
        if value is None or (f.required and _is_empty(value)):
            continue  # empty means the default (docs/form.md); a required field left empty is refused below
        try:
            converted = _convert(f, value)
            if converted is not None:
                values[key] = converted
        except _Bad as exc:
            bad.add(key)
            message = str(exc) if exc.args else f"must be {f.accepted()}"
            errors.append(FieldError(key, value, message))
    for f in FIELDS:
        if f.required and values[f.name] is None and f.name not in bad:
            bad.add(f.name)
            errors.append(FieldError(f.name, mapping.get(f.name), f"required: {f.accepted()}"))
    if "extra_args" not in bad:
        extra_errors = _extra_args_errors(values["extra_args"])
        errors += extra_errors
        if extra_errors:
            bad.add("extra_args")
    errors += _cross_field_errors(values, bad)
    bad.update(e.field for e in errors)
    return values, errors, bad


def parse(mapping: Mapping) -> JobSpec:
    """The flat job mapping (job YAML, trigger form, REST conf) as a JobSpec; SpecError with every error."""
    values, errors, _ = _collect(mapping)
    if errors:
        raise SpecError(errors)
    return JobSpec(**values)


def parse_partial(mapping: Mapping) -> tuple[JobSpec, list[FieldError], set]:
    """Like parse, but returns (spec with refused fields at their defaults, errors, refused field names)
    instead of raising, so later checks can still run and report their errors with these."""
    values, errors, bad = _collect(mapping)
    return JobSpec(**values), errors, bad
