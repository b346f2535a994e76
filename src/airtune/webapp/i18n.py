"""The jobs page's words in English and Chinese: one table, the seed platform's terms (查看日志,
查看监控, 删除, 任务名称, ...; the form's labels in airtune.spec use the same words).

Which language a page speaks: the form's setting (AIRTUNE_FORM_LANG, read by airtune.form.form_lang)
when it is set; unset, it allows both, and the browser's Accept-Language decides (Chinese when the
browser prefers zh over en, else English).
"""

from __future__ import annotations

import os
import re

LANGS = ("en", "zh")

# key: (English, Chinese). Placeholders are str.format names.
MESSAGES: dict[str, tuple[str, str]] = {
    # the list
    "jobs.title": ("Fine-tuning jobs", "微调任务"),
    "jobs.intro": ("Each job is one run of {dag} (or of a retraining DAG). Start one with New job, or from Airflow's trigger "
                   "form or the REST API.",
                   "每个任务是 {dag}（或重训练 DAG）的一次运行。可用“新建任务”创建，也可从 Airflow 的触发表单或 REST API 创建。"),
    "jobs.none": ("No jobs yet.", "还没有任务。"),
    "jobs.new": ("+ New job", "+ 新建任务"),
    "col.name": ("Name", "任务名称"),
    "col.state": ("State", "状态"),
    "col.base_model": ("Base model", "基础模型"),
    "col.method": ("Method", "微调方法"),
    "col.stage": ("Stage", "训练阶段"),
    "col.started": ("Started", "开始时间"),
    "col.duration": ("Duration", "运行时长"),
    "col.best_metric": ("Best metric", "最佳指标"),
    "col.runs": ("Runs", "运行次数"),
    "source.latest_run": ("latest run", "最近一次运行"),
    "source.version": ("version {v}", "版本 {v}"),
    # the detail view
    "nav.all_jobs": ("← all jobs", "← 全部任务"),
    "unreachable": ("{source} not reachable: {error}", "{source} 无法访问：{error}"),
    "kv.run": ("Run", "运行"),
    "kv.base_model": ("Base model", "基础模型"),
    "kv.method_stage": ("Method · stage", "微调方法 · 训练阶段"),
    "kv.datasets": ("Datasets", "训练数据集"),
    "kv.location": ("Location", "部署位置"),
    "kv.started": ("Started", "开始时间"),
    "kv.duration": ("Duration", "运行时长"),
    "kv.progress": ("Progress", "进度"),
    "progress.step": ("step {step} of {max}", "第 {step} 步，共 {max} 步"),
    "kv.airflow": ("Airflow", "Airflow"),
    "link.dag_run": ("the DAG run", "DAG 运行"),
    "kv.mlflow": ("MLflow", "MLflow"),
    "link.mlflow_run": ("the run", "训练运行"),
    "link.experiment": ("experiment {name}", "实验 {name}"),
    "kv.registered": ("Registered", "注册模型"),
    "registered.version": ("{name} version {v}", "{name} 版本 {v}"),
    "registered.alias": ("(alias {alias})", "（别名 {alias}）"),
    "registered.none_this_run": ("{n} version(s); this run: none yet", "共 {n} 个版本；本次运行：暂无"),
    "registered.not_yet": ("not yet", "尚未注册"),
    "kv.load_it": ("Load it", "加载方式"),
    "kv.metrics": ("Metrics", "指标"),
    "kv.files": ("Files", "文件目录"),
    "try.title": ("Try it", "试用模型"),
    "try.about": ("Answered by <b>{name} version {v}</b> ({chosen_by}) with greedy decoding "
                  "(the same prompt gets the same answer), at most {tokens} new tokens, by a process of its own on the machine "
                  "running Airflow's api-server (loading the model takes a few seconds). One prompt at a time, up to {chars} characters.",
                  "由 <b>{name} 版本 {v}</b>（{chosen_by}）以贪心解码回答（同一提示词得到同一回答），"
                  "最多生成 {tokens} 个新词元，在运行 Airflow api-server 的机器上由独立进程执行（加载模型需要几秒）。"
                  "一次一个提示词，最多 {chars} 个字符。"),
    "try.chosen.champion": ("alias champion, a person's choice", "别名 champion，人工选定"),
    "try.chosen.best": ("alias best, the register task's choice; an alias champion set in MLflow would answer instead",
                        "别名 best，由 register 步骤选定；若在 MLflow 中设置了别名 champion，则由它回答"),
    "try.chosen.newest": ("the newest version; no version has alias champion or best", "最新版本；没有版本带有别名 champion 或 best"),
    "try.placeholder": ("A prompt for the model (Enter answers, Shift+Enter starts a new line)",
                        "输入提示词（Enter 提交，Shift+Enter 换行）"),
    "try.button": ("Answer", "回答"),
    "try.answering": ("answering…", "回答中…"),
    "try.answering_s": ("answering… {s} s", "回答中… {s} 秒"),
    "try.empty": ("(an empty answer: the model ended its turn at once)", "（空回答：模型立即结束了回答）"),
    "try.meta": ("version {v} · {tokens} tokens · {s} s", "版本 {v} · {tokens} 个词元 · {s} 秒"),
    "try.stopped": (" · stopped at the token limit", " · 已达词元上限"),
    "try.not_logged_in": ("not logged in (any more): reload the page and log in", "未登录（或登录已过期）：请刷新页面并登录"),
    "try.not_allowed": ("not allowed: trying a model needs the permission to trigger runs of airtune_finetune",
                        "无权限：试用模型需要触发 airtune_finetune 运行的权限"),
    "try.no_answer_status": ("no answer: the server answered {status}", "没有回答：服务器返回 {status}"),
    "try.no_answer": ("no answer: {error}", "没有回答：{error}"),
    "runs.title": ("Runs", "运行记录"),
    "tasks.title": ("Tasks", "任务步骤"),
    "col.task": ("Task", "步骤"),
    "col.try": ("Try", "尝试次数"),
    "col.pool": ("Pool", "资源池"),
    "log.title": ("Log", "查看日志"),
    "log.no_run": ("no run", "没有运行"),
    "log.loading": ("loading…", "加载中…"),
    "log.not_available": ("log not available ({status})", "日志不可用（{status}）"),
    "log.empty": ("(empty)", "（空）"),
    "log.which": ("· {task}, try {n} (last {lines} lines)", "· {task}，第 {n} 次尝试（最后 {lines} 行）"),
    "curves.title": ("Loss curve", "损失曲线"),
    "curves.alt": ("training loss, eval loss and learning rate over steps", "训练损失、验证损失和学习率随步数的变化"),
    "curves.none": ("no metrics yet", "暂无指标"),
    # monitoring (查看监控)
    "monitor.title": ("Monitoring", "查看监控"),
    "monitor.about": ("From the run's metrics in MLflow: training figures by step; CPU, memory and GPU of each node over the run's time "
                      "(sampled by MLflow's system-metrics monitor). Updated while the job runs.",
                      "来自 MLflow 中本次运行的指标：训练指标按步数；每个节点的 CPU、内存和 GPU 按运行时间（由 MLflow 的系统指标监控采样）。"
                      "任务运行期间自动更新。"),
    "monitor.loading": ("loading…", "加载中…"),
    "monitor.none": ("no metrics in MLflow yet", "MLflow 中暂无指标"),
    "monitor.unavailable": ("monitoring not available ({status})", "监控不可用（{status}）"),
    "monitor.no_run": ("this run has no MLflow run yet", "本次运行还没有 MLflow 运行"),
    "monitor.no_gpu": ("{node}: no GPU metrics (no GPU seen on that node)", "{node}：没有 GPU 指标（该节点未检测到 GPU）"),
    "chart.loss": ("Loss", "损失"),
    "chart.learning_rate": ("Learning rate", "学习率"),
    "chart.tokens_per_second": ("Tokens per second", "每秒词元数"),
    "chart.cpu": ("CPU utilisation · {node}", "CPU 使用率 · {node}"),
    "chart.memory": ("Memory used · {node}", "内存使用 · {node}"),
    "chart.gpu_util": ("GPU utilisation · {node}", "GPU 使用率 · {node}"),
    "chart.gpu_memory": ("GPU memory used · {node}", "GPU 显存使用 · {node}"),
    "axis.step": ("step", "步数"),
    "axis.time": ("time (s)", "时间（秒）"),
    "series.loss": ("loss", "训练损失"),
    "series.eval_loss": ("eval_loss", "验证损失"),
    "series.learning_rate": ("learning rate", "学习率"),
    "series.tokens_per_second": ("tokens/s", "每秒词元数"),
    "series.gpu": ("GPU {i}", "GPU {i}"),
    # evaluation
    "eval.title": ("Evaluation", "模型评估"),
    "eval.about": ("The evaluate task scored {base}{champion} and the tuned model on {n} held-out prompts (greedy answers; ROUGE "
                   "and BLEU-4 as LLaMA-Factory computes them, 0–100; eval_loss lower is better).",
                   "评估步骤在 {n} 条留出的提示词上为{base}{champion}和微调后的模型打分（贪心解码；ROUGE 与 BLEU-4 的算法同 "
                   "LLaMA-Factory，0–100；eval_loss 越低越好）。"),
    "eval.base_named": ("the model the job started from ({model})", "任务起始的模型（{model}）"),
    "eval.base": ("the model the job started from", "任务起始的模型"),
    "eval.champion_part": (", the champion (version {v})", "、当前冠军版本（版本 {v}）"),
    "col.metric": ("Metric", "指标"),
    "source.base": ("base model", "基础模型"),
    "source.champion": ("champion", "冠军版本"),
    "source.tuned": ("tuned", "微调后"),
    "eval.promotion": ("Promotion", "版本晋级"),
    "eval.on": ("on", "依据"),
    "eval.decided_by": ("decided by {who}", "决定者：{who}"),
    "eval.side_by_side": ("{n} answers side by side", "{n} 条回答对比"),
    "col.prompt": ("Prompt", "提示词"),
    "col.reference": ("Reference", "参考答案"),
    "col.tuned": ("Tuned", "微调后"),
    # checkpoints and spec
    "ckpt.title": ("Checkpoints", "检查点"),
    "col.checkpoint": ("Checkpoint", "检查点"),
    "col.folder": ("Folder", "目录"),
    "ckpt.best": ("best", "最佳"),
    "ckpt.removed": ("(removed: save_total_limit)", "（已删除：save_total_limit）"),
    "none_yet": ("none yet", "暂无"),
    "ckpt.summary": ("{steps} steps; training loss {first} → {last}", "共 {steps} 步；训练损失 {first} → {last}"),
    "ckpt.eval_loss": ("; eval loss {v}", "；验证损失 {v}"),
    "spec.title": ("Resolved spec", "解析后的任务配置"),
    "spec.not_resolved": ("validate has not written the resolved spec{yet}; this is the conf the run was triggered with.",
                          "validate 步骤{yet}没有写出解析后的配置；这里是触发运行时的配置。"),
    "spec.yet": (" yet", "还"),
    "spec.whole": ("the whole resolved spec (spec.json)", "完整的解析后配置（spec.json）"),
    # delete (删除)
    "delete.summary": ("Delete this job…", "删除任务…"),
    "delete.warning": ("Deleting <b>{name}</b> removes, for good: its {runs} run(s) in Airflow and MLflow with their metrics, logs and "
                       "artefacts{model}{files}. The name becomes free again.",
                       "删除 <b>{name}</b> 将永久移除：它在 Airflow 和 MLflow 中的 {runs} 次运行及其指标、日志和产物{model}{files}。"
                       "删除后该名称可以再次使用。"),
    "delete.warning_model": (", the registered model <b>{name}</b> and its {n} version(s)", "、注册模型 <b>{name}</b> 及其 {n} 个版本"),
    "delete.warning_files": (", and its files", "，以及它的文件"),
    "delete.confirm": ("Type the job's name to confirm:", "输入任务名称以确认："),
    "delete.force": ("cancel its active run first", "先取消正在进行的运行"),
    "delete.active_hint": ("Wait for it to finish, or open the job again, tick “cancel its active run first” and delete.",
                           "请等待它结束，或回到任务页面，勾选“先取消正在进行的运行”后再删除。"),
    "delete.button": ("Delete {name}", "删除 {name}"),
    "delete.pending": ("deleting… (cancelling an active run first can take a minute)", "正在删除…（先取消正在进行的运行可能需要一分钟）"),
    "delete.failed_request": ("delete: no answer from the server: {error}", "删除：服务器没有响应：{error}"),
    "delete.confirm_mismatch": ("delete: type the job's name ({name}) to confirm; got {got}; nothing deleted",
                                "删除：请输入任务名称（{name}）以确认；收到的是 {got}；未删除任何内容"),
    "deleted.title": ("delete {name}", "删除 {name}"),
    "deleted.ok": ("Deleted job {name}", "已删除任务 {name}"),
    "deleted.not": ("Job {name} was not deleted", "任务 {name} 未删除"),
    "deleted.report": ("What was done", "执行记录"),
    # states
    "state.queued": ("queued", "排队中"),
    "state.running": ("running", "运行中"),
    "state.success": ("success", "成功"),
    "state.failed": ("failed", "失败"),
    "state.upstream_failed": ("upstream_failed", "上游失败"),
    "state.skipped": ("skipped", "已跳过"),
    "state.scheduled": ("scheduled", "已调度"),
    "state.up_for_retry": ("up_for_retry", "等待重试"),
    "state.up_for_reschedule": ("up_for_reschedule", "等待重新调度"),
    "state.deferred": ("deferred", "已挂起"),
    "state.removed": ("removed", "已移除"),
    "state.restarting": ("restarting", "重启中"),
    "state.none": ("none", "未开始"),
}

