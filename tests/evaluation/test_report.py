"""Tests for JSON reports, metric flattening and the TensorBoard writer."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from hyper_tasks.evaluation import metrics
from hyper_tasks.evaluation import rank_classification as rc
from hyper_tasks.evaluation import report as report_lib
from hyper_tasks.evaluation import tensorboard


def _rank_rows():
  rows = []
  for template, correct in (("GPT-3 style", 0), ("does it/follow?", 1)):
    for i, choice_correct in enumerate((0, correct)):
      for c, score in enumerate((-1.0, -2.0)):
        rows.append({"example_id": i, "task": "super_glue/cb",
                     "template": template, "choice_index": c,
                     "is_correct": c == choice_correct, "score": score,
                     "num_target_tokens": 1, "target_text": "yes"})
  return rows


def _report(step=100, **kwargs):
  generation = metrics.compute_generation_metrics(
      ["yes", "the cat"], [["Yes"], ["a cat"]], ["task1_qa", "task2 sentiment"],
      ["Question Answering", "Sentiment Analysis"])
  return report_lib.make_report(
      step, checkpoint="/ckpt/100", config="train.steps = 100",
      generation=generation,
      rank_classification=rc.evaluate_rank_classification(_rank_rows()),
      hypernet_calls=np.int64(3), cache_hits=7, num_examples=6,
      controls={"empty_instruction": {"generation": generation}}, **kwargs)


def _load(logdir):
  acc = event_accumulator.EventAccumulator(
      logdir, size_guidance={event_accumulator.SCALARS: 0,
                             event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def test_write_read_roundtrip(tmp_path):
  report = _report()
  path = report_lib.write_report(str(tmp_path), report)
  assert path == os.path.join(str(tmp_path), "eval_results", "step_100.json")
  # Only the final file remains: the temporary file was renamed, not copied.
  assert os.listdir(tmp_path / "eval_results") == ["step_100.json"]
  back = report_lib.read_report(path)
  assert back == json.loads(json.dumps(report, default=int))
  assert back["hypernet_calls"] == 3

  report_lib.write_report(str(tmp_path), _report(step=7))
  report_lib.write_report(str(tmp_path), dict(_report(step=100), cache_hits=9))
  reports = report_lib.read_reports(str(tmp_path))
  assert list(reports) == [7, 100]
  assert reports[100]["cache_hits"] == 9  # Rewriting a step replaces it.


def test_failed_write_keeps_the_previous_report(tmp_path, monkeypatch):
  path = report_lib.write_report(str(tmp_path), _report())

  def crash(fd):
    raise OSError("disk full")

  # Fail after the temporary file was written, before it replaces the report.
  monkeypatch.setattr(report_lib.os, "fsync", crash)
  with pytest.raises(OSError, match="disk full"):
    report_lib.write_report(str(tmp_path), dict(_report(), cache_hits=99))
  assert os.listdir(tmp_path / "eval_results") == ["step_100.json"]
  assert report_lib.read_report(path)["cache_hits"] == 7


def test_validation():
  with pytest.raises(ValueError, match="step"):
    report_lib.make_report(-1)
  with pytest.raises(ValueError, match="lacks keys"):
    report_lib.validate_report({"step": 1})
  with pytest.raises(ValueError, match="config"):
    report_lib.make_report(1, config=None)
  assert report_lib.make_report(0)["generation"] == {}


def test_flatten_metrics_names():
  flat = report_lib.flatten_metrics(_report())
  assert flat["sni/exact_match"] == 50.0
  assert flat["sni/rougeL"] == pytest.approx(75.0)
  assert flat["sni/per_task/task1_qa/rougeL"] == 100.0
  assert flat["sni/per_task/task2_sentiment/exact_match"] == 0.0
  assert flat["sni/per_category/question_answering/exact_match"] == 100.0
  # Slashes and spaces in task / template names do not add tag levels.
  assert flat["t0/super_glue_cb/GPT-3_style/accuracy"] == 100.0
  assert flat["t0/super_glue_cb/does_it_follow_/accuracy"] == 50.0
  assert flat["t0/super_glue_cb/does_it_follow_/accuracy_per_char"] == 50.0
  assert flat["t0/super_glue_cb/accuracy_median"] == 75.0
  assert flat["t0/super_glue_cb/accuracy_min"] == 50.0
  assert flat["t0/accuracy_mean"] == 75.0
  assert flat["counters/hypernet_calls"] == 3.0
  assert flat["counters/cache_hits"] == 7.0
  assert flat["controls/empty_instruction/sni/rougeL"] == flat["sni/rougeL"]
  assert not any("num_examples" in k for k in flat if not k.startswith("count"))
  assert all(isinstance(v, float) for v in flat.values())


def test_flatten_metrics_rejects_colliding_names():
  rank = {"per_template": {"t": {"a b": {"accuracy": 1.0},
                                 "a/b": {"accuracy": 0.0}}}}
  with pytest.raises(ValueError, match="t0/t/a_b/accuracy"):
    report_lib.flatten_metrics(
        report_lib.make_report(1, rank_classification=rank))


def test_write_scalars_readable_by_event_accumulator(tmp_path):
  flat = report_lib.flatten_metrics(_report())
  logdir = str(tmp_path / "eval")
  report_lib.write_scalars(logdir, 100, flat)
  acc = _load(logdir)
  assert sorted(acc.Tags()["scalars"]) == sorted(flat)
  for name, value in flat.items():
    [event] = acc.Scalars(name)
    assert event.step == 100
    assert event.value == pytest.approx(value, rel=1e-6)  # float32 on disk.


def test_summary_writer_scalars_text_hparams(tmp_path):
  logdir = str(tmp_path / "train")
  with tensorboard.SummaryWriter(logdir) as writer:
    writer.scalar("loss", np.float32(2.5), step=1)
    writer.scalars({"loss": 1.5, "lr": 1e-3, "nan": float("nan")}, step=2)
    writer.text("config", "train.steps = 10", step=0)
    writer.hparams({"lr": 1e-3, "peft": "lora", "layers": 2, "none": None})
    writer.flush()
  with pytest.raises(ValueError, match="closed"):
    writer.scalar("loss", 1.0, step=3)
  writer.close()  # Idempotent.

  acc = _load(logdir)
  assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 2.5),
                                                             (2, 1.5)]
  assert acc.Scalars("lr")[0].value == pytest.approx(1e-3)
  assert math.isnan(acc.Scalars("nan")[0].value)
  [text] = acc.Tensors("config")
  assert text.tensor_proto.string_val == [b"train.steps = 10"]
  assert acc.SummaryMetadata("config").plugin_data.plugin_name == "text"
  assert acc.PluginTagToContent("hparams")  # The HParams dashboard's tag.


def test_summary_writer_rejects_non_numeric(tmp_path):
  with tensorboard.SummaryWriter(str(tmp_path)) as writer:
    with pytest.raises(TypeError, match="'loss'"):
      writer.scalar("loss", "high", step=0)


def test_two_writers_share_a_directory(tmp_path):
  with tensorboard.SummaryWriter(str(tmp_path)) as a, \
      tensorboard.SummaryWriter(str(tmp_path)) as b:
    assert a.path != b.path
    a.scalar("x", 1.0, step=1)
    b.scalar("y", 2.0, step=1)
  acc = _load(str(tmp_path))
  assert sorted(acc.Tags()["scalars"]) == ["x", "y"]


def test_remote_paths_go_through_gfile():
  # ram:// is TensorFlow's in-memory filesystem: exercises the gfile branch.
  with tensorboard.SummaryWriter("ram://hyper_tasks_test/eval") as writer:
    writer.scalar("x", 1.0, step=5)
  assert _load("ram://hyper_tasks_test/eval").Scalars("x")[0].step == 5
  path = report_lib.write_report("ram://hyper_tasks_test", _report(step=5))
  assert report_lib.read_report(path)["step"] == 5
  assert list(report_lib.read_reports("ram://hyper_tasks_test")) == [5]


def test_writer_does_not_import_tensorflow(tmp_path):
  code = ("import sys\n"
          "from hyper_tasks.evaluation import report, tensorboard\n"
          f"w = tensorboard.SummaryWriter({str(tmp_path)!r})\n"
          "w.scalar('x', 1.0, 0); w.text('t', 'x', 0); w.hparams({'a': 1})\n"
          "w.close()\n"
          f"report.write_report({str(tmp_path)!r}, report.make_report(1))\n"
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
  subprocess.run([sys.executable, "-c", code], check=True)
