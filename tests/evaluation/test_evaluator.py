"""Tests for the evaluator: rank classification, generation, cache, controls.

One tiny hypernetwork model (d_model 32, 2 layers, byte vocabulary) is briefly
trained on the toy tasks and shared by the module; every evaluation uses the
same batch size and sequence lengths, so each jitted function compiles once.
"""

import collections
import json

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline
from hyper_tasks.data import toy
from hyper_tasks.evaluation import batching
from hyper_tasks.evaluation import evaluator
from hyper_tasks.evaluation import metrics
from hyper_tasks.evaluation import records as records_lib
from hyper_tasks.evaluation import report as report_lib
from hyper_tasks.evaluation import runner
from hyper_tasks.models import config as config_lib
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.peft.static import set_path
from hyper_tasks.models.peft_spec import AdapterSpec, PeftSpec
from hyper_tasks.models.transformer import Transformer
from tests.evaluation import evallib

LENGTHS = {"hyper_inputs": 72, "inputs": 16, "targets": 16}
BATCH = 8
VOCAB = "byte"
GEN_OPS = ("list_length", "list_max", "word_first_letter_upper")
RANK_OPS = ("list_first", "list_min", "list_sort")


class PoolHypernet(nn.Module):
  """Mean-pooled instruction -> one dense projection per PEFT slot."""
  config: config_lib.T5Config
  spec: PeftSpec

  @nn.compact
  def __call__(self, h, mask, deterministic=True):
    m = mask[..., None].astype(h.dtype)
    pooled = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)  # [B, D]
    tree = {}
    for slot in self.spec.slots(self.config):
      v = nn.Dense(slot.size, name="_".join(slot.path),
                   kernel_init=nn.initializers.normal(0.2))(pooled)
      set_path(tree, slot.path, v.reshape((-1,) + slot.shape))
    return tree


def _make_model(hypernet=True):
  cfg = config_lib.preset("t5_1_1", "tiny", vocab_size=260, dropout_rate=0.0)
  spec = PeftSpec(adapter=AdapterSpec(size=4)) if hypernet else PeftSpec()
  module = Transformer(cfg, spec, PoolHypernet(cfg, spec) if hypernet else None,
                       instruction_fusion=hypernet)
  model = EncoderDecoderModel(module)
  return model, _random_params(model)


_random_params = evallib.random_params


def _train(model, params, steps=40):
  """A few dozen Adam steps on the toy training mixture."""
  records = list(toy.records("", "train", "train"))[::7]
  arrays = batching.encode_records(records, VOCAB, LENGTHS).arrays
  step, state = evallib.adam_trainer(model, params)

  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    idx = rng.choice(len(records), 16, replace=False)
    params, state, loss = step(params, state,
                               {k: v[idx] for k, v in arrays.items()})
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
  return params


@pytest.fixture(scope="module")
def trained():
  model, params = _make_model()
  return model, _train(model, params, steps=80)


def _toy_test(op, which, n):
  """``n`` test records of ``op``'s ``which``-th tested phrasing (4 each)."""
  records = [r for r in toy.records("", "test_seen", "test")
             if r[F.TASK_NAMES] == op]
  templates = sorted({r[F.TEMPLATE] for r in records})
  rows = [r for r in records if r[F.TEMPLATE] == templates[which]]
  assert len(rows) >= n
  return rows[:n]


def _generation_records():
  """Instruction groups of 3 and 4 rows, interleaved (batches straddle them)."""
  groups = [_toy_test(op, p, 3 + (i % 2)) for i, (op, p) in enumerate(
      (op, p) for op in GEN_OPS for p in (0, 1))]
  out = []
  for i in range(max(len(g) for g in groups)):
    out.extend(g[i] for g in groups if i < len(g))
  return out


def _rank_records():
  """Toy list instances as multiple choice over three operations' outputs."""
  out = []
  for op_name in RANK_OPS:
    for phrasing in (0, 1):
      for record in _toy_test(op_name, phrasing, 3):
        x = record[F.INPUTS]
        choices = []
        for other in RANK_OPS:
          y = toy.OPERATIONS_BY_NAME[other].fn(x)
          if y not in choices:
            choices.append(y)
        for i, choice in enumerate(choices):
          row = dict(record)
          row.update({F.TARGETS: choice, F.CHOICE_INDEX: i,
                      F.IS_CORRECT: int(choice == record[F.TARGETS]),
                      F.NUM_CHOICES: len(choices)})
          out.append(row)
  return out


