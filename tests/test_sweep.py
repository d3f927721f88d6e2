"""The sweep: grid parsing, commands, and collection of evaluation reports."""
import csv
import io
import os
import shlex
import sys

import pytest

from hyper_tasks import sweep
from hyper_tasks.evaluation import report as report_lib


def test_parse_grid_and_points_are_the_cartesian_product():
  axes = sweep.parse_grid(["ADAPTER_SIZE=[8,64]", "NUM_PREFIX_TOKENS=[0, 30]",
                           "HYPERNET=['hint','hypter']"])
  assert axes == [("ADAPTER_SIZE", [8, 64]), ("NUM_PREFIX_TOKENS", [0, 30]),
                  ("HYPERNET", ["hint", "hypter"])]
  points = sweep.grid_points(axes)
  assert len(points) == 8
  assert points[0] == {"ADAPTER_SIZE": 8, "NUM_PREFIX_TOKENS": 0, "HYPERNET": "hint"}
  assert points[-1] == {"ADAPTER_SIZE": 64, "NUM_PREFIX_TOKENS": 30,
                        "HYPERNET": "hypter"}
  assert len({sweep.run_name(p) for p in points}) == 8


@pytest.mark.parametrize("spec, message", [
    ("ADAPTER_SIZE", "NAME=\\[v1"),
    ("ADAPTER_SIZE=8", "non-empty list"),
    ("ADAPTER_SIZE=[]", "non-empty list"),
    ("ADAPTER_SIZE=[8,", "not a Python literal"),
    ("1BAD=[1]", "NAME=\\[v1"),
])
def test_malformed_grid_names_the_spec(spec, message):
  with pytest.raises(ValueError, match=message):
    sweep.parse_grid([spec])


def test_duplicate_axis_is_an_error():
  with pytest.raises(ValueError, match="twice"):
    sweep.parse_grid(["A=[1]", "A=[2]"])


def test_train_command_quotes_strings_for_gin():
  point = {"ADAPTER_SIZE": 8, "HYPERNET": "hint"}
  cmd = sweep.train_command(point, "/runs/a b", ["experiments/x.gin", "tiny.gin"],
                            ["TRAIN_STEPS=3"], ["/extra/gin"], python="py")
  assert cmd == ["py", "-m", "hyper_tasks.train",
                 "--gin_file=experiments/x.gin", "--gin_file=tiny.gin",
                 "--gin_search_paths=/extra/gin", "--gin.TRAIN_STEPS=3",
                 "--gin.MODEL_DIR='/runs/a b'", "--gin.ADAPTER_SIZE=8",
                 "--gin.HYPERNET='hint'"]


def test_print_only_prints_one_shell_line_per_point(tmp_path):
  points = sweep.grid_points(sweep.parse_grid(["A=[1,2]", "B=[3]"]))
  out = io.StringIO()
  codes = sweep.run_grid(points, str(tmp_path), ["x.gin"], [], print_only=True,
                         out=out)
  lines = out.getvalue().strip().splitlines()
  assert codes == {} and len(lines) == 2
  argv = shlex.split(lines[1])
  assert argv[1:3] == ["-m", "hyper_tasks.train"]
  assert f"--gin.MODEL_DIR={os.path.join(str(tmp_path), 'A=2,B=3')!r}" in argv
  assert not os.listdir(tmp_path)  # nothing ran


def _write_report(model_dir, step, rouge):
  report = report_lib.make_report(
      step, config="", num_examples=4, hypernet_calls=2, cache_hits=2,
      generation={"overall": {"rougeL": rouge, "exact_match": rouge / 2}})
  report_lib.write_report(str(model_dir), report)


def test_collect_reads_newest_report_and_writes_tables(tmp_path):
  points = sweep.grid_points(sweep.parse_grid(["A=[1,2]", "B=[3,4]"]))
  for i, point in enumerate(points[:3]):  # the 4th run has no report
    run_dir = tmp_path / sweep.run_name(point)
    _write_report(run_dir, 5, 1.0)
    _write_report(run_dir, 10, 10.0 * (i + 1))
  rows = sweep.collect(str(tmp_path), points, metrics=["sni/*"])
  assert [r["run"] for r in rows] == ["A=1,B=3", "A=1,B=4", "A=2,B=3"]
  assert [r["sni/rougeL"] for r in rows] == [10.0, 20.0, 30.0]
  assert all(r["step"] == 10 for r in rows)
  assert "counters/cache_hits" not in rows[0]
  paths = sweep.write_results(str(tmp_path), rows, ["A", "B"])
  md = open(paths["markdown"]).read().splitlines()
  assert md[0] == "| run | A | B | step | sni/rougeL | sni/exact_match |"
  assert md[3].startswith("| A=1,B=4 | 1 | 4 | 10 | 20 | 10 |")
  parsed = list(csv.DictReader(open(paths["csv"])))
  assert parsed[2]["sni/rougeL"] == "30.0" and parsed[2]["A"] == "2"
  for row in rows:
    assert os.listdir(os.path.join(paths["hparams"], row["run"]))


def test_main_collect_only(tmp_path, capsys):
  _write_report(tmp_path / "A=1", 3, 50.0)
  code = sweep.main(["--grid", "A=[1,2]", f"--sweep_dir={tmp_path}",
                     "--collect_only"])
  assert code == 0
  out = capsys.readouterr().out
  assert "| A=1 | 1 | 3 | 50 |" in out and "1/2 runs collected" in out


def test_failed_run_is_reported_and_sweep_goes_on(tmp_path, monkeypatch):
  calls = []

  def fake_run(cmd, check):
    calls.append(cmd)
    return type("R", (), {"returncode": 3 if "--gin.A=1" in cmd else 0})()

  monkeypatch.setattr(sweep.subprocess, "run", fake_run)
  code = sweep.main(["--grid", "A=[1,2]", f"--sweep_dir={tmp_path}",
                     "--gin.X=1"])
  assert code == 1 and len(calls) == 2
  assert all("--gin.X=1" in c for c in calls)
  assert calls[0][0] == sys.executable


def test_tiny_2x2_sweep_end_to_end(tiny_sweep_dir):
  """Four real training runs with evaluation, collected into one table."""
  axes = sweep.parse_grid([a.split("=", 1)[1] for a in sweep.TINY_EXAMPLE_ARGS
                           if a.startswith("--grid=")])
  points = sweep.grid_points(axes)
  assert len(points) == 4
  rows = list(csv.DictReader(open(tiny_sweep_dir / "results.csv")))
  assert sorted(r["run"] for r in rows) == sorted(sweep.run_name(p) for p in points)
  for row in rows:
    assert row["step"] == "3"
    assert 0.0 <= float(row["sni/rougeL"]) <= 100.0
    assert float(row["counters/num_examples"]) > 0
  table = (tiny_sweep_dir / "results.md").read_text()
  assert table.count("\n") == 2 + 4 and "sni/rougeL" in table
  # Each run evaluated the adapter size it was given.
  for point in points:
    config = (tiny_sweep_dir / sweep.run_name(point) / "config.gin").read_text()
    assert f"ADAPTER_SIZE = {point['ADAPTER_SIZE']}" in config
