"""The embedded demo's pipeline end to end (a few steps: plumbing, not learning)."""
import json

import jax
import pytest

from hyper_tasks import demo


# HINT only: the concatenated baseline and the no-instruction control run the same
# stage-2 code with another model (their FLOPs are checked below without training,
# and `bash scripts/local.sh` runs all three); this keeps the suite's time down.
MODELS = ("hint",)
ROWS = ("hint k=0", "hint k=2")


def test_quick_demo_produces_the_few_shot_comparison_table(tmp_path, capsys):
  code = demo.main(["--quick", f"--out_dir={tmp_path}", "--models=" + ",".join(MODELS),
                    "--seed=3"])
  assert code == 0
  out = capsys.readouterr().out
  table = [l for l in out.splitlines() if l.startswith("| ")]
  assert table[0].startswith("| model | seen instr. EM | held-out phrasing EM | "
                             "held-out op EM | FLOPs/instance | hypernet FLOPs/task")
  assert [l.split("|")[1].strip() for l in table[1:]] == list(ROWS) + [
      "fixed answer per op"]
  assert "JSON report:" in out and (tmp_path / "demo_report.json").is_file()
  report = json.loads((tmp_path / "demo_report.json").read_text())
  assert report["config"]["seed"] == 3 and report["config"]["shots"] == 2
  assert ("toy_pos_2_train", 0.2) in [tuple(p) for p in
                                      report["config"]["train_mixture"]]
  for kind in MODELS:
    # Three toy test sets, zero-shot and with 2 examples.
    evals = sorted(p.name for p in (tmp_path / f"stage2_{kind}" / "demo_eval").glob(
        "*.json"))
    assert len(evals) == 6, evals
    assert f"toy_{'concat_' if kind == 'concat' else ''}def_pos_2_test_heldout_op.json" \
        in evals
    assert list((tmp_path / f"stage2_{kind}" / "train").iterdir())
  rows = {r["model"]: r for r in report["rows"]}
  # The examples cost HINT little per instance (they go to the once-per-task
  # hypernetwork and fused cross-attention keys).
  flops = {m: rows[m]["FLOPs/instance"] for m in ROWS}
  assert flops["hint k=0"] < flops["hint k=2"] < 1.15 * flops["hint k=0"]
  assert rows["hint k=2"]["hypernet FLOPs/task"] > rows["hint k=0"][
      "hypernet FLOPs/task"]
  assert "HINT with 2 examples vs zero-shot on held-out operations" in out
  assert "a fixed answer per operation: 23.8" in out  # of the full test sets


def test_concat_baseline_pays_for_the_examples_in_every_instance():
  """Per-instance inference FLOPs: HINT's are below the concatenated baseline's,
  and the baseline's grow with the examples' whole length."""
  cfg = demo.backbone_config()
  shapes = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 4)}
  cost = {}
  for kind, shots in (("hint", 0), ("concat", 0), ("concat", 2)):
    model = demo.build_model(kind, cfg)
    params = model.get_initial_variables(jax.random.PRNGKey(0), shapes,
                                         boxed=False)["params"]
    cost[kind, shots] = demo.instance_flops(model, params, kind,
                                            shots=shots)["per_instance"]
  assert cost["hint", 0] < cost["concat", 0]
  assert cost["concat", 2] > 2 * cost["concat", 0]  # HINT's: the test below.

def test_demo_rejects_more_examples_than_the_toy_tasks_have(tmp_path):
  with pytest.raises(ValueError, match=r"shots=5 positive examples asked; the toy "
                                       r"tasks have 1 to 4"):
    demo.run(str(tmp_path), shots=5)


@pytest.mark.parametrize("fusion", [True, False])
def test_examples_cost_hint_per_instance_only_through_fusion(fusion):
  """The examples reach HINT's hypernetwork (once per task); per instance they
  cost only instruction fusion's extra cross-attention keys."""
  cfg = demo.backbone_config()
  model = demo.build_model("hint", cfg, fusion=fusion)
  params = model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (2, 8),
                              "decoder_input_tokens": (2, 4)}, boxed=False)["params"]
  zero = demo.instance_flops(model, params, "hint", shots=0)
  few = demo.instance_flops(model, params, "hint", shots=2)
  assert few["per_task"] > 2 * zero["per_task"]
  if fusion:
    assert zero["per_instance"] < few["per_instance"] < 1.15 * zero["per_instance"]
  else:
    assert few["per_instance"] == zero["per_instance"]