def _run(model, params, records, **kwargs):
  kwargs.setdefault("progress", False)
  return evaluator.run_records(model, params, records,
                               sequence_lengths=LENGTHS, vocabulary=VOCAB,
                               batch_size=BATCH, **kwargs)


def _pad(texts, length):
  ids = pipeline.tokenize(texts, VOCAB)
  assert all(len(i) <= length for i in ids)
  return np.array([i + [0] * (length - len(i)) for i in ids], np.int32)


def _direct_batches(records):
  """Model batches of `BATCH` rows in record order, tokenized and padded here
  (no evaluator batching, ordering or cache); the last one padded with zeros."""
  records = list(records) + [records[-1]] * (-len(records) % BATCH)
  for start in range(0, len(records), BATCH):
    chunk = records[start:start + BATCH]
    targets = _pad([r[F.TARGETS] for r in chunk], LENGTHS["targets"])
    yield {
        "hyper_encoder_input_tokens": _pad([r[F.HYPER_INPUTS] for r in chunk],
                                           LENGTHS["hyper_inputs"]),
        "encoder_input_tokens": _pad([r[F.INPUTS] for r in chunk],
                                     LENGTHS["inputs"]),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_loss_weights": (targets > 0).astype(np.int32),
    }


def _direct_scores(model, params, records):
  """`score_batch` with the model running its hypernetwork on every row.

  The jitted `score_batch` wrapper is the runner's only to reuse its
  compilation (it is `jax.jit(model.score_batch)`); nothing else of the
  evaluator is involved.
  """
  score = runner.score_fn(model)
  scores = np.concatenate([np.asarray(score(params, b, None))
                           for b in _direct_batches(records)])
  targets = _pad([r[F.TARGETS] for r in records], LENGTHS["targets"])
  return scores[:len(records)], (targets > 0).sum(1)


def _distinct(records, key=F.HYPER_INPUTS):
  return len({r[key] for r in records})


# -- rank classification ------------------------------------------------------


@pytest.fixture(scope="module")
def rank_run(trained):
  model, params = trained
  records = _rank_records()
  return records, _run(model, params, records)


def test_rank_classification_picks_highest_independent_log_likelihood(
    trained, rank_run):
  model, params = trained
  records, result = rank_run
  direct, num_tokens = _direct_scores(model, params, records)
  by_example = {}
  for r, s, n in zip(records, direct, num_tokens):
    by_example.setdefault(r[F.EXAMPLE_ID], []).append((r, s, n))
  assert len(result.rank_outputs) == len(by_example) == 18
  correct = {"sum": [], "per_token": [], "per_char": []}
  for out in result.rank_outputs:
    rows = by_example[out["example_id"]]
    scores = np.array([s for _, s, _ in rows])
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-5, atol=1e-4)
    rules = {
        "sum": scores,
        "per_token": scores / np.array([n for _, _, n in rows]),
        "per_char": scores / np.array([len(r[F.TARGETS]) for r, _, _ in rows]),
    }
    for rule, values in rules.items():
      pick = int(np.argmax(values))
      assert out["predictions"][rule] == pick, (rule, out)
      correct[rule].append(bool(rows[pick][0][F.IS_CORRECT]))
    assert out["prediction"] == rows[int(np.argmax(scores))][0][F.TARGETS]
  overall = result.rank_classification["overall"]
  for rule, name in (("sum", "accuracy"), ("per_token", "accuracy_per_token"),
                     ("per_char", "accuracy_per_char")):
    per_template = result.rank_classification["per_template"]
    accs = [t[name] for task in per_template.values() for t in task.values()]
    assert overall[name]["mean"] == pytest.approx(np.mean(accs))
    # Every template has 3 examples, so the mean over templates (then tasks)
    # is the plain accuracy.
    assert overall[name]["mean"] == pytest.approx(
        100.0 * np.mean(correct[rule]))


