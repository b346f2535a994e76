"""The job form's field table: every field of `JobSpec`, defined once (docs/form.md is written from it).

Each field carries, in its `metadata` (as TRL's `SFTConfig` carries its help text), what the form, the
docs and the error messages need: section, labels and help text in English and Chinese (the Chinese
wording from the platform's original job form, with its recommended ranges), the accepted values and
limits, and the stage/method a field is used with. `FIELDS` is that table, in the form's order. The
parser (`airtune.spec.parse`) and the params' JSON schema (`airtune.form.param_schema`) both read it.

Cheap to import: standard library only (the DAG file imports this at parse time).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# -- errors ---------------------------------------------------------------------------------------


def show_value(value: Any) -> str:
    """A value as a message shows it: strings quoted, None as 'empty'."""
    if value is None:
        return "empty"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass(frozen=True)
class FieldError:
    """One refused value: which field (or `extra_args.<key>`), the value given, what is accepted."""

    field: str
    value: Any
    message: str

    def __str__(self) -> str:
        from airtune import redact

        shown = redact.value(self.value, self.field.rsplit(".", 1)[-1])
        return redact.text(f"{self.field}: {show_value(shown)} is not accepted: {self.message}")


class SpecError(ValueError):
    """Every error of a job at once (never only the first)."""

    def __init__(self, errors: list[FieldError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


# -- sections -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    number: int
    title_en: str
    title_zh: str

    def title(self, lang: str = "en") -> str:
        return self.title_zh if lang == "zh" else self.title_en


SECTIONS: tuple[Section, ...] = (
    Section(1, "Basic information", "任务基本信息"),
    Section(2, "Task configuration", "任务配置"),
    Section(3, "Advanced configuration", "高级配置"),
    # Beyond the platform's original form; shown last (LLaMA-Factory has each of these options).
    Section(4, "Further options", "更多选项"),
    # What the evaluate task measures and what may become the model in use (docs/form.md, section 5).
    Section(5, "Evaluation and promotion", "评估与模型晋级"),
)

# -- value patterns -------------------------------------------------------------------------------

# Every pattern is checked the way Airflow checks a param's JSON schema: Python's `re.search`. Its `$`
# also matches before a final newline ("demo\n" would pass `^[a-z0-9]+$`); `$(?!\n)` is the true end
# there, and the same as `$` in ECMA-262 regexes.
_END = r"$(?!\n)"
# Kubernetes' DNS-1123 label: every object, folder and MLflow name is derived from the job name.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?" + _END
DNS_LABEL_MAX = 63
# The same, or empty (reward_model / parent_job may be left empty in a REST conf as "").
OPTIONAL_DNS_LABEL_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?" + _END
# A catalog name (model, location, template, GPU type, dataset, benchmark) as given: no spaces, no commas.
NAME_PATTERN = r"^[^,\s]+" + _END
# A module name PEFT can target (q_proj, model.layers.0.mlp.down_proj, ...); `all` in another case
# (ALL, All) is neither `all` nor a module name.
MODULE_PATTERN = r"^[A-Za-z0-9_.]+" + _END
ALL_ANY_CASE_PATTERN = r"^[Aa][Ll][Ll]" + _END  # not a module name, in a list: `all` is given alone, as text
_MODULE_TOKEN = r"(?![Aa][Ll][Ll](?![A-Za-z0-9_.]))[A-Za-z0-9_.]+"
# lora_target as text in the form: `all`, or module names separated by commas.
LORA_TARGET_TEXT_PATTERN = r"^\s*(all|" + _MODULE_TOKEN + r"(\s*,\s*" + _MODULE_TOKEN + r")*)\s*$"
# promote_metric: a metric the evaluate task computes, or a benchmark's overall accuracy.
PROMOTE_METRIC_PATTERN = r"^(eval_loss|rouge-1|rouge-2|rouge-l|bleu-4|reward_accuracy|benchmark:[A-Za-z0-9_.-]+)" + _END
PROMOTE_METRICS = ("eval_loss", "rouge-1", "rouge-2", "rouge-l", "bleu-4", "reward_accuracy")
# notify: Airflow connection ids (Airflow's own rule: letters, digits, '_', '.', '-').
CONN_ID_TOKEN = r"[A-Za-z0-9_.\-]+"
CONN_ID_PATTERN = "^" + CONN_ID_TOKEN + _END


def names_text_pattern(token: str = r"[^,\s]+") -> str:
    """dataset (and the other name lists) as text: names (each matching `token`) separated by commas,
    each at most once (the look-ahead refuses a name that comes again)."""
    twice = r"(?![\s\S]*?(?:^|,)\s*([^,\s]+)\s*,(?:[\s\S]*,)?\s*\1\s*(?:,|$))"
    return rf"^{twice}\s*(?:{token})(\s*,\s*(?:{token}))*\s*$"


NAMES_TEXT_PATTERN = names_text_pattern()
# numpy's seed must lie in [0, 2**32 - 1]: transformers' set_seed passes ours to it.
SEED_MAX = 2**32 - 1

# -- extra_args: keys airtune sets itself ---------------------------------------------------------

# docs/form.md: output and logging folders, report_to, deepspeed, ranks and hub pushing are airtune's.
EXTRA_ARGS_RESERVED = frozenset({
    "output_dir", "logging_dir", "report_to", "deepspeed", "local_rank", "push_to_hub", "run_name",
    "resume_from_checkpoint", "save_strategy", "eval_strategy", "logging_strategy", "ddp_backend",
    "use_cpu", "overwrite_output_dir", "process_index", "world_size",
    # saving and resuming: checkpoints must stay resumable and final/ complete
    "save_only_model", "save_safetensors", "save_on_each_node", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "restore_callback_states_from_checkpoint",
    # data: airtune prepares, masks and packs the rows itself (the prepare step)
    "dataset_kwargs", "dataset_text_field", "dataset_num_proc", "skip_prepare_dataset", "remove_unused_columns",
    "completion_only_loss", "assistant_only_loss", "eval_packing", "packing_strategy",
    # logging: the metrics airtune records and its throughput figure
    "include_num_input_tokens_seen", "disable_tqdm", "logging_first_step",
    # distribution: set from location, nodes, gpus_per_node and distributed
    "fsdp", "fsdp_config", "accelerator_config", "ddp_timeout",
})
EXTRA_ARGS_RESERVED_PREFIXES = ("hub_",)


def reserved_reason(key: str) -> str:
    """Why airtune keeps an extra_args key to itself, for the message that refuses it."""
    if key.startswith("save_") or key in ("load_best_model_at_end", "metric_for_best_model", "greater_is_better",
                                         "restore_callback_states_from_checkpoint", "resume_from_checkpoint"):
        return "saving and resuming: checkpoints stay resumable and the best one is chosen by register"
    if key.startswith(("dataset_", "skip_prepare")) or key in ("remove_unused_columns", "completion_only_loss",
                                                               "assistant_only_loss", "eval_packing", "packing_strategy"):
        return "the data: the prepare step renders, masks and packs the rows"
    if key in ("fsdp", "fsdp_config", "accelerator_config", "ddp_timeout", "ddp_backend", "deepspeed", "local_rank",
               "use_cpu", "process_index", "world_size"):
        return "distribution: set from location, nodes, gpus_per_node and distributed"
    if key.startswith("hub_") or key == "push_to_hub":
        return "hub pushing: models are registered in MLflow"
    return "output and logging folders, report_to and the metrics it records"
# Trainer arguments a form field already sets: given twice, one would silently win. Refused with a
# pointer to the field.
EXTRA_ARGS_FROM_FIELDS = {
    "learning_rate": "learning_rate", "num_train_epochs": "num_train_epochs",
    "max_grad_norm": "max_grad_norm", "per_device_train_batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "lr_scheduler_type": "lr_scheduler_type",
    "lr_scheduler_kwargs": "min_lr_rate / decay_ratio", "warmup_steps": "warmup_steps",
    "logging_steps": "logging_steps", "save_steps": "save_steps", "save_total_limit": "save_total_limit",
    "optim": "optimizer", "seed": "seed", "data_seed": "seed", "neftune_noise_alpha": "neftune_noise_alpha",
    "bf16": "compute_type", "fp16": "compute_type", "max_length": "cutoff_len", "max_seq_length": "cutoff_len",
    "packing": "packing", "padding_free": "packing", "beta": "pref_beta", "loss_type": "pref_loss",
}

# -- the fields -----------------------------------------------------------------------------------

# kinds: str (free text, or a catalog name checked by resolve), choice (fixed values), int, float,
# bool, names (one or more catalog names), target (lora_target: all or module names), object (dict).


def _f(default: Any = None, *, section: int, kind: str, label_en: str, label_zh: str, help_en: str,
       help_zh: str, recommended_en: str = "", recommended_zh: str = "", default_en: str = "",
       default_zh: str = "", required: bool = False, choices: tuple = (), choice_labels: dict | None = None,
       catalog: str | None = None, gt: float | None = None, ge: float | None = None,
       lt: float | None = None, le: float | None = None, pattern: str | None = None,
       max_length: int | None = None, used_with: dict | None = None) -> Any:
    """A JobSpec field with its row of the form as metadata.

    `used_with`: the values of other fields this option means something with, e.g.
    {"finetuning_method": ("lora",)}; given with anything else, it is an error (docs/form.md).
    `default_en/zh` describe a default that depends on other fields ("empty; with lora: 8").
    """
    metadata = dict(
        section=section, kind=kind, label_en=label_en, label_zh=label_zh, help_en=help_en, help_zh=help_zh,
        recommended_en=recommended_en, recommended_zh=recommended_zh, default_en=default_en, default_zh=default_zh,
        required=required, choices=tuple(choices), choice_labels=dict(choice_labels or {}), catalog=catalog,
        gt=gt, ge=ge, lt=lt, le=le, pattern=pattern, max_length=max_length, used_with=dict(used_with or {}),
    )
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=metadata)
    return field(default=default, metadata=metadata)


LORA = {"finetuning_method": ("lora",)}
_LORA_ONLY_EN = "Only with finetuning_method lora; leave it empty otherwise."
_LORA_ONLY_ZH = "仅用于 LoRA 微调方法；其他方法请留空。"

SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")


@dataclass(frozen=True)
class JobSpec:
    """One fine-tuning job, as docs/form.md defines it.

    Section 1, basic information: name, location, base_model, template, finetuning_method, stage,
    dataset, reward_model, parent_job.
    Section 2, task configuration: resources (gpu_type, gpus_per_node, nodes, cpu, memory_gib) and
    hyperparameters (learning_rate ... loraplus_lr_ratio).
    Section 3, advanced configuration: quantization, RoPE scaling, booster, distributed strategy,
    logging/saving/warmup steps, NEFTune, optimizer, seed, extra_args.
    Section 4, further options: LoRA targets and variants, freeze depth, preference loss, packing,
    prompt masking, bad-row skipping, checkpoint limit, merged export, scheduler shapes.

    `None` in a parsed spec means "empty": `airtune.resolve` fills it in (`auto` values, the
    defaults that depend on the method or stage).
    """

    # -- section 1: basic information (任务基本信息) --
    name: str = _f(
        section=1, kind="str", required=True, pattern=DNS_LABEL_PATTERN, max_length=DNS_LABEL_MAX,
        label_en="Job name", label_zh="任务名称",
        help_en="Lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 "
                "characters. It names the job everywhere (folders, MLflow, Kubernetes objects); a name already "
                "used by another job is refused.",
        help_zh="由小写字母、数字字符或“-”组成，并且必须以字母或数字字符开头及结尾，最多63个字符。"
                "已被其他任务使用的名称不可再用。",
    )
    location: str = _f(
        "local", section=1, kind="str", catalog="locations",
        label_en="Location", label_zh="选择部署位置",
        help_en="Where training runs: local (this machine) or one of the Kubernetes locations of the catalog.",
        help_zh="选择部署位置：local（本机），或目录中配置的 Kubernetes 集群。",
    )
    base_model: str = _f(
        section=1, kind="str", required=True, catalog="models",
        label_en="Base model", label_zh="基础模型",
        help_en="The model to fine-tune: one of the catalog's models.",
        help_zh="选择微调实验支持的模型。",
    )
    template: str = _f(
        "auto", section=1, kind="str", catalog="templates",
        label_en="Prompt template", label_zh="提示词模版",
        help_en="The chat template the data is rendered with. auto: the model's own (when continuing from "
                "parent_job: the template that job used). An instruct/chat model takes only its own template; a "
                "base model may take any; when fine-tuning an already fine-tuned model again, use the same "
                "template as the first time.",
        help_zh="与基础模型适配的模版，instruct、chat模型模版和模型一定要适配、base模型影响不大，"
                "但是微调过后如果再进行微调，就要选和第一次一样的模版。auto：使用模型自带的模版"
                "（指定了父任务时使用父任务的模版）。",
    )
    finetuning_method: str = _f(
        "lora", section=1, kind="choice", choices=("lora", "freeze", "full"),
        choice_labels={"lora": ("LoRA (low-rank adapters)", "LoRA（低秩适配器）"),
                       "freeze": ("Freeze (train the last layers only)", "冻结微调（只训练最后几层）"),
                       "full": ("Full (train every weight)", "全参数微调")},
        label_en="Fine-tuning method", label_zh="微调方法",
        help_en="lora trains small low-rank adapters (least GPU memory); freeze trains only the last layers; "
                "full trains every weight (most GPU memory).",
        help_zh="根据需求选择合适的微调方法。lora：只训练低秩适配器（显存占用最少）；freeze：只训练最后几层；"
                "full：训练全部参数（显存占用最多）。",
    )
    stage: str = _f(
        "sft", section=1, kind="choice", choices=("pt", "sft", "rm", "dpo", "kto", "grpo"),
        choice_labels={"pt": ("pt: continued pre-training (plain text)", "pt：继续预训练（纯文本）"),
                       "sft": ("sft: supervised fine-tuning", "sft：指令监督微调"),
                       "rm": ("rm: reward model (preference pairs)", "rm：奖励模型训练（偏好数据）"),
                       "dpo": ("dpo: direct preference optimisation", "dpo：直接偏好优化"),
                       "kto": ("kto: KTO (labelled examples)", "kto：KTO（带标签样本）"),
                       "grpo": ("grpo: online RL against a reward model", "grpo：基于奖励模型的在线强化学习")},
        label_en="Training stage", label_zh="训练阶段",
        help_en="pt: continued pre-training on plain text; sft: supervised fine-tuning on instructions or "
                "conversations; rm: a reward model from preference pairs; dpo: direct preference optimisation; "
                "kto: KTO on examples labelled desirable/undesirable; grpo: online RL against a reward model "
                "(an rm job). ppo is not offered (TRL no longer has a PPO trainer): use grpo.",
        help_zh="根据需求选择合适的训练的阶段。pt：继续预训练（纯文本）；sft：指令监督微调；rm：奖励模型训练"
                "（偏好数据）；dpo：直接偏好优化；kto：KTO（带好/坏标签的样本）；grpo：基于奖励模型（rm任务）"
                "的在线强化学习。不提供ppo（TRL已不再提供PPO训练器），请使用grpo。",
    )
    dataset: list = _f(
        section=1, kind="names", required=True, catalog="datasets",
        label_en="Training datasets", label_zh="训练数据集",
        help_en="One or more datasets of the catalog (a list, or names separated by commas). Their "
                "format must fit the stage: instructions or conversations for sft, plain text for pt, preference "
                "pairs for rm and dpo, labelled examples for kto; grpo takes the prompts of instructions, "
                "conversations or preference pairs.",
        help_zh="选择对应训练格式的数据集（可多选）：sft用指令或对话数据，pt用纯文本，rm与dpo用偏好数据，"
                "kto用带标签的样本；grpo取指令、对话或偏好数据中的提示。",
    )
    reward_model: str | None = _f(
        section=1, kind="str", pattern=OPTIONAL_DNS_LABEL_PATTERN, max_length=DNS_LABEL_MAX,
        used_with={"stage": ("grpo",)},
        label_en="Reward model", label_zh="奖励模型",
        help_en="Stage grpo only, and required there: the name of a finished rm job whose model scores the "
                "generated answers.",
        help_zh="仅用于grpo阶段且为必填：一个已完成的rm（奖励模型）任务的名称，用它给生成的回答打分。",
    )
    parent_job: str | None = _f(
        section=1, kind="str", pattern=OPTIONAL_DNS_LABEL_PATTERN, max_length=DNS_LABEL_MAX,
        label_en="Continue from job", label_zh="父任务（在其结果上继续微调）",
        help_en="Optional: the name of a finished pt, sft, dpo, kto or grpo job whose adapter or weights this "
                "job starts from. Its base model must equal base_model and its template this job's template. "
                "For dpo, kto and grpo it is also the reference model.",
        help_zh="可选：一个已完成的pt、sft、dpo、kto或grpo任务的名称，本任务从它的适配器或权重开始训练。"
                "其基础模型必须与本任务相同；微调过后如果再进行微调，就要选和第一次一样的模版。"
                "dpo、kto、grpo阶段以它作为参考模型。",
    )

    # -- section 2: task configuration (任务配置): resources --
    gpu_type: str | None = _f(
        section=2, kind="str", catalog="gpu_types",
        default_en="empty: the location's first GPU type", default_zh="留空：该部署位置的第一个类型",
        label_en="GPU type", label_zh="算力类型",
        help_en="One of the GPU types the location offers (each sets the node selector, the GPU memory and "
                "whether bf16 is available). local offers cpu (no GPU) and auto (the GPUs of this machine). "
                "Only NVIDIA GPUs are supported.",
        help_zh="选择算力类型（所选部署位置提供的类型，对应节点选择器、显存大小及是否支持bf16）。"
                "local提供cpu（不用GPU）和auto（本机的GPU）。当前模型服务仅支持Nvidia的GPU。",
    )
    gpus_per_node: int | None = _f(
        section=2, kind="int", ge=0,
        default_en="empty: on local every GPU the machine has (0 without one); 1 on Kubernetes",
        default_zh="留空：local使用本机全部GPU（没有GPU则为0）；Kubernetes上为1",
        label_en="GPUs per node", label_zh="物理卡数",
        help_en="GPUs each machine trains on; training is distributed over them. 0 (CPU only) only on local; "
                "at most what the GPU type's nodes have.",
        help_zh="用于训练的物理GPU或TPU卡的数量（控制每台机器使用的卡数，目前只支持GPU），"
                "模型会根据物理卡个数在GPU上进行分布式微调。0（只用CPU）仅限local；不能超过该算力类型节点的卡数。",
    )
    nodes: int = _f(
        1, section=2, kind="int", ge=1,
        label_en="Nodes", label_zh="任务并行数",
        help_en="Machines the job trains on at once (multi-node training). More than 1 only on Kubernetes.",
        help_zh="同时运行的任务数量（控制多机），即参与训练的机器（节点）数。大于1仅限Kubernetes。",
    )
    cpu: int = _f(
        8, section=2, kind="int", ge=1,
        label_en="CPU cores per node", label_zh="资源配置：CPU核数",
        help_en="CPU cores per node. On Kubernetes requests equal limits; not enforced on local.",
        help_zh="填写资源配置：每个节点的CPU核数。Kubernetes上请求值等于上限；local上不做限制。",
    )
    memory_gib: int = _f(
        64, section=2, kind="int", ge=1,
        label_en="Memory per node (GiB)", label_zh="资源配置：内存（GiB）",
        help_en="Memory per node, in GiB. On Kubernetes requests equal limits; not enforced on local.",
        help_zh="填写资源配置：每个节点的内存（GiB）。Kubernetes上请求值等于上限；local上不做限制。",
    )

    # -- section 2: hyperparameters --
    learning_rate: float = _f(
        1e-4, section=2, kind="float", gt=0, le=1,
        label_en="Learning rate", label_zh="学习率",
        help_en="The step size of each parameter update: too high makes training unstable, too low converges "
                "slowly.",
        help_zh="模型参数更新的步长，学习率过高可能导致训练不稳定，过低可能导致收敛缓慢。",
        recommended_en="1e-5 to 1e-3, usually start from 1e-4",
        recommended_zh="1e-5 至 1e-3，通常从1e-4开始调整",
    )
    num_train_epochs: float = _f(
        3.0, section=2, kind="float", gt=0, le=1000,
        label_en="Epochs", label_zh="训练轮数",
        help_en="How many times training goes through the whole dataset (fractions allowed).",
        help_zh="完整地遍历训练数据集的次数（可为小数）。",
        recommended_en="1-10 depending on dataset size and compute; 1 to 3 are usually enough for fine-tuning",
        recommended_zh="1-10，视数据集大小和计算资源而定，一般做微调1到3轮就足够",
    )
    max_grad_norm: float = _f(
        1.0, section=2, kind="float", gt=0,
        label_en="Max gradient norm", label_zh="最大梯度范数",
        help_en="Gradients are clipped to this norm, to avoid exploding gradients.",
        help_zh="用于控制梯度的最大值，以避免梯度爆炸问题。",
        recommended_en="0.5-1.0", recommended_zh="0.5-1.0，视具体情况而定",
    )
    max_samples: int | None = _f(
        section=2, kind="int", ge=1,
        default_en="empty: no limit", default_zh="留空：不限制",
        label_en="Max samples", label_zh="最大样本数",
        help_en="The most examples taken from each dataset; usually for debugging.",
        help_zh="每次训练使用的最大样本数量（每个数据集），通常用于调试或预训练阶段。",
        recommended_en="depends on the hardware; usually empty (no limit)",
        recommended_zh="根据硬件资源确定，通常设置为None（不限制）",
    )
    compute_type: str = _f(
        "auto", section=2, kind="choice", choices=("auto", "bf16", "fp16", "fp32", "pure_bf16"),
        choice_labels={"auto": ("auto (bf16 where the GPU has it, else fp16; fp32 on CPU)",
                                "auto（GPU支持时用bf16，否则fp16；CPU上用fp32）"),
                       "bf16": ("bf16 mixed precision", "bf16 混合精度"),
                       "fp16": ("fp16 mixed precision", "fp16 混合精度"),
                       "fp32": ("fp32 (full precision)", "fp32（全精度）"),
                       "pure_bf16": ("pure bf16 (weights and optimizer in bf16)", "纯bf16（权重和优化器都用bf16）")},
        label_en="Compute type", label_zh="计算类型",
        help_en="The numeric precision of training. auto: bf16 where the GPU has it, else fp16; fp32 on the "
                "CPU. bf16 needs a GPU type with bf16, or, on location local's CPU, a CPU with AVX-512 BF16 or "
                "AMX (about twice fp32's speed there; auto stays fp32 on the CPU); pure_bf16 needs a GPU type "
                "with bf16; fp16 needs a GPU.",
        help_zh="指定训练时的计算精度类型。auto：GPU支持bf16时用bf16，否则用fp16；CPU上用fp32。"
                "bf16需要支持bf16的GPU，或在local的CPU上需要支持AVX-512 BF16或AMX指令的CPU（速度约为fp32的两倍；"
                "CPU上auto仍用fp32）；pure_bf16需要支持bf16的GPU；fp16需要GPU。",
        recommended_en="fp16, or mixed precision where the hardware supports it, to train faster",
        recommended_zh="FP16，若硬件支持可选择混合精度以加速训练",
    )
    cutoff_len: int = _f(
        2048, section=2, kind="int", ge=8, le=1_048_576,
        label_en="Cutoff length", label_zh="截断长度",
        help_en="The most tokens of one example after tokenization; longer examples are truncated.",
        help_zh="输入分词后的最大长度，超出部分被截断。",
    )
    per_device_train_batch_size: int = _f(
        8, section=2, kind="int", ge=1,
        label_en="Batch size (per GPU)", label_zh="批处理大小",
        help_en="Examples fed to the model at once on each GPU. Larger batches train more efficiently but need "
                "more GPU memory.",
        help_zh="每次训练中输入模型的样本数量。较大的批处理大小可提高训练效率，但也需要更多的显存。"
                "资源充足的情况下，批处理大小越大，效果越好。",
        recommended_en="8-64, depending on GPU memory and model size",
        recommended_zh="8-64，视显存容量和模型复杂度而定",
    )
    gradient_accumulation_steps: int = _f(
        1, section=2, kind="int", ge=1,
        label_en="Gradient accumulation", label_zh="梯度累计",
        help_en="Batches whose gradients are accumulated before each update.",
        help_zh="梯度累计的次数，即在更新模型前积累梯度的次数。",
        recommended_en="1-8, depending on which batch size fits", recommended_zh="1-8，通常与批处理大小的实际可行性有关",
    )
    val_size: float = _f(
        0.0, section=2, kind="float", ge=0, lt=1,
        label_en="Validation share", label_zh="验证集比例",
        help_en="The share of the dataset held out for validation (0: none).",
        help_zh="用于验证的数据集在整个数据集中的比例（0：不划分验证集）。",
        recommended_en="as needed", recommended_zh="根据需求设定",
    )
    lr_scheduler_type: str = _f(
        "cosine", section=2, kind="choice", choices=SCHEDULERS,
        choice_labels={"linear": ("linear decay", "线性衰减"), "cosine": ("cosine annealing", "余弦退火"),
                       "cosine_with_restarts": ("cosine with restarts", "带重启的余弦退火"),
                       "polynomial": ("polynomial decay", "多项式衰减"), "constant": ("constant", "恒定"),
                       "constant_with_warmup": ("constant after warmup", "预热后恒定"),
                       "inverse_sqrt": ("inverse square root", "平方根倒数衰减"),
                       "cosine_with_min_lr": ("cosine down to a minimum (min_lr_rate)", "余弦退火到最小学习率（min_lr_rate）"),
                       "warmup_stable_decay": ("warmup, stable, decay (decay_ratio)", "预热-平稳-衰减（decay_ratio）")},
        label_en="Learning-rate scheduler", label_zh="学习率调节器",
        help_en="How the learning rate changes during training (after warmup_steps of linear warmup).",
        help_zh="调整学习率的策略，如预热、线性下降或余弦退火。",
        recommended_en="warmup plus linear decay, or cosine annealing, depending on the task",
        recommended_zh="预热加线性衰减，或余弦退火。根据训练情况和目标任务选择",
    )
    lora_rank: int | None = _f(
        section=2, kind="int", ge=1, used_with=LORA,
        default_en="empty; with lora: 8", default_zh="留空；LoRA时为8",
        label_en="LoRA rank", label_zh="LoRA秩",
        help_en="The rank of the low-rank decomposition: it sets how many parameters are learned. Higher ranks "
                "learn more parameters, for complex tasks. " + _LORA_ONLY_EN,
        help_zh="LoRA 秩表示用于低秩分解的秩值，它决定了学习的参数量。较高的秩值会增加参数量，通常在训练复杂模型时使用。"
                + _LORA_ONLY_ZH,
        recommended_en="4-16, depending on model size and task complexity",
        recommended_zh="4-16，视模型大小和任务复杂度而定",
    )
    lora_alpha: float | None = _f(
        section=2, kind="float", gt=0, used_with=LORA,
        default_en="empty; with lora: 16", default_zh="留空；LoRA时为16",
        label_en="LoRA alpha", label_zh="LoRA缩放系数",
        help_en="Scales the LoRA output (by alpha / rank): higher values give LoRA more influence. "
                + _LORA_ONLY_EN,
        help_zh="缩放系数用于放大或缩小LoRA的输出，在微调过程中可以调整其影响力。较高的缩放系数会使LoRA的贡献更大。"
                + _LORA_ONLY_ZH,
        recommended_en="8-32; 16 is the usual default", recommended_zh="8-32，通常使用16作为默认值，并根据实验结果调整",
    )
    lora_dropout: float | None = _f(
        section=2, kind="float", ge=0, lt=1, used_with=LORA,
        default_en="empty; with lora: 0.1", default_zh="留空；LoRA时为0.1",
        label_en="LoRA dropout", label_zh="LoRA随机丢弃",
        help_en="Dropout on the LoRA layers' input during training, against overfitting. " + _LORA_ONLY_EN,
        help_zh="LoRA随机丢弃用于在训练过程中随机丢弃部分LoRA层的输出，以防止过拟合并增强模型的泛化能力。" + _LORA_ONLY_ZH,
        recommended_en="0.1-0.3, depending on overfitting and dataset size",
        recommended_zh="0.1-0.3，视过拟合程度和数据集规模而定",
    )
    # The platform's original form describes this field differently (and recommends 0.5-1.0, which would make B
    # learn slower than A); this help text says what LoRA+ and PEFT really do with it.
    loraplus_lr_ratio: float | None = _f(
        section=2, kind="float", gt=0, used_with=LORA,
        default_en="empty: off", default_zh="留空：不启用",
        label_en="LoRA+ learning-rate ratio", label_zh="LoRA学习率比例",
        help_en="LoRA+: the learning rate of LoRA's B matrices is this many times that of the A matrices "
                "(A trains at learning_rate). The LoRA+ paper's typical value is 16; a value below 1 would make "
                "B learn slower than A. Empty: off (A and B share learning_rate). " + _LORA_ONLY_EN,
        help_zh="LoRA+：LoRA中B矩阵的学习率是A矩阵学习率的多少倍（A矩阵使用“学习率”）。LoRA+论文的常用值为16；"
                "小于1会让B矩阵学得比A矩阵更慢。留空：不启用（A、B矩阵使用相同的学习率）。" + _LORA_ONLY_ZH,
        recommended_en="empty, or about 16 (the LoRA+ paper)", recommended_zh="留空，或16左右（LoRA+论文）",
    )

    # -- section 3: advanced configuration (高级配置) --
    quantization_bit: str = _f(
        "none", section=3, kind="choice", choices=("none", "4", "8"),
        choice_labels={"none": ("none", "不量化"), "4": ("4-bit (QLoRA)", "4位（QLoRA）"),
                       "8": ("8-bit (QLoRA)", "8位（QLoRA）")},
        label_en="Quantization bits", label_zh="量化等级",
        help_en="Quantize the frozen base weights to 4 or 8 bits to save memory (QLoRA): only with "
                "finetuning_method lora.",
        help_zh="量化等级指模型参数的量化精度，可以选择4位或8位（4或8）来减少模型的计算量和内存占用。选择none则不进行量化。"
                "仅用于LoRA微调方法（QLoRA）。",
        recommended_en="none, 4 or 8, by the model quality needed and the compute available",
        recommended_zh="none、4或8，根据模型性能要求和计算资源选择",
    )
    quantization_method: str = _f(
        "bnb", section=3, kind="choice", choices=("bnb", "hqq", "eetq"),
        choice_labels={"bnb": ("bitsandbytes", "bnb（Bits-and-Bytes）"), "hqq": ("HQQ (Half-Quadratic Quantization)", "hqq"),
                       "eetq": ("EETQ (8-bit, CUDA)", "eetq（仅8位，需CUDA）")},
        label_en="Quantization method", label_zh="量化方法",
        help_en="The quantization algorithm: bnb (bitsandbytes; also runs on the CPU), hqq, or eetq (8-bit only; "
                "needs CUDA and its kernels available without a model hub). With DeepSpeed ZeRO-3 only 4-bit bnb "
                "works.",
        help_zh="量化方法指定了使用哪种算法进行模型的量化。常见方法包括bnb（Bits-and-Bytes，也可在CPU上运行），"
                "hqq（Half-Quadratic Quantization），和eetq（仅8位，需要CUDA及其内核）。根据任务要求和实验结果选择。"
                "与DeepSpeed ZeRO-3同用时只支持4位bnb。",
    )
    rope_scaling: str = _f(
        "none", section=3, kind="choice", choices=("none", "linear", "dynamic", "yarn", "llama3"),
        choice_labels={"none": ("none (no scaling)", "不缩放"), "linear": ("linear", "linear（线性插值）"),
                       "dynamic": ("dynamic (dynamic NTK)", "dynamic（动态NTK）"), "yarn": ("YaRN", "yarn（YaRN）"),
                       "llama3": ("llama3 (Llama 3.1's)", "llama3（Llama 3.1的方式）")},
        label_en="RoPE scaling", label_zh="RoPE插值方式",
        help_en="Stretches the rotary position embeddings so the model takes examples longer than its context: "
                "factor = ceil(cutoff_len / the model's context length). Skipped (with a warning) when "
                "cutoff_len fits.",
        help_zh="RoPE（旋转位置编码）插值方式用于处理旋转位置编码的不同实现方案，影响模型对位置信息的处理。"
                "缩放倍数 = ceil(截断长度 / 模型的上下文长度)；截断长度不超过上下文长度时不做缩放（并给出提示）。",
    )
    booster: str = _f(
        "auto", section=3, kind="choice", choices=("auto", "none", "flash_attention_2", "unsloth", "liger_kernel"),
        choice_labels={"auto": ("auto (the fastest attention available)", "auto（可用的最快注意力实现）"),
                       "none": ("none (eager attention)", "无（eager注意力）"),
                       "flash_attention_2": ("FlashAttention-2", "FlashAttention-2"),
                       "unsloth": ("Unsloth", "Unsloth"), "liger_kernel": ("Liger kernels", "Liger 内核")},
        label_en="Booster", label_zh="加速方式",
        help_en="auto: the flash-attn package where it is installed and the GPU supports it, else PyTorch SDPA "
                "(whose flash kernel serves fp16/bf16 on CUDA). flash_attention_2 needs fp16/bf16 on a CUDA GPU; "
                "unsloth needs exactly one GPU in total and no ZeRO-3, and is refused by validate while airtune's "
                "training image lacks it; liger_kernel needs a CUDA GPU.",
        help_zh="加速方式指使用的模型加速技术，以提高训练和推理速度。unsloth和flash_attention_2是常用的加速方法。"
                "根据硬件支持情况和加速效果选择，同时需要注意使用的模型是否适用以上的加速模式。"
                "auto：已安装flash-attn且GPU支持时用它，否则用PyTorch SDPA。flash_attention_2需要CUDA GPU上的fp16/bf16；"
                "unsloth只能用于总共一张GPU且不能与ZeRO-3同用；airtune的训练镜像未包含unsloth，校验时会拒绝。",
    )
    distributed: str = _f(
        "auto", section=3, kind="choice", choices=("auto", "ddp", "zero2", "zero3", "zero3_offload"),
        choice_labels={"auto": ("auto (ddp for lora/freeze, zero3 for full on >1 GPU)", "auto（lora/freeze用ddp，多卡全参数用zero3）"),
                       "ddp": ("DDP (each GPU holds the whole model)", "DDP（每张卡持有完整模型）"),
                       "zero2": ("DeepSpeed ZeRO-2", "DeepSpeed ZeRO-2"), "zero3": ("DeepSpeed ZeRO-3", "DeepSpeed ZeRO-3"),
                       "zero3_offload": ("DeepSpeed ZeRO-3 with CPU offload", "DeepSpeed ZeRO-3（卸载到CPU）")},
        label_en="Distributed strategy", label_zh="分布式策略（DeepSpeed）",
        help_en="How training is spread over GPUs. auto: ddp for lora and freeze, zero3 for full on more than one "
                "GPU. ZeRO stages shard optimizer states (zero2) and also the weights (zero3) across the GPUs.",
        help_zh="多卡训练的方式。auto：lora与freeze用ddp，全参数微调在多于一张卡时用zero3。"
                "ZeRO-2切分优化器状态，ZeRO-3还切分模型权重。",
    )
    logging_steps: int = _f(
        10, section=3, kind="int", ge=1,
        label_en="Logging interval (steps)", label_zh="日志间隔",
        help_en="Training metrics are logged every this many steps.",
        help_zh="日志间隔指在训练过程中记录日志的频率，通常以训练步数为单位。适当的日志间隔可以帮助监控训练进度和模型性能。",
        recommended_en="10-1000 steps, by dataset size", recommended_zh="10-1000步，视数据集大小和训练需求而定",
    )
    save_steps: int = _f(
        1000, section=3, kind="int", ge=1,
        label_en="Save interval (steps)", label_zh="保存间隔",
        help_en="A checkpoint is saved every this many steps (the final weights are always saved). Shorter "
                "intervals lose less when training stops midway.",
        help_zh="保存间隔指模型权重的保存频率（以训练步数为单位；最终权重总会保存）。较短的保存间隔可以减少训练中途崩溃时的损失。",
        recommended_en="1000-5000 steps, by training time and dataset size",
        recommended_zh="1000-5000步，视训练时长和数据集大小而定",
    )
    warmup_steps: int = _f(
        0, section=3, kind="int", ge=0,
        label_en="Warmup steps", label_zh="预热步数",
        help_en="Steps over which the learning rate rises linearly at the start, against overly large early "
                "updates. More warmup steps than the job has in total gives a warning.",
        help_zh="预热步数是在正式训练前的学习率线性增加阶段，通常用于避免模型在初期出现过大的梯度更新。"
                "预热步数超过任务总步数时会给出提示。",
        recommended_en="500-2000 steps, depending on the total steps and the scheduler",
        recommended_zh="500-2000步，视训练总步数和学习率策略而定",
    )
    neftune_noise_alpha: float | None = _f(
        section=3, kind="float", ge=0,
        default_en="empty: off", default_zh="留空：不启用",
        label_en="NEFTune noise alpha", label_zh="NEFTune噪声参数",
        help_en="NEFTune: the scale of the noise added to the embeddings during training, for better "
                "generalisation. Empty: off.",
        help_zh="NEFTune噪声参数控制在NEFTune方法中引入的噪声水平，以增强模型的泛化能力。留空：不启用。",
        recommended_en="5, depending on the task", recommended_zh="5，视具体任务和噪声敏感性而定",
    )
    optimizer: str = _f(
        "adamw_torch", section=3, kind="choice",
        choices=("adamw_torch", "adamw_torch_fused", "adamw_8bit", "adafactor", "sgd", "lion_8bit"),
        choice_labels={"adamw_torch": ("AdamW", "AdamW"), "adamw_torch_fused": ("AdamW (fused)", "AdamW（融合实现）"),
                       "adamw_8bit": ("AdamW 8-bit (bitsandbytes)", "8位AdamW（bitsandbytes）"),
                       "adafactor": ("Adafactor", "Adafactor"), "sgd": ("SGD", "SGD"),
                       "lion_8bit": ("Lion 8-bit (bitsandbytes)", "8位Lion（bitsandbytes）")},
        label_en="Optimizer", label_zh="优化器",
        help_en="The algorithm that updates the parameters. The 8-bit ones come from bitsandbytes (CPU or GPU) "
                "and keep smaller optimizer states.",
        help_zh="优化器是指用于更新模型参数的算法。常见的优化器包括Adam、SGD、Adafactor等，选择合适的优化器对训练效率和效果至关重要。"
                "8位优化器来自bitsandbytes（CPU或GPU均可）。",
        recommended_en="AdamW", recommended_zh="AdamW",
    )
    seed: int = _f(
        42, section=3, kind="int", ge=0, le=SEED_MAX,
        label_en="Random seed", label_zh="随机种子",
        help_en="Seeds data shuffling, the split and weight initialisation, so a job can be repeated.",
        help_zh="随机种子：决定数据打乱、验证集划分和权重初始化，使任务可以复现。",
    )
    extra_args: dict = _f(
        {}, section=3, kind="object",
        label_en="Extra arguments", label_zh="额外参数",
        help_en="Further TrainingArguments / TRL config keys, as an object. Unknown keys are refused, and so are "
                "keys airtune sets itself (output and logging folders, report_to, deepspeed, ranks, hub pushing) "
                "and keys a field of this form sets.",
        help_zh="额外参数：更多的TrainingArguments / TRL配置项（JSON对象）。未知的键、airtune自行设置的键"
                "（输出和日志目录、report_to、deepspeed、rank、推送到hub）以及本表单已有字段对应的键都会被拒绝。",
    )

    # -- section 4: further options (更多选项) --
    lora_target: Any = _f(
        section=4, kind="target", used_with=LORA,
        default_en="all (every linear layer), or the catalog's list for the model",
        default_zh="all（所有线性层），或模型目录中为该模型给出的列表",
        label_en="LoRA target modules", label_zh="LoRA作用模块",
        help_en="The modules LoRA adapts: all (every linear layer but the output layer), or module names "
                "(a list, or separated by commas). " + _LORA_ONLY_EN,
        help_zh="LoRA作用的模块：all（除输出层外的所有线性层），或模块名称列表（可用逗号分隔）。" + _LORA_ONLY_ZH,
    )
    use_dora: bool = _f(
        False, section=4, kind="bool", used_with=LORA,
        label_en="Use DoRA", label_zh="使用DoRA",
        help_en="Weight-decomposed LoRA (DoRA): learns magnitude and direction separately. " + _LORA_ONLY_EN,
        help_zh="使用DoRA（权重分解的LoRA），分别学习权重的大小和方向。" + _LORA_ONLY_ZH,
    )
    use_rslora: bool = _f(
        False, section=4, kind="bool", used_with=LORA,
        label_en="Use rsLoRA", label_zh="使用rsLoRA",
        help_en="Rank-stabilised LoRA: scales by alpha / sqrt(rank) instead of alpha / rank. " + _LORA_ONLY_EN,
        help_zh="使用rsLoRA（秩稳定的LoRA）：缩放系数为 alpha / sqrt(秩)，而非 alpha / 秩。" + _LORA_ONLY_ZH,
    )
    freeze_trainable_layers: int | None = _f(
        section=4, kind="int", ge=1, used_with={"finetuning_method": ("freeze",)},
        default_en="empty; with freeze: 2", default_zh="留空；freeze时为2",
        label_en="Trainable layers (freeze)", label_zh="可训练层数（冻结微调）",
        help_en="With finetuning_method freeze: the last this many layers train, the rest stays frozen.",
        help_zh="仅用于freeze微调方法：训练最后这几层，其余层冻结。",
    )
    pref_loss: str | None = _f(
        section=4, kind="choice", choices=("sigmoid", "ipo", "hinge", "orpo", "simpo"),
        used_with={"stage": ("dpo",)},
        default_en="empty; with dpo: sigmoid", default_zh="留空；dpo时为sigmoid",
        label_en="Preference loss", label_zh="偏好损失函数",
        help_en="Stage dpo only: the preference loss. sigmoid is DPO's own; orpo and simpo train through TRL's "
                "own trainers for them.",
        help_zh="仅用于dpo阶段：偏好损失函数。sigmoid为DPO本身的损失；orpo、simpo使用TRL对应的训练器。",
    )
    pref_beta: float | None = _f(
        section=4, kind="float", gt=0, used_with={"stage": ("dpo", "kto")},
        default_en="empty; with dpo or kto: 0.1", default_zh="留空；dpo或kto时为0.1",
        label_en="Preference beta", label_zh="偏好beta参数",
        help_en="Stages dpo and kto: beta, how far the model may move from the reference model (higher: "
                "less far).",
        help_zh="仅用于dpo和kto阶段：beta参数，控制模型偏离参考模型的程度（越大偏离越少）。",
    )
    packing: bool | None = _f(
        section=4, kind="bool", used_with={"stage": ("pt", "sft")},
        default_en="empty: true for pt, false for sft", default_zh="留空：pt为true，sft为false",
        label_en="Packing", label_zh="序列打包",
        help_en="Stages pt and sft: several examples share one cutoff_len-long row (no attention across "
                "examples), so less compute is spent on padding.",
        help_zh="仅用于pt和sft阶段：多个样本拼接到同一条截断长度的序列中（样本之间互不可见），减少填充带来的计算浪费。",
    )
    train_on_prompt: bool = _f(
        False, section=4, kind="bool", used_with={"stage": ("sft",)},
        label_en="Train on prompt", label_zh="在提示词上计算损失",
        help_en="Stage sft: compute the loss on the prompt too, not only on the answers.",
        help_zh="仅用于sft阶段：同时在提示词部分计算损失，而不只在回答上计算。",
    )
    mask_history: bool = _f(
        False, section=4, kind="bool", used_with={"stage": ("sft",)},
        label_en="Mask history", label_zh="屏蔽历史对话",
        help_en="Stage sft: learn only from the last turn of a conversation, not from earlier answers.",
        help_zh="仅用于sft阶段：只在对话的最后一轮上计算损失，不学习历史轮次的回答。",
    )
    skip_bad_rows: bool = _f(
        False, section=4, kind="bool",
        label_en="Skip bad rows", label_zh="跳过错误数据行",
        help_en="Skip dataset rows that fail their checks and report how many, instead of failing the job.",
        help_zh="跳过未通过检查的数据行并报告数量，而不是让任务失败。",
    )
    save_total_limit: int = _f(
        3, section=4, kind="int", ge=1,
        label_en="Checkpoints kept", label_zh="最多保留检查点数",
        help_en="The most checkpoints kept on disk; older ones are deleted (the best one is kept).",
        help_zh="磁盘上最多保留的检查点个数，较早的会被删除（最优的检查点会保留）。",
    )
    export_merged: bool = _f(
        False, section=4, kind="bool", used_with=LORA,
        label_en="Export merged model", label_zh="导出合并后的模型",
        help_en="Also save the LoRA adapter merged into the base weights. Only with lora, without quantization.",
        help_zh="同时保存将LoRA适配器合并进基础权重后的完整模型。仅用于LoRA且不量化时。",
    )
    min_lr_rate: float | None = _f(
        section=4, kind="float", gt=0, lt=1, used_with={"lr_scheduler_type": ("cosine_with_min_lr",)},
        default_en="empty; with cosine_with_min_lr: 0.1", default_zh="留空；cosine_with_min_lr时为0.1",
        label_en="Minimum learning-rate share", label_zh="最小学习率比例",
        help_en="With lr_scheduler_type cosine_with_min_lr: the learning rate decays to this share of "
                "learning_rate.",
        help_zh="仅用于cosine_with_min_lr学习率调节器：学习率最终衰减到“学习率”的这个比例。",
    )
    decay_ratio: float | None = _f(
        section=4, kind="float", gt=0, lt=1, used_with={"lr_scheduler_type": ("warmup_stable_decay",)},
        default_en="empty; with warmup_stable_decay: 0.1", default_zh="留空；warmup_stable_decay时为0.1",
        label_en="Decay share", label_zh="衰减阶段比例",
        help_en="With lr_scheduler_type warmup_stable_decay: the share of all steps spent decaying.",
        help_zh="仅用于warmup_stable_decay学习率调节器：衰减阶段占总步数的比例。",
    )

    # -- section 5: evaluation and promotion (评估与模型晋级) --
    eval_dataset: list[str] | None = _f(
        section=5, kind="names", catalog="datasets",
        default_en="empty (the validation split)", default_zh="留空（使用验证集）",
        label_en="Evaluation dataset", label_zh="评估数据集",
        help_en="Catalog datasets used only for evaluation, in place of a validation split cut from the training "
                "data (leave val_size at 0). Their kind must fit the stage.",
        help_zh="仅用于评估的数据集（替代从训练数据中切分的验证集，此时验证集比例请保持0），数据类型须与训练阶段匹配。",
    )
    eval_max_samples: int = _f(
        50, section=5, kind="int", ge=0, le=100_000,
        label_en="Evaluation prompts", label_zh="评估样本数",
        help_en="How many held-out prompts the evaluate task answers with the model the job started from and with "
                "the tuned model, scored against their references (ROUGE-1/2/L, BLEU-4). 0: no generation.",
        help_zh="评估任务用原始模型和微调后模型分别回答的验证样本数，并与参考答案比较打分（ROUGE-1/2/L、BLEU-4）。0：不生成。",
    )
    eval_benchmarks: list[str] | None = _f(
        section=5, kind="names", catalog="benchmarks",
        default_en="empty (none)", default_zh="留空（不评测）",
        label_en="Benchmarks", label_zh="评测基准",
        help_en="Multiple-choice benchmarks of the catalog (MMLU / C-Eval / CMMLU layout) scored before and after: "
                "accuracy per subject and overall.",
        help_zh="目录中的选择题评测基准（MMLU / C-Eval / CMMLU 格式），微调前后分别评测：各科目及总体准确率。",
    )
    promote: str | None = _f(
        section=5, kind="choice", choices=("never", "auto", "approve"),
        choice_labels={"auto": ("auto: when better than the champion", "auto：优于当前版本时自动晋级"),
                       "approve": ("approve: a person decides", "approve：人工审批"),
                       "never": ("never: register only", "never：只注册，不晋级")},
        default_en="empty; never for a one-off job, auto in a retraining job file with held-out data (val_size > 0 or "
                   "eval_dataset)",
        default_zh="留空；单次任务为never；定时重训任务有验证数据（验证集比例>0或评估数据集）时为auto",
        label_en="Promotion", label_zh="模型晋级",
        help_en="Whether the new version becomes the registered model's champion (the version in use). auto: when it "
                "beats the current champion on promote_metric (a tie keeps the champion); approve: the run waits "
                "for a person to approve or reject, with the comparison in front of them; never: register only.",
        help_zh="新版本是否成为注册模型的 champion（正在使用的版本）。auto：在晋级指标上优于当前 champion 时晋级"
                "（持平则保留原版本）；approve：任务等待人工审批（附对比结果）；never：只注册。",
    )
    promote_metric: str = _f(
        "eval_loss", section=5, kind="str", pattern=PROMOTE_METRIC_PATTERN, max_length=128,
        label_en="Promotion metric", label_zh="晋级指标",
        help_en="What promotion compares: eval_loss (lower is better), rouge-1, rouge-2, rouge-l, bleu-4, "
                "reward_accuracy (stages rm and dpo), or benchmark:<name> (a benchmark of eval_benchmarks).",
        help_zh="晋级时比较的指标：eval_loss（越低越好）、rouge-1、rouge-2、rouge-l、bleu-4、reward_accuracy"
                "（rm、dpo 阶段），或 benchmark:<名称>（须在评测基准中）。",
    )
    promote_timeout_hours: float | None = _f(
        section=5, kind="float", gt=0, le=24 * 30, used_with={"promote": ("approve",)},
        default_en="empty; with approve: 24", default_zh="留空；approve时为24",
        label_en="Approval timeout (hours)", label_zh="审批超时（小时）",
        help_en="With promote approve: hours to wait for an answer; no answer by then counts as a rejection.",
        help_zh="仅用于 approve：等待审批的小时数，超时未答复视为拒绝。",
    )
    notify: list[str] | None = _f(
        section=5, kind="names", pattern=CONN_ID_PATTERN,
        default_en="empty (the location's notify connections, if it names any)",
        default_zh="留空（使用运行位置设置的通知连接，如有）",
        label_en="Notify", label_zh="通知",
        help_en="Airflow connections told when the job succeeds, fails or waits for approval, each of a notifier "
                "provider's type: smtp (e-mail; the recipients are in the connection's extra, {\"to\": [...]}), "
                "apprise (chat services) or http (a webhook: a JSON POST). The message links to the job's page "
                "and carries no secret.",
        help_zh="任务成功、失败或等待审批时通知的 Airflow 连接，类型须为通知组件支持的类型：smtp（邮件，收件人写在连接的 "
                "extra 中：{\"to\": [...]}）、apprise（各类聊天服务）或 http（webhook，发送 JSON POST）。消息附任务页面链接，"
                "不含任何密钥。",
    )

    def to_dict(self) -> dict:
        """Every key, JSON-able (lists for dataset / lora_target, a copy of extra_args)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):
                value = list(value)
            elif isinstance(value, dict):
                value = json.loads(json.dumps(value))
            out[f.name] = value
        return out


