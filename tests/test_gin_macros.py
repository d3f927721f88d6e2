"""User-bound macros that nothing reads are errors in every entry point, raised
before any data is registered or model built; resolved configurations."""
import gin
import pytest

from hyper_tasks import eval as eval_lib
from hyper_tasks import gin_macros
from hyper_tasks import gin_utils
from hyper_tasks import infer as infer_lib
from hyper_tasks.data import register
from hyper_tasks.train import __main__ as train_main
from hyper_tasks.train import trainer

SNI = ["experiments/hint_finetune_sni.gin", "tiny.gin"]
MODEL_DIR = "MODEL_DIR = '/tmp/unused'"


pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.fixture
def nothing_runs(monkeypatch):
  """Fails the test if data is registered or a run starts."""
  def fail(*unused_args, **unused_kwargs):
    raise AssertionError("ran past the configuration check")
  monkeypatch.setattr(register, "register_all", fail)
  monkeypatch.setattr(trainer, "train", fail)
  monkeypatch.setattr(eval_lib, "evaluate", fail)
  monkeypatch.setattr(infer_lib, "infer", fail)


def test_train_misspelled_macro_names_it_and_suggests(nothing_runs):
  flags = [f"--gin_file={f}" for f in SNI] + ["--gin.MODEL_DIR='/tmp/unused'",
                                              "--gin.TRAIN_STEPZ=3"]
  with pytest.raises(gin_macros.UnreadMacroError) as e:
    train_main.main(flags)
  assert str(e.value) == ("TRAIN_STEPZ: no configuration reads this macro; did you "
                          "mean TRAIN_STEPS? (bound by 'TRAIN_STEPZ = 3')")
  assert isinstance(e.value, gin_utils.GinConfigError)


def test_eval_and_infer_misspelled_macro(nothing_runs):
  flags = ["--gin_file=experiments/hint_finetune_sni.gin",
           "--gin_file=runs/eval_sni.gin", "--gin_file=tiny.gin",
           "--gin.MODEL_DIR='/tmp/unused'", "--gin.ADAPTR_SIZE=8"]
  with pytest.raises(gin_utils.GinConfigError,
                     match="ADAPTR_SIZE: no configuration reads this macro; did "
                           "you mean ADAPTER_SIZE\\?"):
    eval_lib.main(flags)
  gin.clear_config()
  flags = ["--gin_file=experiments/hint_finetune_sni.gin",
           "--gin_file=runs/infer.gin", "--gin_file=tiny.gin",
           "--gin.MODEL_DIR='/tmp/unused'",
           "--gin.INFER_MIXTURE_OR_TASK_NAME='x'", "--gin.MAX_EXAMPLE=2"]
  with pytest.raises(gin_utils.GinConfigError, match="did you mean MAX_EXAMPLES\\?"):
    infer_lib.main(flags)


def test_macro_bound_twice_with_different_values():
  with pytest.raises(gin_utils.GinConfigError,
                     match="TRAIN_STEPS is bound twice on the command line with "
                           "different values: 'TRAIN_STEPS = 3' and 'TRAIN_STEPS=4'"):
    gin_utils.parse(SNI, [MODEL_DIR, "TRAIN_STEPS = 3", "TRAIN_STEPS=4"])
  gin.clear_config()
  gin_utils.parse(SNI, [MODEL_DIR, "TRAIN_STEPS = 3", "TRAIN_STEPS=3"])
  assert gin.query_parameter("TRAIN_STEPS/gin.macro.value") == 3


def test_macros_read_through_other_macros_are_read():
  # tiny.gin: MIXTURE_OR_TASK_NAME = %TINY_MIXTURE_OR_TASK_NAME (read by train).
  gin_utils.parse(SNI, [MODEL_DIR, "TINY_MIXTURE_OR_TASK_NAME = 'x'"])
  gin.clear_config()
  with pytest.raises(gin_macros.UnreadMacroError,
                     match="TINY_MIXTURE_OR_TASK_NAME: no configuration reads") as e:
    gin_utils.parse(SNI[:1], [MODEL_DIR, "TINY_MIXTURE_OR_TASK_NAME = 'x'"])
  assert list(e.value.problems) == ["TINY_MIXTURE_OR_TASK_NAME"]