def test_length_normalised_rules_differ_where_lengths_differ(rank_run):
  _, result = rank_run
  # Choices of 1 token + EOS vs 5 digits with spaces: the sum rule and the
  # per-token rule disagree on some examples, and only where lengths differ.
  disagree = [o for o in result.rank_outputs
              if o["predictions"]["sum"] != o["predictions"]["per_token"]]
  assert disagree, "expected the length normalisation to change a prediction"
  for out in disagree:
    assert len(set(out["num_target_tokens"])) > 1
    s, t = out["predictions"]["sum"], out["predictions"]["per_token"]
    assert out["num_target_tokens"][s] < out["num_target_tokens"][t]
  per_task = result.rank_classification["per_task"]
  assert set(per_task) == set(RANK_OPS)
  for entry in per_task.values():
    assert entry["num_templates"] == 2
    stats = entry["accuracy"]
    assert stats["min"] <= stats["median"] <= stats["max"]


# -- generation ---------------------------------------------------------------


def test_generation_metrics_equal_recomputed_from_predictions(trained):
  model, params = trained
  records = _generation_records()
  for method in ("greedy", "beam"):
    result = _run(model, params, records, decode_method=method, num_beams=2)
    outs = result.generation_outputs
    assert [o["inputs"] for o in outs] == [r[F.INPUTS] for r in records]
    recomputed = metrics.compute_generation_metrics(
        [o["prediction"] for o in outs],
        [json.loads(r[F.REFERENCES]) for r in records],
        [r[F.TASK_NAMES] for r in records], [r[F.CATEGORY] for r in records])
    assert result.generation == recomputed
    assert set(result.generation["per_task"]) == set(GEN_OPS)
    assert set(result.generation["per_category"]) == {"list", "word"}
    # A trained model writes something in the right alphabet.
    assert any(o["prediction"] for o in outs)


# -- the adaptation cache --------------------------------------------------------


def test_cache_gives_identical_scores_and_counts_hits(trained):
  model, params = trained
  records = _generation_records() + _rank_records()
  cached = _run(model, params, records, use_cache=True)
  uncached = _run(model, params, records, use_cache=False)

  assert cached.generation == uncached.generation
  assert cached.rank_classification == uncached.rank_classification
  assert ([o["prediction"] for o in cached.generation_outputs] ==
          [o["prediction"] for o in uncached.generation_outputs])
  for a, b in zip(cached.rank_outputs, uncached.rank_outputs):
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-5)

  # Both equal a direct greedy decode of the records in their own order.
  predict = runner.predict_fn(
      model, "greedy", 1, LENGTHS["targets"])
  gen = _generation_records()
  direct = []
  for batch in _direct_batches(gen):
    tokens = predict(params, {k: batch[k] for k in (
        "encoder_input_tokens", "hyper_encoder_input_tokens")}, None)
    direct += pipeline.detokenize(np.asarray(tokens), VOCAB)
  assert ([o["prediction"] for o in cached.generation_outputs] ==
          direct[:len(gen)])

  distinct = _distinct(records)
  assert distinct == 12  # 6 generation and 6 rank-classification phrasings.
  assert cached.hypernet_calls == distinct
  assert cached.cache_hits == len(records) - distinct
  assert uncached.hypernet_calls == len(records)
  assert uncached.cache_hits == 0


def test_report_of_evaluate_examples(trained):
  model, params = trained
  records = _generation_records() + _rank_records()
  report = evaluator.evaluate_examples(
      model, params, records, sequence_lengths=LENGTHS, vocabulary=VOCAB,
      batch_size=BATCH, step=7, config_str="x = 1", progress=False)
  report_lib.validate_report(report)
  assert report["step"] == 7 and report["config"] == "x = 1"
  num_generation = len(_generation_records())
  assert report["num_examples"] == num_generation + 18
  assert report["num_rank_classification_rows"] == len(_rank_records())
  assert report["hypernet_calls"] == _distinct(records)
  assert report["generation"]["overall"]["num_examples"] == num_generation
  assert report["rank_classification"]["overall"]["num_tasks"] == 3
  flat = report_lib.flatten_metrics(report)
  assert "sni/rougeL" in flat and "t0/accuracy_median" in flat
  json.dumps(report)  # Serialisable as is.