# Defaults that depend on the method, stage or scheduler: what `resolve` fills in when the field is
# empty and the option applies (docs/form.md).
APPLIED_DEFAULTS = {
    "lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.1, "freeze_trainable_layers": 2,
    "pref_loss": "sigmoid", "pref_beta": 0.1, "min_lr_rate": 0.1, "decay_ratio": 0.1,
    "promote_timeout_hours": 24.0,
}


# -- the field table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldInfo:
    """One row of the form: what the form, the docs and the errors read."""

    name: str
    section: int
    kind: str
    default: Any
    required: bool
    choices: tuple
    choice_labels: dict
    catalog: str | None
    gt: float | None
    ge: float | None
    lt: float | None
    le: float | None
    pattern: str | None
    max_length: int | None
    used_with: dict
    label_en: str
    label_zh: str
    help_en: str
    help_zh: str
    recommended_en: str
    recommended_zh: str
    default_en: str
    default_zh: str

    def label(self, lang: str = "en") -> str:
        return self.label_zh if lang == "zh" else self.label_en

    def limits_text(self, lang: str = "en") -> str:
        """The numeric limits: '> 0 and <= 1'."""
        parts = []
        for op, bound in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le)):
            if bound is not None:
                parts.append(f"{op} {_num(bound)}")
        return (" 且 " if lang == "zh" else " and ").join(parts)

    def accepted(self, lang: str = "en") -> str:
        """What this field accepts, in words (the error messages' and the help texts' second half)."""
        zh = lang == "zh"
        empty = ("，或留空" if zh else ", or empty") if not self.required else ""
        if self.kind in ("int", "float"):
            word = ("整数" if self.kind == "int" else "数值") if zh else ("an integer" if self.kind == "int" else "a number")
            limits = self.limits_text(lang)
            return f"{word} {limits}{empty}" if limits else f"{word}{empty}"
        if self.kind == "choice":
            aliases = CHOICE_ALIASES.get(self.name, {})
            parts = []
            for choice in self.choices:
                texts = [a for a, c in aliases.items() if c == choice and isinstance(a, str)]
                numbers = [str(a) for a, c in aliases.items() if c == choice and not isinstance(a, str)]
                if texts or numbers:
                    spelled = texts + [("数字 " if zh else "the number ") + n for n in numbers]
                    parts.append(f"{choice} 也可写作 {' 或 '.join(spelled)}" if zh else f"{choice} also as {' or '.join(spelled)}")
            also = ((f"（{'；'.join(parts)}）" if zh else f" ({'; '.join(parts)})") if parts else "")
            return (("以下之一：" if zh else "one of: ") + ", ".join(self.choices)) + also + empty
        if self.kind == "bool":
            return "true 或 false" if zh else "true or false"
        if self.kind == "names" and self.pattern == CONN_ID_PATTERN:
            return ("一个或多个 Airflow 连接 ID（字母、数字、“_”、“.”、“-”；列表，或以逗号分隔）" if zh else
                    "one or more Airflow connection ids (letters, digits, '_', '.' and '-'; a list, or separated "
                    "by commas)") + empty
        if self.kind == "names":
            return "一个或多个数据集名称（列表，或以逗号分隔）" if zh else "one or more dataset names (a list, or separated by commas)"
        if self.kind == "target":
            return ("all，或模块名称列表" if zh else "all, or a list of module names") + empty
        if self.kind == "object":
            return "JSON对象" if zh else "an object (mapping) of trainer arguments"
        if self.pattern in (DNS_LABEL_PATTERN, OPTIONAL_DNS_LABEL_PATTERN):
            text = ("小写字母、数字和“-”，以字母或数字开头及结尾，最多63个字符" if zh else
                    "lower-case letters, digits and '-', starting and ending with a letter or digit, "
                    "at most 63 characters")
            return text + empty
        return ("文本" if zh else "text") + empty

    def help(self, lang: str = "en") -> str:
        """Help text for the form and the docs: what it does, the recommended range, the default, the limits."""
        zh = lang == "zh"
        parts = [self.help_zh if zh else self.help_en]
        rec = self.recommended_zh if zh else self.recommended_en
        if rec:
            parts.append(f"推荐取值：{rec}。" if zh else f"Recommended: {rec}.")
        default_text = self.default_zh if zh else self.default_en
        if not default_text and not self.required and self.default not in (None, {}, []):
            default_text = _default_words(self.default)
        if default_text:
            parts.append(f"默认：{default_text}。" if zh else f"Default: {default_text}.")
        if self.kind in ("int", "float") and self.limits_text():
            parts.append(f"允许范围：{self.accepted('zh')}。" if zh else f"Accepted: {self.accepted('en')}.")
        return ("" if zh else " ").join(p.strip() for p in parts if p)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _default_words(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field_info(f: dataclasses.Field) -> FieldInfo:
    m = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return FieldInfo(name=f.name, default=None if m["required"] else default,
                     **{k: m[k] for k in ("section", "kind", "required", "choices", "choice_labels", "catalog", "gt",
                                          "ge", "lt", "le", "pattern", "max_length", "used_with", "label_en",
                                          "label_zh", "help_en", "help_zh", "recommended_en", "recommended_zh",
                                          "default_en", "default_zh")})


FIELDS: tuple[FieldInfo, ...] = tuple(_field_info(f) for f in dataclasses.fields(JobSpec))
FIELD_BY_NAME: dict[str, FieldInfo] = {f.name: f for f in FIELDS}


def field_info(name: str) -> FieldInfo:
    return FIELD_BY_NAME[name]


# -- the one grammar of values --------------------------------------------------------------------

# The one grammar of values (docs/form.md, "How values are checked"): `param_schema` (what Airflow
# checks when a run is triggered, from the form or REST) and `_convert` (what `airtune validate`, a
# YAML file and the validate task check) accept exactly the same values; tests/test_grammar.py
# generates values for every field and holds them to it. A value is written as the form shows it:
# numbers as JSON/YAML numbers (the job-file loader reads `1e-4` as one), booleans as true/false,
# choices as listed (lower case, no spaces), names as the catalog spells them. The only other
# spellings are these aliases of a choice, each meaning one of its values.
CHOICE_ALIASES: dict[str, dict] = {
    # LLaMA-Factory writes quantization_bit as the integers 4 / 8; the platform's original form as int4 / int8.
    "quantization_bit": {4: "4", 8: "8", "int4": "4", "int8": "8"},
}
_FLOAT_MAX = 1.7976931348623157e308  # sys.float_info.max: a larger number is no float (inf, or an int beyond it)


def _pattern(f: FieldInfo) -> str | None:
    """The field's text pattern; a catalog name is one word (the catalog check itself is resolve's)."""
    return f.pattern or (NAME_PATTERN if f.kind == "str" and f.catalog else None)


def _names_text_pattern(f: FieldInfo) -> str:
    """A names field as text: its items' token (a connection id for notify, a catalog name otherwise)."""
    return names_text_pattern(CONN_ID_TOKEN) if f.pattern == CONN_ID_PATTERN else NAMES_TEXT_PATTERN


