"""validate's messages in Chinese, for the create wizard's errors at their fields.

airtune.spec and resolve.py write every message in English once: the CLI, the validate task's log, REST
answers and the tests read them byte for byte, so they stay as they are. The wizard shows a field's
errors in the page's language; on a Chinese page `message_zh` turns a message into Chinese:

- the field's own phrases by exact text (`FieldInfo.accepted`, `limits_text`: the table already has
  them in Chinese);
- the rest by one pattern per message (RULES, in the order tried; each matches a whole message), with
  the fields a message names written as their Chinese labels from the table (the seed's terms).

A message no pattern matches is answered None: the page shows it in English, with what the field
accepts in Chinese beside it. tests/test_webapp_rule_messages.py holds every single-field and
cross-field rule of airtune.spec (formdoc's examples, the trigger form's bad values) and resolve's common
ones to a translation, so a new or reworded message without one fails there.
"""

from __future__ import annotations

import re
from typing import Callable

from airtune.spec import FIELD_BY_NAME, FieldInfo

_LABEL = re.compile(r"«([a-z_0-9]+)»")


def _label(name: str) -> str:
    f = FIELD_BY_NAME.get(name)
    return f.label_zh if f else name


def _or(text: str) -> str:
    return text.replace(" or ", " 或 ")


def _accepted(text: str, f: FieldInfo | None) -> str:
    """A field's accepted values / limits, in the table's Chinese where the text is the table's English."""
    if f is not None:
        if text == f.accepted("en"):
            return f.accepted("zh")
        if text == f.limits_text("en"):
            return f.limits_text("zh")
    return text


def _reason(text: str) -> str:
    """gpus_per_node's "at most N: <reason>"."""
    for pattern, zh in ((r"gpu_type (\S+) trains on the CPU; pick gpu_type auto to use this machine's GPUs",
                         r"«gpu_type» \1 在CPU上训练；要使用本机的GPU请选择 auto"),
                        (r"this machine has (\d+) GPUs?", r"本机有 \1 张GPU"),
                        (r"the (\S+) nodes of (\S+) have (\d+) GPUs?", r"\2 的 \1 节点有 \3 张GPU")):
        if re.fullmatch(pattern, text):
            return re.sub(pattern, zh, text)
    return text


def _place(text: str) -> str:
    if text == "on this machine":
        return "在本机上"
    m = re.fullmatch(r"for (\S+) at (\S+) \(configs/locations\.yaml declares no eetq_kernels\)", text)
    return f"对 {m[2]} 的 {m[1]}（该部署位置未声明 eetq_kernels）" if m else text


# airtune.stages.KIND_WORDS in the help texts' Chinese (dataset's 训练数据集 help)
_KINDS_ZH = {"instructions or conversations": "指令或对话数据", "plain text": "纯文本", "preference pairs": "偏好数据",
             "examples labelled desirable/undesirable": "带好/坏标签的样本"}


def _kinds(text: str) -> str:
    for en, zh in _KINDS_ZH.items():
        text = text.replace(en, zh)
    return text.replace(" or ", "或")


_WHAT = {"dataset": "数据集", "benchmark": "评测基准", "connection": "连接"}
_EARLIER = {"a parent is a finished pt, sft, dpo, kto or grpo job with the same base_model":
            "«parent_job»须为«base_model»相同、已完成的 pt、sft、dpo、kto 或 grpo 任务",
            "reward_model names a finished rm job": "«reward_model»须为一个已完成的 rm 任务"}
_MODULES_ZH = "all，或模块名称，如 q_proj, v_proj（字母、数字、“_”和“.”）"
_MODULES_EN = re.escape("all, or module names such as q_proj, v_proj (letters, digits, '_' and '.')")
_MEMORY_FIX_ROWS = ("use a smaller per_device_train_batch_size or cutoff_len, lora, quantization_bit 4, or more GPUs "
                    "with distributed zero3")

