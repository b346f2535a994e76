"""The one place airtune reaches into libraries beyond their documented API.

Every use of a private or undocumented attribute of a library (TRL, transformers, torch, HQQ, PEFT,
MLflow, Airflow and its cncf.kubernetes provider) goes through a function here, and each thing such a
function relies on is one entry of `RELIES_ON`. tests/test_compat.py checks every entry against the
installed versions, so an upgrade that renames or drops one fails there, with the library, its
version, the attribute and the airtune function that needs it, instead of somewhere in a training
run. The entries are data: checking one imports its module then (`problem`), importing this module
imports no library.

Where a subclass overrides a private method of a library class (the provider's Job operator), the
subclass stays where it is; the names it overrides are listed here, and its calls to the library's
version go through `inherited`.

What was private and now uses a documented API instead (so it is not listed): TRL's `_tp_size`
(accelerate's `Accelerator.parallelism_config.tp_size`, which TRL reads itself), transformers'
`integrations.sdpa_attention.sdpa_attention_forward` (the `sdpa` entry of `AttentionInterface`),
`use_liger_kernel` set after the config is built (now a constructor argument; the field is still
listed: TRL 2 removes it), the tokenizer's `_tokenizer` (`backend_tokenizer`, the same object in
transformers 5), MLflow's `SystemMetricsMonitor` loop internals (`_shutdown_event`, `_process`,
`_metrics_prefix`, the monitors' `_metrics`: airtune runs its own loop over MLflow's monitors).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Reliance(NamedTuple):
    """One thing airtune relies on in a library.

    kind:
      attribute  `module.path` exists (an attribute path: "SFTTrainer.compute_loss")
      assigned   the class `module.path` (or a base class of the same library) assigns each of
                 `names` on its instances (`self.<name> = ...`): instance attributes no class has
      parameter  the callable `module.path` takes each of `names` as a parameter
      calls      the source of the function `module.path` contains each of `names` (the library
                 still calls the method airtune overrides, or still reads the attribute it sets)
    """

    module: str
    path: str
    distribution: str  # the pip distribution, for the version in the message
    used_by: str  # what relies on it: airtune.<used_by>
    kind: str = "attribute"
    names: tuple[str, ...] = ()


_TRL, _TF, _TORCH, _HQQ, _PEFT = "trl", "transformers", "torch", "hqq", "peft"
_MLFLOW, _K8S, _AIRFLOW = "mlflow", "apache-airflow-providers-cncf-kubernetes", "apache-airflow-task-sdk"
_MONITOR = "mlflow.system_metrics.system_metrics_monitor"
_JOB_OPERATOR = "airflow.providers.cncf.kubernetes.operators.job"
_OPS = "launch.kubernetes.operators."
_BASE_MONITOR = "mlflow.system_metrics.metrics.base_metrics_monitor"
_SQL_STORE = "mlflow.store.tracking.sqlalchemy_store"

RELIES_ON: list[Reliance] = [
    # transformers: GGUF models un-marked as quantized
    Reliance("transformers.quantizers.base", "HfQuantizer.remove_quantization_config", _TF, "compat.drop_gguf_quantization"),
    # TRL's SFTTrainer: its num_tokens metric, kept by airtune's own token count (train/sft.py)
    Reliance("trl", "SFTTrainer", _TRL, "compat.sft_tokens_seen", "assigned", ("_total_train_tokens", "_metrics")),
    Reliance("trl", "SFTTrainer.log", _TRL, "compat.set_sft_tokens_seen", "calls", ("self._metrics[mode]",)),
    Reliance("trl", "SFTTrainer.compute_loss", _TRL, "compat.sft_tokens_seen", "calls", ("self._total_train_tokens +=",)),
    # the Trainer's own loss, skipping SFTTrainer's (train/sft.py on the CPU), with its compute_loss_func
    Reliance("transformers", "Trainer.compute_loss", _TF, "compat.trainer_compute_loss", "parameter",
             ("model", "inputs", "return_outputs", "num_items_in_batch")),
    Reliance("transformers", "Trainer.compute_loss", _TF, "compat.trainer_compute_loss", "calls", ("self.compute_loss_func",)),
    Reliance("transformers", "Trainer", _TF, "compat.trainer_compute_loss", "assigned", ("compute_loss_func",)),
    # transformers: the attention implementation a model runs with, and its causal LMs' logits_to_keep
    Reliance("transformers", "PretrainedConfig._attn_implementation", _TF, "compat.attn_implementation"),
    Reliance("transformers.modeling_utils", "slice_logits_to_keep", _TF, "compat.slices_logits_with_mask", "parameter",
             ("hidden_states", "logits_to_keep")),
    # booster liger_kernel: deprecated in TRL 1.x, removed in TRL 2.0 (train/args.py)
    Reliance("trl.trainer.base_config", "_BaseConfig.use_liger_kernel", _TRL, "train.args.map_spec"),
    Reliance("transformers", "Trainer.train", _TF, "train.args.map_spec", "calls", ("self.args.use_liger_kernel",)),
    # torch: a tensor's in-place version counter (train/packed_attention.py: one split per forward)
    Reliance("torch", "Tensor._version", _TORCH, "compat.TensorMemo"),
    # HQQ: quantize-on-load is not available in transformers 5 (train/model.py quantizes the loaded model)
    Reliance("hqq.core.quantize", "HQQLinear", _HQQ, "compat.hqq_linear", "parameter",
             ("linear_layer", "quant_config", "del_orig", "compute_dtype", "device")),
    Reliance("hqq.core.quantize", "BaseQuantizeConfig", _HQQ, "compat.hqq_linear", "parameter", ("nbits", "group_size")),
    Reliance("peft.tuners.lora.hqq", "dispatch_hqq", _PEFT, "compat.hqq_linear"),
    # MLflow: its system-metric monitors, without its logging loop (tracking_callback.py)
    Reliance(_MONITOR, "SystemMetricsMonitor", _MLFLOW, "compat.SystemMetrics", "parameter",
             ("run_id", "sampling_interval", "samples_before_logging", "node_id", "tracking_uri")),
    Reliance(_MONITOR, "SystemMetricsMonitor", _MLFLOW, "compat.SystemMetrics", "assigned",
             ("monitors", "sampling_interval", "samples_before_logging", "node_id")),
    Reliance(_BASE_MONITOR, "BaseMetricsMonitor.collect_metrics", _MLFLOW, "compat.SystemMetrics"),
    Reliance(_BASE_MONITOR, "BaseMetricsMonitor.aggregate_metrics", _MLFLOW, "compat.SystemMetrics"),
    Reliance(_BASE_MONITOR, "BaseMetricsMonitor.clear_metrics", _MLFLOW, "compat.SystemMetrics"),
    # MLflow: the hard delete `mlflow gc` does, scoped to one job (jobs.delete_mlflow)
    Reliance("mlflow.tracking._tracking_service.utils", "_get_store", _MLFLOW, "compat.mlflow_backend_store"),
    Reliance(_SQL_STORE, "SqlAlchemyStore._hard_delete_run", _MLFLOW, "compat.mlflow_hard_delete"),
    Reliance(_SQL_STORE, "SqlAlchemyStore._hard_delete_logged_model", _MLFLOW, "compat.mlflow_hard_delete"),
    Reliance(_SQL_STORE, "SqlAlchemyStore._hard_delete_experiment", _MLFLOW, "compat.mlflow_hard_delete"),
    Reliance(_SQL_STORE, "SqlAlchemyStore", _MLFLOW, "jobs._purge_links", "assigned",
             ("ManagedSessionMaker",)),
    Reliance("mlflow.store.tracking.dbmodels.models", "SqlInput", _MLFLOW, "jobs._purge_links"),
    # transformers: the chat template compiled as apply_chat_template compiles it (data/encode.py)
    Reliance("transformers.utils.chat_template_utils", "_compile_jinja_template", _TF, "compat.compile_chat_template"),
    # the provider's Job operator: TrainJobOperator overrides these (launch/kubernetes/operators.py)
    Reliance(_JOB_OPERATOR, "KubernetesJobOperator.execute_deferrable", _K8S, _OPS + "TrainJobOperator.execute_deferrable"),
    Reliance(_JOB_OPERATOR, "KubernetesJobOperator.execute", _K8S, _OPS + "TrainJobOperator.execute_deferrable", "calls",
             ("self.execute_deferrable()",)),
    Reliance(_JOB_OPERATOR, "KubernetesJobOperator", _K8S, _OPS + "TrainJobOperator.execute_deferrable", "assigned",
             ("job", "pods")),
    Reliance(_JOB_OPERATOR, "KubernetesJobOperator._write_logs", _K8S, _OPS + "TrainJobOperator._write_logs", "parameter",
             ("pod", "follow", "since_time")),
    Reliance(_JOB_OPERATOR, "KubernetesJobOperator._cleanup_monitoring_pods_from_dict", _K8S,
             _OPS + "TrainJobOperator._cleanup_monitoring_pods_from_dict", "parameter", ("context", "pods_by_name")),
    Reliance(_JOB_OPERATOR, "KubernetesJobOperator.execute_complete", _K8S, _OPS + "TrainJobOperator.execute_complete", "calls",
             ("self._write_logs(", "self._cleanup_monitoring_pods_from_dict(")),
    Reliance("airflow.providers.cncf.kubernetes.triggers.job", "KubernetesJobTrigger", _K8S, _OPS + "TrainJobTrigger.on_kill",
             "assigned", ("job_name", "job_namespace", "kubernetes_conn_id", "in_cluster", "config_file", "cluster_context")),
    # Airflow: the logger an operator logs with (launch/kubernetes/rendering.py keeps `airtune render` quiet)
    Reliance("airflow.sdk", "BaseOperator._cached_logger", _AIRFLOW, "compat.set_operator_logger"),
    # the model types AutoTokenizer loads with another class than their hub files name (data/encode.py)
    Reliance("transformers.models.auto.tokenization_auto", "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", _TF,
             "compat.models_with_wrong_hub_tokenizer_class"),
    # an operator run inside another task's execute (launch/kubernetes/deferred.py)
    Reliance("airflow.sdk.bases.operator", "ExecutorSafeguard.tracker", _AIRFLOW, "compat.execute_nested"),
    Reliance("airflow.sdk.bases.operator", "ExecutorSafeguard.decorator", _AIRFLOW, "compat.execute_nested", "calls",
             ("cls.tracker.get(None)",)),
    Reliance("airflow.sdk", "BaseOperator.log", _AIRFLOW, "compat.set_operator_logger", "calls", ("self._cached_logger",)),
]


class CompatError(RuntimeError):
    """A library no longer has what airtune relies on: upgrade airtune or pin the library."""


def _gone(what: str, distribution: str, used_by: str) -> CompatError:
    return CompatError(f"{what} is gone in {distribution} {version_of(distribution)}; airtune.compat.{used_by} relies on "
                       f"it (pin the version in pyproject.toml, or update airtune.compat)")


# -- checking the entries ------------------------------------------------------------------------


def version_of(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "(not installed)"


def problem(entry: Reliance) -> str | None:
    """What is wrong with one entry in the installed versions, as one sentence; None when it holds."""
    import importlib
    import inspect

    where = f"{entry.distribution} {version_of(entry.distribution)}"
    try:
        obj = importlib.import_module(entry.module)
    except ImportError as exc:
        return f"{entry.module} cannot be imported in {where} ({exc}); airtune.{entry.used_by} relies on it"
    walked = entry.module
    for part in entry.path.split("."):
        if not hasattr(obj, part):
            return (f"{walked}.{part} is gone in {where}; airtune.{entry.used_by} relies on "
                    f"{entry.module}.{entry.path}")
        obj = getattr(obj, part)
        walked = f"{walked}.{part}"
    target = f"{entry.module}.{entry.path}"
    if entry.kind == "attribute":
        return None
    if entry.kind == "parameter":
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError) as exc:
            return f"{target} has no signature in {where} ({exc})"
        missing = [n for n in entry.names if n not in params]
        return (f"{target} no longer takes {', '.join(missing)} in {where}; airtune.{entry.used_by} passes "
                f"{'it' if len(missing) == 1 else 'them'}") if missing else None
    if entry.kind == "assigned":
        missing = [n for n in entry.names if not _assigned(obj, n)]
        return (f"{target} no longer sets self.{', self.'.join(missing)} in {where}; airtune.{entry.used_by} "
                f"reads {'it' if len(missing) == 1 else 'them'}") if missing else None
    if entry.kind == "calls":
        source = _source(obj)
        missing = [n for n in entry.names if n not in source]
        return (f"{target} no longer does {' / '.join(repr(n) for n in missing)} in {where}; "
                f"airtune.{entry.used_by} depends on it") if missing else None
    return f"{target}: unknown kind {entry.kind!r} in airtune.compat.RELIES_ON"


def _source(obj) -> str:
    import inspect

    if isinstance(obj, property):
        obj = obj.fget
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _assigned(cls, name: str) -> bool:
    """Whether the class, or a base class from the same library, assigns `self.<name>`."""
    import re

    top = cls.__module__.split(".")[0]
    pattern = re.compile(rf"\bself\.{re.escape(name)}\s*(?::[^=\n]+)?=(?!=)")
    return any(pattern.search(_source(klass)) for klass in getattr(cls, "__mro__", (cls,))
               if getattr(klass, "__module__", "").split(".")[0] == top)


# -- transformers --------------------------------------------------------------------------------


def drop_gguf_quantization(model) -> None:
    """Make a model loaded from a GGUF file saveable as an ordinary model.

    transformers dequantizes Llama-family GGUF weights while loading (its older GGUF loader), yet
    marks the model as quantized with `gguf`, so `save_pretrained` refuses it and
    `model.dequantize()` is not implemented for GGUF. The quantizer's own
    `remove_quantization_config` clears that mark (and the config's quantization_config)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    remove = getattr(quantizer, "remove_quantization_config", None)
    if remove is None:
        raise CompatError(f"{type(quantizer).__name__} has no remove_quantization_config: "
                          "transformers changed how a GGUF model is un-marked as quantized")
    remove(model)


def attn_implementation(config) -> str | None:
    """The attention implementation a model's config says it runs with ("sdpa", "eager", ...).

    transformers has a public setter (`PreTrainedModel.set_attn_implementation`) but reads the
    value itself from `config._attn_implementation`; there is no public getter."""
    return getattr(config, "_attn_implementation", None)


def slices_logits_with_mask(forward) -> bool:
    """Whether a causal LM's `forward` slices its hidden states with transformers'
    `slice_logits_to_keep`, which takes a boolean (batch, length) mask as `logits_to_keep` (a
    documented parameter whose boolean form only that helper implements). The modeling module is
    asked whether it imported the helper: transformers has no flag for it."""
    import inspect

    return getattr(inspect.getmodule(forward), "slice_logits_to_keep", None) is not None


def trainer_compute_loss(trainer, model, inputs, *, return_outputs: bool = False, num_items_in_batch=None):
    """transformers' `Trainer.compute_loss` for a TRL trainer, skipping the TRL subclass's own
    (SFTTrainer's runs its fused LM head and its metrics): the model's loss, or the trainer's
    `compute_loss_func` on the model's outputs."""
    from transformers import Trainer

    return Trainer.compute_loss(trainer, model, inputs, return_outputs=return_outputs,
                                num_items_in_batch=num_items_in_batch)


def sft_tokens_seen(trainer) -> int:
    """TRL SFTTrainer's count of training tokens so far (its `num_tokens` metric)."""
    try:
        return trainer._total_train_tokens
    except AttributeError:
        raise _gone("SFTTrainer._total_train_tokens", _TRL, "sft_tokens_seen") from None


def set_sft_tokens_seen(trainer, total: int) -> None:
    """Set TRL SFTTrainer's token count and the `num_tokens` value its next log record carries."""
    if not hasattr(trainer, "_total_train_tokens") or not hasattr(trainer, "_metrics"):
        raise _gone("SFTTrainer._total_train_tokens / _metrics", _TRL, "set_sft_tokens_seen")
    trainer._total_train_tokens = total
    trainer._metrics["train"]["num_tokens"] = [total]


def compile_chat_template(text: str):
    """A chat template compiled as `apply_chat_template` compiles it (transformers' Jinja environment,
    with its `raise_exception`, `tojson` and `strftime_now`); cached by transformers."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        raise _gone("transformers.utils.chat_template_utils._compile_jinja_template", _TF,
                    "compile_chat_template") from None
    return _compile_jinja_template(text)


# -- torch ---------------------------------------------------------------------------------------


class TensorMemo:
    """One value remembered for one tensor: computed again when given another tensor, or the same one
    changed in place since (its version counter, `Tensor._version`, which autograd keeps).

    packed_attention splits the batch's position_ids once per forward instead of once per layer."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Any = None

    def get(self, tensor, compute):
        version = getattr(tensor, "_version", None)
        if version is None:
            raise _gone("torch.Tensor._version", _TORCH, "TensorMemo")
        if self._key is not None and self._key[0] is tensor and self._key[1] == version:
            return self._value
        value = compute(tensor)
        self._key, self._value = (tensor, version), value
        return value


# -- HQQ -----------------------------------------------------------------------------------------


def hqq_linear_class():
    """HQQ's quantized linear layer (PEFT wraps it with its own LoRA layer, `dispatch_hqq`)."""
    from hqq.core.quantize import HQQLinear

    return HQQLinear


def hqq_linear(linear, *, nbits: int, group_size: int, compute_dtype: str, device: str):
    """`linear` (an nn.Linear) as HQQ's HQQLinear, `nbits` bits in groups of `group_size`, on `device`;
    the full-precision weight is freed. transformers 5 cannot quantize with HQQ while loading
    (`HqqConfig`: "not available yet"), so train/model.py swaps the loaded model's layers with this."""
    import torch
    from hqq.core.quantize import BaseQuantizeConfig

    config = BaseQuantizeConfig(nbits=nbits, group_size=group_size)
    return hqq_linear_class()(linear, quant_config=config, compute_dtype=getattr(torch, compute_dtype), device=device,
                              del_orig=True)


# -- MLflow --------------------------------------------------------------------------------------


class SystemMetrics:
    """MLflow's own system-metric monitors (CPU, memory, disk, network, and an NVIDIA or AMD GPU where
    there is one), without MLflow's logging loop, which stops for good the first time the server does
    not answer. The monitors are the ones `SystemMetricsMonitor` picks, with its settings (the
    MLFLOW_SYSTEM_METRICS_* variables override the arguments, as in MLflow)."""

    PREFIX = "system/"  # MLflow's documented prefix of system metrics

    def __init__(self, run_id: str, *, sampling_interval: float, samples_before_logging: int = 1,
                 node_id: str | None = None, tracking_uri: str | None = None) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=sampling_interval,
                                       samples_before_logging=samples_before_logging, node_id=node_id,
                                       tracking_uri=tracking_uri)
        try:
            self.monitors = list(monitor.monitors)
            self.sampling_interval = float(monitor.sampling_interval)
            self.samples_before_logging = int(monitor.samples_before_logging)
            self.node_id = monitor.node_id
        except AttributeError:
            raise _gone("SystemMetricsMonitor.monitors / sampling_interval / samples_before_logging / node_id",
                        _MLFLOW, "SystemMetrics") from None

    @property
    def prefix(self) -> str:
        """system/<node>/: what each metric name starts with."""
        return self.PREFIX + (self.node_id + "/" if self.node_id else "")

    def collect(self) -> None:
        """One sample from every monitor."""
        for m in self.monitors:
            m.collect_metrics()

    def aggregate(self) -> dict:
        """The samples since the last `clear`, aggregated (MLflow's names, without the prefix)."""
        out: dict = {}
        for m in self.monitors:
            out.update(m.aggregate_metrics())
        return out

    def clear(self) -> None:
        for m in self.monitors:
            m.clear_metrics()