def test_model_without_hypernetwork_ignores_instructions():
  model, params = _make_model(hypernet=False)
  records = _generation_records()[:BATCH]
  result = _run(model, params, records)
  emptied = _run(model, params, records, control="empty")
  assert result.hypernet_calls == result.cache_hits == 0
  assert ([o["prediction"] for o in result.generation_outputs] ==
          [o["prediction"] for o in emptied.generation_outputs])


# -- controls ------------------------------------------------------------------


def test_controls_rewrite_instructions_per_example():
  records = _generation_records() + _rank_records()
  by_task = {}
  for r in records:
    by_task.setdefault(r[F.TASK_NAMES], set()).add(r[F.HYPER_INPUTS])

  shuffled = records_lib.apply_control(records, "shuffle", seed=3)
  rank_instr = {}
  for before, after in zip(records, shuffled):
    assert {k: v for k, v in before.items() if k != F.HYPER_INPUTS} == {
        k: v for k, v in after.items() if k != F.HYPER_INPUTS}
    # Another task's instruction.
    assert after[F.HYPER_INPUTS] not in by_task[before[F.TASK_NAMES]]
    if before[F.NUM_CHOICES] > 1:
      rank_instr.setdefault(before[F.EXAMPLE_ID], set()).add(
          after[F.HYPER_INPUTS])
  # All answer choices of one example keep one instruction.
  assert rank_instr and all(len(v) == 1 for v in rank_instr.values())

  empty = records_lib.apply_control(records, "empty")
  assert {r[F.HYPER_INPUTS] for r in empty} == {""}

  randomized = records_lib.apply_control(records, "random", seed=1)
  for before, after in zip(records, randomized):
    assert after[F.HYPER_INPUTS] != before[F.HYPER_INPUTS]
    assert (len(after[F.HYPER_INPUTS].split()) ==
            len(before[F.HYPER_INPUTS].split()))


def test_controlled_run_feeds_the_rewritten_instruction(trained):
  model, params = trained
  records = _generation_records() + _rank_records()
  real = _run(model, params, records)
  empty = _run(model, params, records, control="empty")
  shuffled = _run(model, params, records, control="shuffle")
  # One distinct (empty) instruction: the hypernetwork ran once.
  assert empty.hypernet_calls == 1
  assert empty.cache_hits == len(records) - 1
  assert {o["hyper_inputs"] for o in empty.generation_outputs} == {""}
  # The model reads the instruction, so the rewritten one changes the scores.
  scores = lambda r: np.concatenate([o["scores"] for o in r.rank_outputs])
  for controlled in (empty, shuffled):
    assert np.abs(scores(controlled) - scores(real)).max() > 1e-3

  report = evaluator.evaluate_examples(
      model, params, records, sequence_lengths=LENGTHS, vocabulary=VOCAB,
      batch_size=BATCH, control="empty", progress=False)
  assert report["generation"] == {} and report["control"] == (
      "empty_instruction")
  section = report["controls"]["empty_instruction"]
  assert section["generation"] == empty.generation
  assert section["hypernet_calls"] == 1
  assert "controls/empty_instruction/sni/rougeL" in report_lib.flatten_metrics(
      report)


# -- seqio names, infer ---------------------------------------------------------


def _groups(subset):
  """``{(task, template): number of records}``."""
  return collections.Counter((r[F.TASK_NAMES], r[F.TEMPLATE])
                             for r in toy.records("", subset, "test"))


