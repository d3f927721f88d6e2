"""Template-level P3 instructions in evaluation: one hypernetwork run per template.

Real COPA validation rows through real promptsource templates (skipped without
``../shared/data``), a tiny random HINT model and the byte vocabulary. With
``instruction="template"`` (the default) every example of a template shares one
instruction, so rank classification over N templates runs the hypernetwork N
times (the evaluator's ``hypernet_calls`` counter); with ``instruction="prompt"``
(the per-example form) it runs once per example.
"""
import pytest

from hyper_tasks.data import features as F
from hyper_tasks.data import p3_rows
from hyper_tasks.data import p3_tasks
from hyper_tasks.data import pipeline
from hyper_tasks.data import register as register_lib
from hyper_tasks.data import registry
from hyper_tasks.evaluation import evaluator
from hyper_tasks.models import builders
from tests.evaluation import evallib

LENGTHS = {"hyper_inputs": 160, "inputs": 96, "targets": 48}
BATCH = 8
EXAMPLES = 3  # Per template.
COPA = p3_rows.P3Dataset("super_glue", "copa")
TEMPLATES = ("exercise", "best_option", "i_am_hesitating")
NAMES = [f"p3_super_glue_copa_{t}_score_eval" for t in TEMPLATES]


_random_params = evallib.random_params


@pytest.fixture(scope="module")
def copa(shared_data):
  """(register(instruction), model, params); the embedded default restored after."""
  def register(instruction):
    return p3_tasks.register_t0(
        str(shared_data / "p3" / "promptsource_templates"),
        str(shared_data / "p3"), "byte", train_datasets=(),
        eval_datasets=(COPA,), shots=(), instruction=instruction)
  model = builders.make_model(
      hypernet="hint", size="tiny", vocab_size=260, dropout_rate=0.0,
      peft_spec=builders.make_peft_spec(adapter_size=4),
      instruction_fusion=True)
  yield register, model, _random_params(model)
  registry.unregister_all()
  register_lib.register_embedded()


def _evaluate(model, params):
  return evaluator.evaluate_many(
      model, params, NAMES, split="validation", sequence_lengths=LENGTHS,
      batch_size=BATCH, max_examples=EXAMPLES, progress=False)


def test_template_instructions_run_the_hypernetwork_once_per_template(copa):
  register, model, params = copa
  names = register("template")
  assert set(NAMES) <= set(names)
  # Every example of each score_eval task has the same hyper_inputs.
  instructions = set()
  for name in NAMES:
    records = pipeline.load_examples(name, "validation")
    assert len(records) == 200, name
    hyper = {r[F.HYPER_INPUTS] for r in records}
    assert len(hyper) == 1 and "[premise]" in next(iter(hyper)), name
    assert len({r[F.INPUTS] for r in records}) == 100
    instructions |= hyper
  assert len(instructions) == len(TEMPLATES)

  report = _evaluate(model, params)
  rows = report["num_rank_classification_rows"]
  assert report["num_examples"] == EXAMPLES * len(TEMPLATES)
  assert rows == 2 * report["num_examples"]
  assert report["hypernet_calls"] == len(TEMPLATES)
  assert report["cache_hits"] == rows - len(TEMPLATES)


def test_prompt_instructions_run_the_hypernetwork_once_per_example(copa):
  register, model, params = copa
  register("prompt")
  report = _evaluate(model, params)
  assert report["num_examples"] == EXAMPLES * len(TEMPLATES)
  assert report["hypernet_calls"] == report["num_examples"]
  assert report["cache_hits"] == (report["num_rank_classification_rows"] -
                                  report["num_examples"])