def mlflow_backend_store(uri: str):
    """MLflow's tracking store for a backend-store URI (a database or a folder), as `mlflow gc` opens
    it; None when that store has no hard delete."""
    try:
        from mlflow.tracking._tracking_service.utils import _get_store
    except ImportError:
        raise _gone("mlflow.tracking._tracking_service.utils._get_store", _MLFLOW, "mlflow_backend_store") from None
    store = _get_store(uri)
    return store if hasattr(store, "_hard_delete_run") else None


def mlflow_hard_delete(store, *, run_id: str | None = None, logged_model_id: str | None = None,
                       experiment_id: str | None = None) -> bool:
    """Purge one deleted run, logged model or experiment from the store, as `mlflow gc` does; False
    where the store cannot (a logged model in an older store)."""
    kind, name, value = next((k, n, v) for k, n, v in (("run", "_hard_delete_run", run_id),
                                                       ("logged model", "_hard_delete_logged_model", logged_model_id),
                                                       ("experiment", "_hard_delete_experiment", experiment_id))
                             if v is not None)
    method = getattr(store, name, None)
    if method is None:
        if kind == "logged model":
            return False
        raise _gone(f"{type(store).__name__}.{name}", _MLFLOW, "mlflow_hard_delete")
    method(value)
    return True