def test_evaluate_infer_and_evaluate_many_by_name(trained, tmp_path):
  model, params = trained
  common = dict(split="test", sequence_lengths=LENGTHS, batch_size=BATCH,
                vocabulary=VOCAB, progress=False)
  report = evaluator.evaluate(model, params, "toy_test_seen", max_examples=2,
                              step=3, **common)
  report_lib.validate_report(report)
  assert report["name"] == "toy_test_seen" and report["step"] == 3
  # max_examples caps each (task, template) group; a toy template is one
  # phrasing, i.e. one instruction.
  groups = _groups("test_seen")
  capped = sum(min(2, n) for n in groups.values())
  assert len(groups) > 20 and capped < sum(groups.values())
  assert report["num_examples"] == capped
  assert report["hypernet_calls"] == len(groups)
  assert report["cache_hits"] == capped - len(groups)
  assert set(report["generation"]["per_task"]) == {t for t, _ in groups}

  path = evaluator.infer(model, params, "toy_test_seen", max_examples=2,
                         output_path=str(tmp_path / "out" / "preds.jsonl"),
                         **common)
  lines = [json.loads(l) for l in open(path, encoding="utf-8")]
  assert len(lines) == capped
  recomputed = metrics.compute_generation_metrics(
      [l["prediction"] for l in lines], [l["references"] for l in lines])
  assert recomputed["overall"] == report["generation"]["overall"]

  merged = evaluator.evaluate_many(
      model, params, ["toy_test_seen", "toy_test_heldout_op"], max_examples=1,
      controls=("shuffle", "empty"), **common)
  report_lib.validate_report(merged)
  assert merged["name"] == "toy_test_seen+toy_test_heldout_op"
  heldout = _groups("test_heldout_op")
  assert merged["num_examples"] == len(groups) + len(heldout)
  assert set(merged["generation"]["per_task"]) == {
      t for t, _ in groups | heldout}
  assert set(merged["controls"]) == {"shuffled_instruction",
                                     "empty_instruction"}
  assert merged["controls"]["empty_instruction"]["hypernet_calls"] == 1
  assert (merged["controls"]["shuffled_instruction"]["generation"]["overall"]
          ["num_examples"] == merged["num_examples"])


# -- errors --------------------------------------------------------------------


def test_errors_name_the_task_and_example(trained):
  model, params = trained
  records = _generation_records()
  bad = [dict(r) for r in records]
  bad[2][F.REFERENCES] = "[]"
  with pytest.raises(ValueError, match=(
      f"task '{bad[2][F.TASK_NAMES]}' example '{bad[2][F.EXAMPLE_ID]}' has no "
      "references")):
    _run(model, params, bad)

  rank = _rank_records()
  first = next(r[F.EXAMPLE_ID] for r in rank if r[F.NUM_CHOICES] == 3)
  wrong = [dict(r, **{F.IS_CORRECT: 0}) if r[F.EXAMPLE_ID] == first else r
           for r in rank]
  with pytest.raises(ValueError, match=(
      f"example '{first}': no answer choice is marked correct")):
    _run(model, params, wrong)

  missing = [r for r in rank if not (r[F.EXAMPLE_ID] == first
                                     and r[F.CHOICE_INDEX] == 1)]
  with pytest.raises(ValueError, match="has choice rows \\[0, 2\\]"):
    _run(model, params, missing)

  with pytest.raises(ValueError, match="Unknown control 'upside_down'"):
    _run(model, params, records, control="upside_down")
  with pytest.raises(ValueError, match="decode_method"):
    _run(model, params, records, decode_method="sample")
  one_task = [r for r in records if r[F.TASK_NAMES] == "list_max"]
  with pytest.raises(ValueError, match="at least 2 distinct tasks"):
    _run(model, params, one_task, control="shuffle")
  with pytest.raises(ValueError, match="no examples in split 'nope'"):
    evaluator.evaluate(model, params, "toy_test_seen", split="nope",
                       sequence_lengths=LENGTHS, vocabulary=VOCAB,
                       progress=False)
  with pytest.raises(ValueError, match="sequence_lengths needs keys"):
    evaluator.run_records(model, params, records, sequence_lengths={},
                          vocabulary=VOCAB)


def test_a_task_name_cannot_be_both_generation_and_rank(monkeypatch, trained):
  model, params = trained
  rank = [r for r in _rank_records() if r[F.TASK_NAMES] == "list_first"]
  gen = [r for r in toy.records("", "test_seen", "test")
         if r[F.TASK_NAMES] == "list_first"][:2]
  fake = {"a": [records_lib.TaskRecords("seqio_gen", gen, False)],
          "b": [records_lib.TaskRecords("seqio_rank", rank, True)]}
  monkeypatch.setattr(records_lib, "load_task_records",
                      lambda name, split, **kwargs: fake[name])
  with pytest.raises(ValueError, match=(
      "'list_first' is evaluated by rank classification in 'seqio_rank' and "
      "by generation in 'seqio_gen'")):
    evaluator.evaluate_many(model, params, ["a", "b"], sequence_lengths=LENGTHS,
                            vocabulary=VOCAB, progress=False)
