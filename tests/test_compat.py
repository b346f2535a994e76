"""Everything airtune relies on beyond the libraries' documented APIs (airtune.compat.RELIES_ON)
still holds in the installed versions; and each check, and each compat function, fails with a
message that names the library, its version and the attribute when it does not."""

from __future__ import annotations

import subprocess
import sys
import types
from types import SimpleNamespace

import pytest

from airtune import compat


@pytest.mark.parametrize("entry", compat.RELIES_ON, ids=lambda e: f"{e.module}:{e.path}:{e.kind}")
def test_what_airtune_relies_on_still_holds(entry):
    assert compat.problem(entry) is None, compat.problem(entry)


def test_every_entry_names_an_airtune_user_and_a_known_kind():
    for e in compat.RELIES_ON:
        assert e.kind in ("attribute", "assigned", "parameter", "calls"), e
        assert e.kind == "attribute" or e.names, e
        assert e.used_by.split(".")[0] in ("compat", "train", "jobs", "launch"), e
        if e.used_by.startswith("compat."):
            assert hasattr(compat, e.used_by.split(".")[1]), e


def test_importing_compat_imports_no_library():
    code = ("import sys; import airtune.compat; "
            "print(sorted(m for m in ('torch', 'trl', 'transformers', 'mlflow', 'airflow', 'hqq', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


# -- the messages, on a made-up library -----------------------------------------------------------

@pytest.fixture
def fake_library(monkeypatch):
    module = types.ModuleType("airtune_fake_lib")

    class Base:
        def __init__(self):
            self.kept = 1

        def method(self, a, b=None):
            return self.helper()

        def helper(self):
            return None

    module.Base = Base
    monkeypatch.setitem(sys.modules, "airtune_fake_lib", module)
    # inspect.getsource needs a file: give the classes one
    import inspect

    monkeypatch.setattr(inspect, "getsource", lambda obj: _FAKE_SOURCE)
    return module


_FAKE_SOURCE = '''
class Base:
    def __init__(self):
        self.kept = 1

    def method(self, a, b=None):
        return self.helper()
'''


def entry(path, kind="attribute", names=()):
    return compat.Reliance("airtune_fake_lib", path, "pytest", "compat.sft_tokens_seen", kind, names)


def test_a_missing_attribute_is_named_with_the_version(fake_library):
    message = compat.problem(entry("Base.gone"))
    assert "airtune_fake_lib.Base.gone is gone in pytest " + pytest.__version__ in message
    assert "airtune.compat.sft_tokens_seen relies on airtune_fake_lib.Base.gone" in message
    assert compat.problem(entry("Base.method")) is None


def test_a_missing_module_is_named():
    message = compat.problem(compat.Reliance("airtune_no_such_lib.sub", "X", "pytest", "compat.sft_tokens_seen"))
    assert "airtune_no_such_lib.sub cannot be imported" in message


def test_a_dropped_parameter_instance_attribute_or_call_is_named(fake_library):
    assert compat.problem(entry("Base.method", "parameter", ("a", "b"))) is None
    assert "no longer takes c in pytest" in compat.problem(entry("Base.method", "parameter", ("a", "c")))
    assert compat.problem(entry("Base", "assigned", ("kept",))) is None
    assert "no longer sets self.lost" in compat.problem(entry("Base", "assigned", ("kept", "lost")))
    assert compat.problem(entry("Base.method", "calls", ("self.helper(",))) is None
    assert "no longer does 'self.other('" in compat.problem(entry("Base.method", "calls", ("self.other(",)))


# -- the functions, where the library changed ------------------------------------------------------

def test_trl_token_count_missing_is_a_compat_error_naming_trl():
    with pytest.raises(compat.CompatError, match=r"SFTTrainer._total_train_tokens is gone in trl \d"):
        compat.sft_tokens_seen(SimpleNamespace())
    with pytest.raises(compat.CompatError, match="airtune.compat.set_sft_tokens_seen relies on it"):
        compat.set_sft_tokens_seen(SimpleNamespace(_total_train_tokens=3), 5)
    trainer = SimpleNamespace(_total_train_tokens=3, _metrics={"train": {}})
    compat.set_sft_tokens_seen(trainer, 7)
    assert compat.sft_tokens_seen(trainer) == 7 and trainer._metrics["train"]["num_tokens"] == [7]


def test_an_override_whose_library_method_is_gone_names_the_provider():
    class Library:
        pass

    class Ours(Library):
        def _write_logs(self):
            return compat.inherited(self, Ours, "_write_logs")()

    with pytest.raises(compat.CompatError, match=r"Library._write_logs is gone in apache-airflow-providers-cncf-kubernetes \d"):
        Ours()._write_logs()


def test_mlflow_hard_delete_on_a_store_without_it():
    calls = []
    store = SimpleNamespace(_hard_delete_run=calls.append)
    assert compat.mlflow_hard_delete(store, run_id="r1") and calls == ["r1"]
    assert compat.mlflow_hard_delete(store, logged_model_id="m1") is False  # older stores: skipped, as before
    with pytest.raises(compat.CompatError, match=r"_hard_delete_experiment is gone in mlflow \d"):
        compat.mlflow_hard_delete(store, experiment_id="1")


def test_tensor_memo_recomputes_for_another_tensor_or_an_in_place_change():
    torch = pytest.importorskip("torch")
    memo, calls = compat.TensorMemo(), []

    def compute(t):
        calls.append(1)
        return int(t.sum())

    a = torch.tensor([1, 2])
    assert memo.get(a, compute) == 3 and memo.get(a, compute) == 3 and len(calls) == 1
    a.add_(1)  # in place: its version counter moves
    assert memo.get(a, compute) == 5 and len(calls) == 2
    assert memo.get(torch.tensor([1, 2]), compute) == 3 and len(calls) == 3
    with pytest.raises(compat.CompatError, match="torch.Tensor._version is gone in torch"):
        memo.get(SimpleNamespace(), compute)


def test_transformers_causal_lms_slice_logits_with_a_boolean_mask():
    """What loss.accepts_target_mask relies on: Llama's forward uses slice_logits_to_keep, which takes a
    boolean (batch, length) mask and returns the kept rows flattened."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM
    from transformers.modeling_utils import slice_logits_to_keep

    assert compat.slices_logits_with_mask(LlamaForCausalLM.forward)
    assert not compat.slices_logits_with_mask(test_transformers_causal_lms_slice_logits_with_a_boolean_mask)
    hidden = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert torch.equal(slice_logits_to_keep(hidden, mask), hidden[mask]) and hidden[mask].shape == (3, 4)


def test_attn_implementation_and_the_public_sdpa_function():
    pytest.importorskip("torch")
    from transformers import LlamaConfig
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from airtune.train.packed_attention import sdpa_attention

    assert sdpa_attention() is sdpa_attention_forward  # the public AttentionInterface entry is the same function
    assert compat.attn_implementation(LlamaConfig(attn_implementation="sdpa")) == "sdpa"


def test_chat_template_compiles_with_transformers_extensions():
    pytest.importorskip("transformers")
    template = compat.compile_chat_template("{{ messages[0]['content'] | tojson }}{% if false %}{{ raise_exception('x') }}{% endif %}")
    assert template.render(messages=[{"content": "hé"}]) == '"hé"'


def test_mlflow_system_metrics_without_its_loop(tmp_path):
    pytest.importorskip("mlflow")
    metrics = compat.SystemMetrics("0123", sampling_interval=7, node_id="node3",
                                   tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert metrics.prefix == "system/node3/" and metrics.sampling_interval == 7 and metrics.samples_before_logging == 1
    metrics.collect()
    values = metrics.aggregate()
    assert "cpu_utilization_percentage" in values and "system_memory_usage_megabytes" in values
    metrics.clear()


def test_the_operator_logger_is_replaced():
    pytest.importorskip("airflow.providers.cncf.kubernetes")
    import logging

    from airtune.launch.kubernetes.operators import TrainPodOperator

    op = TrainPodOperator(task_id="t", airtune_job={})
    quiet = logging.getLogger("airtune.test.quiet")
    compat.set_operator_logger(op, quiet)
    assert op.log is quiet