def models_with_wrong_hub_tokenizer_class() -> frozenset[str]:
    """The model types whose hub tokenizer_config names a class AutoTokenizer does not use for them
    (AutoTokenizer checks this set before it trusts a generic tokenizer_class)."""
    from transformers.models.auto import tokenization_auto

    names = getattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", None)
    if names is None:
        raise _gone("tokenization_auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", _TF, "models_with_wrong_hub_tokenizer_class")
    return frozenset(names)


# -- Airflow and the cncf.kubernetes provider ----------------------------------------------------


def inherited(obj, cls: type, name: str):
    """`super(cls, obj).<name>`: the library's own version of a (private) method `cls` overrides,
    or a CompatError naming the provider's version when the library no longer has it."""
    try:
        return getattr(super(cls, obj), name)
    except AttributeError:
        raise _gone(f"{cls.__mro__[1].__name__}.{name}", _K8S, f"inherited ({cls.__name__}.{name})") from None


def set_operator_logger(operator, logger) -> None:
    """Make an operator log through `logger` (Airflow caches an operator's logger in `_cached_logger`;
    its `logger_name` argument renames the logger, but a structlog logger ignores logging levels)."""
    if not hasattr(type(operator), "_cached_logger"):
        raise _gone("BaseOperator._cached_logger", _AIRFLOW, "set_operator_logger")
    operator._cached_logger = logger


def execute_nested(operator, context):
    """`operator.execute(context)` from inside another task's execute, as that task's own work.
    Airflow guards every operator's execute against calls from outside the task runner (it warns
    "... cannot be called outside of the Task Runner!"): the guard reads the operator now running
    from `ExecutorSafeguard.tracker`, which is set to `operator` for the call."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    tracker = getattr(ExecutorSafeguard, "tracker", None)
    if tracker is None:
        raise _gone("ExecutorSafeguard.tracker", _AIRFLOW, "execute_nested")
    token = tracker.set(operator)
    try:
        return operator.execute(context)
    finally:
        tracker.reset(token)