# (pattern of the whole English message, Chinese: a str.format template of the pattern's groups or a
# function of the match and the field). Group `acc`: the field's accepted values; «name»: a label.
Rule = tuple[str, "str | Callable[[re.Match, FieldInfo | None], str]"]
RULES: list[Rule] = [
    # -- spec: one field's own rules (_convert and its helpers) ----------------------------------------------
    (r"must be (?P<acc>.+), not true/false", "须为{acc}，不能是 true/false"),
    (r"must be (?P<acc>.+); (?P<v>.+) is text, not a number: write it without quotes "
     r"\(YAML and JSON read (?P<n>.+) as a number\)", "须为{acc}；{v} 是文本而不是数字：请去掉引号（YAML 和 JSON 会把 {n} 读作数字）"),
    (r"must be (?P<acc>.+); (?P<v>.+) is text, not a number: write it without quotes", "须为{acc}；{v} 是文本而不是数字：请去掉引号"),
    (r"must be true or false; (?P<v>.+) is text: write (?P<w>true|false) without quotes",
     "须为 true 或 false；{v} 是文本：请写作不带引号的 {w}"),
    (r"must be true or false, not the number (?P<n>.+)", "须为 true 或 false，不能是数字 {n}"),
    (r"ppo is not offered: TRL, which airtune trains with, no longer has a PPO trainer; use grpo \(online RL against "
     r"a reward model, with reward_model naming a finished rm job\)",
     "不提供ppo：airtune 训练所用的 TRL 已不再提供 PPO 训练器；请使用 grpo（基于奖励模型的在线强化学习，«reward_model»填写一个已完成的 rm 任务）"),
    (r"must be (?P<acc>.+); write (?P<t>.+) \(lower case, no spaces around it\)", "须为{acc}；请写作 {t}（小写，前后不带空格）"),
    (r"must be (?P<acc>.+); each (?P<what>\w+) name (?:as the catalog spells it|as Airflow's connections list spells "
     r"it)(?:, without spaces around it \((?P<s>.+)\))?",
     lambda m, f: (f"须为{_accepted(m['acc'], f)}；每个{_WHAT.get(m['what'], m['what'])}名称须与列表中的写法一致"
                   + (f"，前后不带空格（{m['s']}）" if m["s"] else ""))),
    (r"each (?P<what>\w+) at most once \((?P<d>.+) given twice\)",
     lambda m, f: f"每个{_WHAT.get(m['what'], m['what'])}只能出现一次（{m['d']} 重复）"),
    (r"either all \(alone, as text: lora_target: all\), or a list of module names, not both",
     "要么只写 all（单独一项，作为文本：lora_target: all），要么写模块名称列表，不能同时使用"),
    (r"either all, or a list of module names, not both", "要么写 all，要么写模块名称列表，不能同时使用"),
    (_MODULES_EN + r"; not a module name: (?P<bad>.+)", _MODULES_ZH + "；不是模块名称：{bad}"),
    (_MODULES_EN + r"; write all in lower case", _MODULES_ZH + "；all 请用小写"),
    (_MODULES_EN, _MODULES_ZH),
    (r"it was read as (?P<read>true/false|a number), and (?P<f>\w+) is text: quote it \((?P<q>.+) in YAML\); "
     r"accepted: (?P<acc>.+)",
     lambda m, f: (f"它被读作{'true/false' if m['read'] == 'true/false' else '数字'}，而«{m['f']}»是文本：请加引号"
                   f"（YAML 中写作 {m['q']}）；可接受：{_accepted(m['acc'], f)}")),
    (r"at most (?P<n>\d+) characters \(this one has (?P<m>\d+)\); accepted: (?P<acc>.+)",
     "最多 {n} 个字符（当前为 {m} 个）；可接受：{acc}"),
    (r"must be (?P<acc>.+), without spaces around it: (?P<v>.+)", "须为{acc}，前后不能有空格：{v}"),
    (r"an object whose keys are trainer argument names", "须为一个对象，其键为训练参数名称"),
    (r"JSON values only \((?P<k>.+) is not\)", "只能是 JSON 值（{k} 不是）"),
    (r"must be (?P<acc>.+); to leave it empty, leave the key out or give no value \(null\), not (?P<what>an empty text|spaces)",
     lambda m, f: (f"须为{_accepted(m['acc'], f)}；要使用默认值请不填（null），而不是"
                   f"{'空文本' if m['what'] == 'an empty text' else '只填空格'}")),
    (r"must be (?P<acc>.+) \(this number is larger than any float\)", "须为{acc}（该数值超出浮点数范围）"),
    (r"must be (?P<acc>.+)", "须为{acc}"),
    (r"required: (?P<acc>.+)", "必填：{acc}"),
    (r"unknown key; (?:did you mean (?P<m>.+)\? )?the accepted keys \(docs/form\.md\): (?P<keys>.+)",
     lambda m, f: "未知的键；" + (f"是否想写 {m['m']}？" if m["m"] else "") + f"可接受的键：{m['keys']}"),
    (r"airtune sets this itself \((?P<why>.+)\); remove it", "此项由 airtune 自行设置（{why}）；请删除"),
    (r"set by the field (?P<o>\w+); use that field instead", lambda m, f: f"由字段«{m['o']}»设置；请改用该字段"),
    # -- spec: rules between fields (_cross_field_errors, _evaluation_errors) ---------------------------------
    (r"used only with (?P<o>\w+) (?P<what>.+) \(this job has (?P=o) (?P<v>.+)\); leave it empty",
     lambda m, f: f"仅用于«{m['o']}»为 {_or(m['what'])} 时（本任务的«{m['o']}»为 {m['v']}）；请留空"),
    (r"none unless finetuning_method is lora \(QLoRA quantizes the frozen base under LoRA adapters\); this job has "
     r"finetuning_method (?P<m>.+)",
     "«finetuning_method»不是 lora 时须为 none（QLoRA 在 LoRA 适配器之下量化冻结的基础权重）；本任务的«finetuning_method»为 {m}"),
    (r"eetq quantizes to 8 bits only: use quantization_bit 8, or bnb or hqq for 4 bits",
     "eetq 只支持 8 位量化：请将«quantization_bit»设为 8，或用 bnb、hqq 做 4 位量化"),
    (r"has no effect without quantization_bit 4 or 8; set quantization_bit or leave quantization_method at bnb",
     "未设置«quantization_bit»（4 或 8）时无效；请设置«quantization_bit»，或将«quantization_method»保持为 bnb"),
    (r"with distributed (?P<d>\S+) only 4-bit bnb quantization works \(this job has (?P<b>\w+)-bit (?P<q>\w+)\); use "
     r"quantization_bit 4 with quantization_method bnb, or distributed zero2/ddp",
     "«distributed»为 {d} 时只支持 4 位 bnb 量化（本任务为 {b} 位 {q}）；请使用«quantization_bit» 4 与«quantization_method» bnb，"
     "或将«distributed»设为 zero2/ddp"),
    (r"not with quantization: a quantized base cannot take the adapter exactly; set quantization_bit none, or leave "
     r"export_merged off", "不能与量化同用：量化后的基础权重无法精确合并适配器；请将«quantization_bit»设为 none，或不启用«export_merged»"),
    (r"unsloth does not work with DeepSpeed ZeRO-3 \(distributed (?P<d>.+)\); use another booster or distributed ddp/zero2",
     "unsloth 不能与 DeepSpeed ZeRO-3 同用（«distributed» {d}）；请换用其他«booster»，或将«distributed»设为 ddp/zero2"),
    (r"required with stage grpo: the name of a finished rm job", "grpo 阶段必填：一个已完成的 rm 任务的名称"),
    (r"either eval_dataset or val_size \(this job has val_size (?P<v>.+)\): held-out data comes from one place; set "
     r"val_size to 0, or leave eval_dataset empty",
     "«eval_dataset»与«val_size»只能二选一（本任务的«val_size»为 {v}）：留出数据只能有一个来源；请将«val_size»设为 0，"
     "或将«eval_dataset»留空"),
    (r"benchmark (?P<n>.+) is not in eval_benchmarks \((?P<l>.+)\); add it there",
     lambda m, f: f"评测基准 {m['n']} 不在«eval_benchmarks»中（{'空' if m['l'] == 'empty' else m['l']}）；请先把它加入«eval_benchmarks»"),
    (r"(?P<m>\S+) is measured for stage (?P<s>.+); this job has stage (?P<t>.+)",
     lambda m, f: f"{m['m']} 只在«stage»为 {_or(m['s'])} 时计算；本任务的«stage»为 {m['t']}"),
    (r"(?P<m>\S+) is measured on held-out data and this job has none: with promote (?P<p>\w+), set val_size > 0 or "
     r"eval_dataset", "{m} 在留出数据上计算，而本任务没有留出数据：«promote»为 {p} 时，请设置«val_size» > 0 或«eval_dataset»"),
    (r"(?P<m>\S+) scores generated answers and eval_max_samples is 0; set eval_max_samples > 0 or promote on eval_loss",
     "{m} 给生成的回答打分，而«eval_max_samples»为 0；请将«eval_max_samples»设为大于 0，或以 eval_loss 作为«promote_metric»"),
    # -- resolve: the catalog, the hardware, earlier jobs ---------------------------------------------------------
    (r"not in the catalog \(configs/\w+\.yaml\); accepted: (?P<l>.+)", "不在目录中；可选：{l}"),
    (r"not in configs/locations\.yaml; accepted: (?P<l>.+)", "不在目录中；可选：{l}"),
    (r"not a template of configs/templates/; accepted: (?P<l>.+)", "不在目录中；可选：{l}"),
    (r"it holds (?P<k>.+) \(kind (?P<kind>\w+)\) but stage (?P<s>\w+) (?P<verb>trains on|evaluates on) (?P<fit>.+); "
     r"datasets that fit: (?P<fits>.+)",
     lambda m, f: (f"它是{_kinds(m['k'])}（类型 {m['kind']}），而 {m['s']} 阶段{'训练' if m['verb'] == 'trains on' else '评估'}"
                   f"需要{_kinds(m['fit'])}；适合的数据集：{'目录中没有' if m['fits'] == 'none in the catalog' else m['fits']}")),
    (r"(?P<m>\S+) is an instruct/chat model trained with template (?P<t>.+): it takes only that one \(or auto\); a base "
     r"model may take any", "{m} 是 instruct/chat 模型，训练时使用模版 {t}：只能使用该模版（或 auto）；base 模型可使用任意模版"),
    (r"the parent job (?P<p>.+) used template (?P<t>.+); continuing from it takes the same template \(or auto\)",
     "父任务 {p} 使用的模版为 {t}；在它之上继续微调须使用相同的模版（或 auto）"),
    (r"location (?P<l>.+) offers: (?P<g>.+)", "部署位置 {l} 提供的«gpu_type»：{g}"),
    (r"0 \(CPU only\) only on location local; (?P<l>\S+) is a Kubernetes location: (?P<a>.+)",
     lambda m, f: f"0（只用CPU）仅限 local；{m['l']} 是 Kubernetes 部署位置：" + re.sub(r"^1 to (\d+)$", r"1 至 \1", m["a"])),
    (r"at most (?P<n>\d+): (?P<r>.+)", lambda m, f: f"最多 {m['n']}：{_reason(m['r'])}"),
    (r"more than 1 only on a Kubernetes location; local trains on this one machine",
     "大于1仅限 Kubernetes 部署位置；local 只在本机上训练"),
    (r"bf16 on the CPU needs AVX-512 BF16 or AMX instructions and this machine's CPU has neither; use fp32 or auto",
     "在CPU上使用bf16需要支持AVX-512 BF16或AMX指令的CPU，本机CPU两者皆无；请使用 fp32 或 auto"),
    (r"(?P<c>\w+) needs a GPU with bf16 and this job trains on the CPU; use fp32 or auto",
     "{c} 需要支持bf16的GPU，而本任务在CPU上训练；请使用 fp32 或 auto"),
    (r"the GPU type (?P<g>\S+) has no bf16; use fp16, fp32 or auto", "算力类型 {g} 不支持bf16；请使用 fp16、fp32 或 auto"),
    (r"fp16 needs a GPU and this job trains on the CPU; use fp32 or auto", "fp16 需要GPU，而本任务在CPU上训练；请使用 fp32 或 auto"),
    (r"(?P<d>\w+) \(DeepSpeed ZeRO\) needs CUDA GPUs and this job trains on the CPU; use ddp or auto",
     "{d}（DeepSpeed ZeRO）需要 CUDA GPU，而本任务在CPU上训练；请使用 ddp 或 auto"),
    (r"flash_attention_2 needs fp16 or bf16 on a CUDA GPU; this job has compute_type (?P<c>\w+) on the (?P<d>GPU|CPU); "
     r"use auto \(PyTorch SDPA\)", "flash_attention_2 需要 CUDA GPU 上的 fp16 或 bf16；本任务在{d}上，«compute_type»为 {c}；"
                                   "请使用 auto（PyTorch SDPA）"),
    (r"the flash-attn package is not installed here, or the GPU is older than Ampere; use auto \(PyTorch SDPA\)",
     "此处未安装 flash-attn，或GPU早于 Ampere 架构；请使用 auto（PyTorch SDPA）"),
    (r"unsloth trains on exactly one GPU in total; this job has (?P<n>\d+) node\(s\) × (?P<g>\d+) GPU\(s\)",
     "unsloth 只能在总共一张GPU上训练；本任务为 {n} 个节点 × {g} 张GPU"),
    (r"Unsloth is not in airtune's training image .*; use auto \(flash-attention 2 where installed, else SDPA\) or liger_kernel",
     "airtune 的训练镜像未包含 Unsloth，airtune 的训练程序也不通过它加载模型；请使用 auto（已安装时用 flash-attention 2，"
     "否则用 SDPA）或 liger_kernel"),
    (r"liger_kernel needs a CUDA GPU \(its kernels are Triton kernels\) and this job trains on the CPU",
     "liger_kernel 需要 CUDA GPU（其内核为 Triton 内核），而本任务在CPU上训练"),
    (r"eetq needs a CUDA GPU and this job trains on the CPU; use bnb \(it also runs on the CPU\)",
     "eetq 需要 CUDA GPU，而本任务在CPU上训练；请使用 bnb（也可在CPU上运行）"),
    (r"eetq's kernels are not available (?P<place>.+) without a model hub \(transformers fetches (?P<repo>\S+)\); use bnb or hqq",
     lambda m, f: f"没有模型仓库时，eetq 的内核{_place(m['place'])}不可用（transformers 需要下载 {m['repo']}）；请使用 bnb 或 hqq"),
    (r"hqq needs the hqq package, which is not installed on this machine \(it comes with airtune\[train\]\); install it, "
     r"or use bnb", "hqq 需要 hqq 软件包，本机未安装（它随 airtune[train] 一起安装）；请安装它，或使用 bnb"),
    (r"at most the (?P<n>\d+) layers (?P<m>\S+) has", "最多为 {m} 的层数 {n}"),
    (r"not a field of (?P<c>\w+) \(the TRL config stage (?P<s>\w+) trains with\); check the name in TRL's / "
     r"transformers' TrainingArguments docs", "不是 {c}（{s} 阶段使用的 TRL 配置）的字段；请在 TRL / transformers 的 "
                                              "TrainingArguments 文档中核对名称"),
    (r"(?P<c>\w+)\.(?P<k>\w+) takes (?P<t>.+)", "{c}.{k} 的取值须为 {t}"),
    (r"this job needs about (?P<g>[\d.]+) GiB of GPU memory per process before any row's activations \(estimate; parts "
     r"in GiB: (?P<p>.+), overhead\) but (?P<gpu>.+)'s GPUs have (?P<a>[\d.]+) GiB; use lora, quantization_bit 4, or "
     r"more GPUs with distributed zero3",
     lambda m, f: (f"本任务每个进程约需 {m['g']} GiB 显存（尚不含数据行的激活；估算，各部分 GiB：{m['p']}，另加额外开销），"
                   f"而{'本机' if m['gpu'] == 'this machine' else ' ' + m['gpu'] + ' '}的GPU只有 {m['a']} GiB；"
                   f"请使用 lora、«quantization_bit» 4，或用更多GPU并将«distributed»设为 zero3")),
    (r"this job needs about (?P<g>[\d.]+) GiB of GPU memory per process (?P<rows>.+) \(estimate; parts in GiB: (?P<p>.+)\) "
     r"but (?P<gpu>.+)'s GPUs have (?P<a>[\d.]+) GiB; " + re.escape(_MEMORY_FIX_ROWS),
     lambda m, f: (f"本任务每个进程约需 {m['g']} GiB 显存（{m['rows']}；估算，各部分 GiB：{m['p']}），"
                   f"而{'本机' if m['gpu'] == 'this machine' else ' ' + m['gpu'] + ' '}的GPU只有 {m['a']} GiB；"
                   f"请减小«per_device_train_batch_size»或«cutoff_len»，或使用 lora、«quantization_bit» 4，"
                   f"或用更多GPU并将«distributed»设为 zero3")),
    (r"no job of this name; (?P<what>.+)", lambda m, f: f"没有这个名称的任务；{_EARLIER.get(m['what'], m['what'])}"),
    (r"that job has not finished \(state: (?P<s>.+)\); (?P<what>.+)",
     lambda m, f: f"该任务尚未完成（状态：{m['s']}）；{_EARLIER.get(m['what'], m['what'])}"),
    (r"its final weights are missing \((?P<d>.+)\); (?P<what>.+)",
     lambda m, f: f"它的最终权重不存在（{m['d']}）；{_EARLIER.get(m['what'], m['what'])}"),
    (r"it is an? (?P<s>\w+) job \(a reward model: name it as reward_model instead\); (?P<what>.+)",
     lambda m, f: f"它是 {m['s']} 任务（奖励模型：请把它填在«reward_model»中）；{_EARLIER.get(m['what'], m['what'])}"),
    (r"its base_model is (?P<p>.+), this job's is (?P<b>.+); they must be equal",
     "它的«base_model»为 {p}，本任务的为 {b}；两者必须相同"),
    (r"it is an? (?P<s>\w+) job; (?P<what>.+)", lambda m, f: f"它是 {m['s']} 任务；{_EARLIER.get(m['what'], m['what'])}"),
    # -- the wizard's own (create.check) --------------------------------------------------------------------------
    (r"a job of this name exists: a name identifies one job; choose another \(or delete that job first\)",
     "已有同名任务：一个名称只对应一个任务；请换一个名称（或先删除那个任务）"),
]
_COMPILED = [(re.compile(pattern, re.S), zh) for pattern, zh in RULES]


def message_zh(field: str, message: str) -> str | None:
    """The Chinese of one of validate's messages about `field` (an error's field, e.g. extra_args.optim), or None."""
    f = FIELD_BY_NAME.get(field.split(".")[0])
    for pattern, zh in _COMPILED:
        m = pattern.fullmatch(message)
        if m is None:
            continue
        if callable(zh):
            text = zh(m, f)
        else:
            groups = {k: (v or "") for k, v in m.groupdict().items()}
            if "acc" in groups:
                groups["acc"] = _accepted(groups["acc"], f)
            text = zh.format(**groups)
        text = _LABEL.sub(lambda l: _label(l[1]), text)
        return re.sub(r"须为(?=[\x21-\x7e])", "须为 ", text)  # "须为 > 0 且 <= 1", "须为 true 或 false"
    return None


def message(field: str, text: str, lang: str) -> str:
    """`text` in the page's language: Chinese where a rule has it, else as written."""
    if lang != "zh":
        return text
    return message_zh(field, text) or text