def test_repository_macros_may_go_unread():
  # TINY_* (only tiny.gin reads them), eval-only macros: bound by the repository's
  # files, not by the user.
  gin_utils.parse(["experiments/hint_finetune_sni.gin"], [MODEL_DIR],
                  finalize=False)
  assert "TINY_MIXTURE_OR_TASK_NAME" not in gin_macros.referenced_macros()
  assert "TINY_MIXTURE_OR_TASK_NAME" in gin_macros.bound_macros()


def test_macro_introduced_by_a_user_file(tmp_path):
  mine = tmp_path / "mine.gin"
  mine.write_text("ADAPTER_SIZE = 16\nMY_STEPS = 5\nTRAIN_STEPS = %MY_STEPS\n")
  gin_utils.parse(SNI + [str(mine)], [MODEL_DIR])
  gin.clear_config()
  mine.write_text("ADAPTER_SIZE = 16\nADAPTERSIZE = 16\n")
  with pytest.raises(gin_macros.UnreadMacroError) as e:
    gin_utils.parse(SNI + [str(mine)], [MODEL_DIR])
  assert list(e.value.problems) == ["ADAPTERSIZE"]
  assert f"(bound in {mine})" in str(e.value)


def test_job_script_environment_macros_are_exempt_while_set(monkeypatch):
  monkeypatch.delenv("C4_PATH", raising=False)
  with pytest.raises(gin_macros.UnreadMacroError, match="C4_PATH"):
    gin_utils.parse(SNI, [MODEL_DIR, "C4_PATH = '/data/c4'"])
  gin.clear_config()
  monkeypatch.setenv("C4_PATH", "/data/c4")
  gin_utils.parse(SNI, [MODEL_DIR, "C4_PATH = '/data/c4'"])


@pytest.mark.parametrize("files, bindings", [
    # tests/test_cli.py's eval and infer flags, the scripts' dry runs.
    (["experiments/t5_concat_finetune_sni.gin", "runs/eval_sni.gin", "tiny.gin"],
     ["TINY_EVAL_MIXTURE_OR_TASK_NAMES = ['x']", "MAX_EXAMPLES = 2",
      "EVAL_BATCH_SIZE = 4"]),
    (["experiments/t5_concat_finetune_sni.gin", "runs/infer.gin", "tiny.gin"],
     ["INFER_MIXTURE_OR_TASK_NAME = 'x'", "MAX_EXAMPLES = 2",
      "INFER_BATCH_SIZE = 4"]),
    (["experiments/hint_pretrain_c4.gin", "tiny.gin"], ["TRAIN_STEPS = 1"]),
    (["experiments/hint_finetune_t0.gin", "runs/eval_t0.gin", "tiny.gin"],
     ["MAX_EXAMPLES = 2"]),
])
def test_documented_command_lines_still_parse(files, bindings):
  gin_utils.parse(files, [MODEL_DIR] + bindings)


def test_suggestions():
  names = ["ADAPTER_SIZE", "BATCH_SIZE", "EVAL_BATCH_SIZE", "TRAIN_STEPS"]
  assert gin_macros.suggestions("ADAPTR_SIZE", names) == ["ADAPTER_SIZE"]
  assert gin_macros.suggestions("adapter_size", names) == ["ADAPTER_SIZE"]
  assert gin_macros.suggestions("QQQ", names) == []


def test_resolved_parameters_substitute_macros():
  gin_utils.parse(SNI, [MODEL_DIR, "ADAPTER_SIZE = 8", "HYPER_MLP = 24"])
  resolved = gin_macros.resolved_parameters()
  assert resolved["make_peft_spec.adapter_size"] == 8
  assert resolved["make_model.hypernet_kwargs.mlp_dim"] == 24
  assert resolved["train.model_dir"] == "/tmp/unused"
  assert resolved["train.evaluation"] == "@train.TrainEval()"
  assert gin_macros.differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == {
      "b": 3, "c": 4}
