"""End-to-end evaluation on the real data in `../shared/data` (skipped without it).

A tiny HINT model (random initialisation, the real T5 SentencePiece
vocabulary) is evaluated on the real Super-NaturalInstructions test tasks
(generation, ROUGE-L / exact match) and on COPA and WSC through the real
promptsource templates (rank classification), producing complete JSON reports.
"""

import json

import pytest

from hyper_tasks.data import register
from hyper_tasks.evaluation import evaluator
from hyper_tasks.evaluation import metrics
from hyper_tasks.evaluation import report as report_lib
from hyper_tasks.models import builders
from tests.evaluation import evallib

LENGTHS = {"hyper_inputs": 96, "inputs": 64, "targets": 24}
BATCH = 8


_random_params = evallib.random_params


@pytest.fixture(scope="module")
def real(shared_data):
  vocab = str(shared_data / "t5_vocab" / "spiece.model")
  names = register.register_all(
      sni_dir=str(shared_data / "sni"),
      p3_templates_dir=str(shared_data / "p3" / "promptsource_templates"),
      p3_data_dir=str(shared_data / "p3"), vocabulary=vocab,
      sni_allow_missing_tasks=True,
      # The per-example form (template-level instructions, the default, are
      # checked in test_p3_template_instructions.py).
      p3_instruction="prompt")
  model = builders.make_model(
      hypernet="hint", size="tiny", vocab_size=32128, dropout_rate=0.0,
      peft_spec=builders.make_peft_spec(adapter_size=4),
      instruction_fusion=True)
  yield shared_data, names, model, _random_params(model)
  # Other test modules expect the embedded default with its byte vocabulary.
  register.register_embedded()


def _sni_test_tasks(shared_data):
  listed = (shared_data / "sni" / "splits" / "default" /
            "test_tasks.txt").read_text().split()
  present = {p.stem for p in (shared_data / "sni" / "tasks").glob("*.json")}
  return sorted(set(listed) & present)


def test_sni_test_tasks_end_to_end(real, tmp_path):
  shared_data, names, model, params = real
  assert "sni_def_test" in names
  report = evaluator.evaluate(
      model, params, "sni_def_test", split="test", sequence_lengths=LENGTHS,
      batch_size=BATCH, max_decode_length=8, step=5, config_str="# tiny",
      progress=False)
  report_lib.validate_report(report)
  generation = report["generation"]
  tasks = _sni_test_tasks(shared_data)
  assert len(tasks) == 5
  assert sorted(generation["per_task"]) == tasks
  assert generation["per_category"]
  n = generation["overall"]["num_examples"]
  assert n == report["num_examples"] == sum(
      t["num_examples"] for t in generation["per_task"].values())
  # The def format gives each task one instruction: 5 hypernetwork runs.
  assert report["hypernet_calls"] == 5
  assert report["cache_hits"] == n - 5
  assert report["rank_classification"] == {}
  for metric in ("rougeL", "exact_match"):
    assert 0.0 <= generation["overall"][metric] <= 100.0

  # The report survives a write / read round trip and flattens for TensorBoard.
  path = report_lib.write_report(str(tmp_path), report)
  assert report_lib.read_report(path) == json.loads(json.dumps(report))
  flat = report_lib.flatten_metrics(report)
  assert {f"sni/per_task/{t}/rougeL" for t in tasks} <= set(flat)

  # Inference writes the same predictions the metrics were computed from.
  out = evaluator.infer(
      model, params, "sni_def_test", split="test", sequence_lengths=LENGTHS,
      batch_size=BATCH, max_decode_length=8, progress=False,
      output_path=str(tmp_path / "sni.jsonl"))
  lines = [json.loads(l) for l in open(out, encoding="utf-8")]
  assert len(lines) == n
  recomputed = metrics.compute_generation_metrics(
      [l["prediction"] for l in lines], [l["references"] for l in lines],
      [l["task"] for l in lines], [l["category"] for l in lines])
  assert recomputed == generation


def test_copa_and_wsc_rank_classification_through_real_templates(real):
  _, names, model, params = real
  assert "t0_eval_score_eval" in names
  report = evaluator.evaluate(
      model, params, "t0_eval_score_eval", split="validation",
      sequence_lengths=LENGTHS, batch_size=BATCH, max_examples=2,
      progress=False)
  report_lib.validate_report(report)
  rank = report["rank_classification"]
  assert sorted(rank["per_task"]) == ["super_glue_copa", "super_glue_wsc.fixed"]
  # Every answer choice was scored in full.
  assert report["truncated"]["targets"] == 0
  for task, templates in rank["per_template"].items():
    assert len(templates) == rank["per_task"][task]["num_templates"] >= 2
    for entry in templates.values():
      assert entry["num_examples"] == 2
      for metric in ("accuracy", "accuracy_per_token", "accuracy_per_char"):
        assert entry[metric] in (0.0, 50.0, 100.0)
  overall = rank["overall"]
  assert overall["num_tasks"] == 2
  assert overall["num_examples"] == report["num_examples"] == 2 * sum(
      len(t) for t in rank["per_template"].values())
  assert report["generation"] == {}
  # With p3_instruction="prompt" the instruction contains the instance, so
  # every example is its own instruction, shared by its answer choices.
  rows = report["num_rank_classification_rows"]
  assert report["hypernet_calls"] == report["num_examples"]
  assert report["cache_hits"] == rows - report["num_examples"]
  flat = report_lib.flatten_metrics(report)
  assert "t0/super_glue_copa/accuracy_median" in flat


def test_control_on_real_tasks(real):
  _, _, model, params = real
  report = evaluator.evaluate_many(
      model, params, ["t0_eval_score_eval"], split="validation",
      sequence_lengths=LENGTHS, batch_size=BATCH, max_examples=1,
      controls=("shuffle",), progress=False)
  report_lib.validate_report(report)
  section = report["controls"]["shuffled_instruction"]
  assert (section["rank_classification"]["overall"]["num_examples"] ==
          report["rank_classification"]["overall"]["num_examples"])
  # Shuffling across tasks keeps one instruction per example.
  assert section["hypernet_calls"] <= report["hypernet_calls"]
  assert section["cache_hits"] + section["hypernet_calls"] == (
      report["num_rank_classification_rows"])
