"""The embedded demo's pipeline end to end (a few steps: plumbing, not learning)."""
import json

from hyper_tasks import demo


# HINT and the concatenated baseline; the no-instruction control is HINT with one
# flag (tests/models cover it), so the suite skips its third training here.
MODELS = ("hint", "concat")


def test_quick_demo_produces_the_comparison_table(tmp_path, capsys):
  code = demo.main(["--quick", f"--out_dir={tmp_path}", "--models=" + ",".join(MODELS),
                    "--seed=3"])
  assert code == 0
  out = capsys.readouterr().out
  table = [l for l in out.splitlines() if l.startswith("| ")]
  assert table[0].startswith("| model | seen instr. EM | held-out phrasing EM")
  assert [l.split("|")[1].strip() for l in table[1:]] == list(MODELS)
  assert "JSON report:" in out and (tmp_path / "demo_report.json").is_file()
  report = json.loads((tmp_path / "demo_report.json").read_text())
  assert report["config"]["seed"] == 3
  for kind in MODELS:
    assert len(list((tmp_path / f"stage2_{kind}" / "demo_eval").glob("*.json"))) == 4
    assert list((tmp_path / f"stage2_{kind}" / "train").iterdir())
  # HINT's per-instance inference is cheaper than the concatenated baseline's.
  rows = {l.split("|")[1].strip(): l for l in table[1:]}
  hint_flops = float(rows["hint"].split("|")[6].split("M")[0])
  concat_flops = float(rows["concat"].split("|")[6].split("M")[0])
  assert hint_flops < concat_flops