# what the page's script needs (the rest is rendered on the server)
SCRIPT_KEYS = tuple(k for k in MESSAGES if k.startswith(("try.", "log.", "monitor.", "axis.", "state.", "delete.")))


def page_lang(accept_language: str | None = None, setting: str | None = None) -> str:
    """The form's language when it is set (AIRTUNE_FORM_LANG), else the browser's first choice of en / zh."""
    from airtune.form import form_lang

    raw = setting if setting is not None else os.environ.get("AIRTUNE_FORM_LANG")
    if raw and raw.strip():
        return form_lang(raw)
    return browser_lang(accept_language)


def browser_lang(accept_language: str | None) -> str:
    """en or zh from an Accept-Language header (by q, then order; other languages are skipped)."""
    choices = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGS and q > 0:
            choices.append((-q, i, primary))
    return min(choices)[2] if choices else "en"


def text(lang: str, key: str, **values) -> str:
    en, zh = MESSAGES[key]
    s = zh if lang == "zh" else en
    return s.format(**values) if values else s


# The page deletes through `airtune delete` (data.delete), whose refusal of a job with an active run
# tells a terminal user about its --force flag; on the page that is the box "cancel its active run
# first" (delete.force), so the page says that instead (the CLI's own words stay the CLI's).
_CLI_FORCE_HINT = re.compile(r"[Ww]ait for it to finish, or use --force to cancel it first\.?")


def delete_error(lang: str, error: str) -> str:
    """`airtune delete`'s error as the page shows it: what to do on the page, not a command-line flag."""
    return _CLI_FORCE_HINT.sub(lambda _: text(lang, "delete.active_hint"), error)


def state(lang: str, value) -> str:
    """A task or run state in words (the raw value when the table has none)."""
    key = f"state.{value or 'none'}"
    return text(lang, key) if key in MESSAGES else str(value)


def script_messages(lang: str) -> dict[str, str]:
    return {k: text(lang, k) for k in SCRIPT_KEYS}


def translator(lang: str):
    """`tr(key, **values)` for a template."""
    from markupsafe import Markup

    def tr(key: str, **values) -> Markup:
        # the table's own markup (<b>, <code>) stays; the values put into it are escaped
        en, zh = MESSAGES[key]
        return Markup(zh if lang == "zh" else en).format(**values)

    return tr
