"""The sweep: grid parsing, commands, resolving and checking every point's
configuration, and collection of evaluation reports."""
import csv
import io
import os
import shlex
import subprocess
import sys

import gin
import pytest

from hyper_tasks import sweep
from hyper_tasks.sweep import runner as sweep_runner
from hyper_tasks.evaluation import report as report_lib

# A real experiment, resolved (parsed) but never trained by the tests below.
TINY = ["--gin_file=experiments/hint_finetune_sni.gin", "--gin_file=tiny.gin"]


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
    ("ADAPTER_SIZE=[8,{1,2}]", "\\{1, 2\\} is not a gin literal"),
    ("ADAPTER_SIZE=[8,...]", "Ellipsis is not a gin literal"),
    ("ADAPTER_SIZE=[8,16,8.0]", "8.0 is given twice"),
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


pytestmark = pytest.mark.usefixtures("clean_gin")


def _fake_runs(monkeypatch, fake):
  """Training commands go to ``fake(cmd)``; other subprocesses (libraries probing
  the platform while the configuration's modules import) run as usual."""
  real = subprocess.run

  def run(cmd, *args, **kwargs):
    if isinstance(cmd, list) and "hyper_tasks.train" in cmd:
      return type("R", (), {"returncode": fake(cmd)})()
    return real(cmd, *args, **kwargs)

  monkeypatch.setattr(subprocess, "run", run)


def _no_runs(monkeypatch):
  def fail(*unused_args, **unused_kwargs):
    raise AssertionError("the sweep ran a point")
  _fake_runs(monkeypatch, fail)
  monkeypatch.setattr(sweep_runner, "_run_in_process", fail)


def test_main_collect_only(tmp_path, capsys, monkeypatch):
  _no_runs(monkeypatch)
  _write_report(tmp_path / "ADAPTER_SIZE=4", 3, 50.0)
  code = sweep.main(TINY + ["--grid", "ADAPTER_SIZE=[4,8]",
                            f"--sweep_dir={tmp_path}", "--collect_only"])
  assert code == 0
  out = capsys.readouterr().out
  assert ("| run | ADAPTER_SIZE | make_peft_spec.adapter_size | step | sni/rougeL"
          in out)
  assert "| ADAPTER_SIZE=4 | 4 | 4 | 3 | 50 |" in out
  assert "1/2 runs collected" in out


def test_failed_run_is_reported_and_sweep_goes_on(tmp_path, monkeypatch):
  calls = []

  def fake_run(cmd):
    calls.append(cmd)
    return 3 if "--gin.ADAPTER_SIZE=4" in cmd else 0

  _fake_runs(monkeypatch, fake_run)
  code = sweep.main(TINY + ["--grid", "ADAPTER_SIZE=[4,8]",
                            f"--sweep_dir={tmp_path}", "--gin.TRAIN_STEPS=3"])
  assert code == 1 and len(calls) == 2
  assert all("--gin.TRAIN_STEPS=3" in c for c in calls)
  assert calls[0][0] == sys.executable


def test_misspelled_grid_macro_is_refused_with_a_suggestion(tmp_path, capsys,
                                                            monkeypatch):
  _no_runs(monkeypatch)
  code = sweep.main(TINY + ["--grid", "ADAPTR_SIZE=[4,8]",
                            f"--sweep_dir={tmp_path}", "--in_process"])
  assert code == 2
  err = capsys.readouterr().err
  assert ("ADAPTR_SIZE: no configuration reads this macro; did you mean "
          "ADAPTER_SIZE? (grid points ADAPTR_SIZE=4, ADAPTR_SIZE=8)") in err
  assert not os.listdir(tmp_path)


def test_misspelled_sweep_binding_is_refused(tmp_path, capsys, monkeypatch):
  _no_runs(monkeypatch)
  code = sweep.main(TINY + ["--grid", "ADAPTER_SIZE=[4,8]", "--gin.TRAIN_STEPZ=3",
                            f"--sweep_dir={tmp_path}", "--print_only"])
  assert code == 2
  err = capsys.readouterr().err
  assert "without the grid" in err
  assert "TRAIN_STEPZ: no configuration reads this macro; did you mean TRAIN_STEPS?" in err


def test_axis_also_bound_by_the_sweep_is_refused(tmp_path, capsys, monkeypatch):
  _no_runs(monkeypatch)
  code = sweep.main(TINY + ["--grid", "TRAIN_STEPS=[3,4]", "--gin.TRAIN_STEPS=3",
                            f"--sweep_dir={tmp_path}"])
  assert code == 2
  assert "TRAIN_STEPS: both a --grid axis and a --gin binding" in (
      capsys.readouterr().err)


def test_points_that_resolve_to_the_same_configuration_are_refused(
    tmp_path, capsys, monkeypatch):
  # The job scripts forward C4_PATH from the environment to every job, so an unread
  # C4_PATH is not an unknown macro; an SNI run reads no C4_PATH, so both points
  # resolve to the same configuration.
  _no_runs(monkeypatch)
  monkeypatch.setenv("C4_PATH", "/data/c4")
  code = sweep.main(TINY + ["--grid", "C4_PATH=['/a','/b']",
                            f"--sweep_dir={tmp_path}", "--print_only"])
  assert code == 2
  err = capsys.readouterr().err
  assert "--grid C4_PATH=['/a', '/b']: its values change no configurable" in err
  assert "C4_PATH=_a, C4_PATH=_b" in err


def test_check_points_differ_names_duplicate_points():
  axes = sweep.parse_grid(["A=[1,2]", "B=[1,2]"])
  points = sweep.grid_points(axes)
  # A and B each change the configuration, but A=1,B=2 and A=2,B=1 coincide.
  configs = [{"x": a + b, "y": 0} for a, b in ((1, 1), (1, 2), (2, 1), (2, 2))]
  resolution = sweep.Resolution({"x": 0, "y": 0}, configs)
  with pytest.raises(sweep.SweepError,
                     match="grid points A=1,B=2, A=2,B=1 resolve to the same"):
    sweep.check_points_differ(axes, points, resolution)
  sweep.check_points_differ(
      axes, points, sweep.Resolution({}, [{"x": i} for i in range(4)]))
  assert resolution.varied() == ["x"]
  assert resolution.differences(1) == {"x": 3}


def test_print_only_shows_each_points_resolved_differences(tmp_path, capsys,
                                                           monkeypatch):
  _no_runs(monkeypatch)
  code = sweep.main(TINY + ["--grid", "ADAPTER_SIZE=[4,8]",
                            "--grid", "NUM_PREFIX_TOKENS=[0,2]",
                            f"--sweep_dir={tmp_path}", "--print_only"])
  assert code == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 8  # per point: its differences, then its command
  # tiny.gin's ADAPTER_SIZE = 4, NUM_PREFIX_TOKENS = 2 are the base.
  assert lines[0] == ("# ADAPTER_SIZE=4,NUM_PREFIX_TOKENS=0: "
                      "make_peft_spec.num_prefix_tokens=0")
  assert lines[2] == "# ADAPTER_SIZE=4,NUM_PREFIX_TOKENS=2: (the base configuration)"
  assert lines[6] == "# ADAPTER_SIZE=8,NUM_PREFIX_TOKENS=2: make_peft_spec.adapter_size=8"
  assert shlex.split(lines[7])[-2:] == ["--gin.ADAPTER_SIZE=8",
                                        "--gin.NUM_PREFIX_TOKENS=2"]
  assert not os.listdir(tmp_path)


def test_valid_2x2_grid_runs_and_its_table_shows_resolved_values(tmp_path,
                                                                 monkeypatch):
  """The runs are faked (a report per MODEL_DIR); see the end-to-end test below
  for real ones."""
  calls = []

  def fake_run(cmd):
    calls.append(cmd)
    model_dir = next(a for a in cmd if a.startswith("--gin.MODEL_DIR="))
    _write_report(model_dir.split("=", 1)[1].strip("'"), 3, 10.0 * len(calls))
    return 0

  _fake_runs(monkeypatch, fake_run)
  code = sweep.main(TINY + ["--grid", "ADAPTER_SIZE=[4,8]",
                            "--grid", "HYPER_MLP=[16,32]",
                            f"--sweep_dir={tmp_path}"])
  assert code == 0 and len(calls) == 4
  md = (tmp_path / "results.md").read_text().splitlines()
  assert md[0] == ("| run | ADAPTER_SIZE | HYPER_MLP | make_model.hypernet_kwargs.mlp_dim"
                   " | make_peft_spec.adapter_size | step | sni/rougeL "
                   "| sni/exact_match |")
  assert md[5].startswith("| ADAPTER_SIZE=8,HYPER_MLP=32 | 8 | 32 | 32 | 8 | 3 | 40 |")
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert [r["make_peft_spec.adapter_size"] for r in rows] == ["4", "4", "8", "8"]
  hparams = tmp_path / "hparams" / "ADAPTER_SIZE=4,HYPER_MLP=32"
  events = b"".join(p.read_bytes() for p in hparams.iterdir())
  assert b"make_model.hypernet_kwargs.mlp_dim" in events


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
  # Each run evaluated the adapter size it was given; the table says what it set.
  for point in points:
    config = (tiny_sweep_dir / sweep.run_name(point) / "config.gin").read_text()
    assert f"ADAPTER_SIZE = {point['ADAPTER_SIZE']}" in config
  for row in rows:
    point = next(p for p in points if sweep.run_name(p) == row["run"])
    assert row["make_peft_spec.adapter_size"] == str(point["ADAPTER_SIZE"])
    assert row["make_peft_spec.num_prefix_tokens"] == str(point["NUM_PREFIX_TOKENS"])


def test_parse_seeds():
  assert sweep.parse_seeds("0,1, 2") == [0, 1, 2]
  assert sweep.parse_seeds(None) is None and sweep.parse_seeds("") is None
  with pytest.raises(ValueError, match="'x' is not an integer"):
    sweep.parse_seeds("0,x")
  with pytest.raises(ValueError, match="1 is given twice"):
    sweep.parse_seeds("1,1")


def test_aggregate_seeds_mean_and_std():
  rows = [{"run": "A=1,seed=0", "A": 1, "seed": 0, "step": 3, "sni/rougeL": 10.0},
          {"run": "A=1,seed=1", "A": 1, "seed": 1, "step": 3, "sni/rougeL": 20.0},
          {"run": "A=2,seed=0", "A": 2, "seed": 0, "step": 3, "sni/rougeL": 5.0}]
  agg = sweep.aggregate_seeds(rows, ["A"])
  assert agg[0] == {"run": "A=1", "A": 1, "seeds": "0,1", "num_seeds": 2,
                    "step": 3, "sni/rougeL": 15.0,
                    "sni/rougeL_std": pytest.approx(50 ** 0.5)}
  assert agg[1]["sni/rougeL"] == 5.0 and agg[1]["sni/rougeL_std"] == 0.0


def test_seeds_run_each_point_per_seed_and_aggregate(tmp_path, capsys,
                                                     monkeypatch):
  """Points differing only by seed are not duplicates; each run gets its seed in
  train.seed and train.data_seed; the table is one row per point."""
  calls = []

  def fake_run(cmd):
    calls.append(cmd)
    model_dir = next(a for a in cmd if a.startswith("--gin.MODEL_DIR="))
    seed = int(next(a for a in cmd if a.startswith("--gin.train.seed="))
               .split("=")[1])
    size = 4 if "--gin.ADAPTER_SIZE=4" in cmd else 8
    _write_report(model_dir.split("=", 1)[1].strip("'"), 3, size + seed)
    return 0

  _fake_runs(monkeypatch, fake_run)
  code = sweep.main(TINY + ["--grid", "ADAPTER_SIZE=[4,8]", "--seeds", "0,1,2",
                            f"--sweep_dir={tmp_path}"])
  assert code == 0, capsys.readouterr().err
  assert len(calls) == 6
  for cmd in calls:
    seed = cmd[-1].split("=")[1]
    assert cmd[-2:] == [f"--gin.train.seed={seed}", f"--gin.train.data_seed={seed}"]
    assert any(a.endswith(f",seed={seed}'") for a in calls[0] + cmd
               if a.startswith("--gin.MODEL_DIR="))
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert [r["run"] for r in rows] == ["ADAPTER_SIZE=4", "ADAPTER_SIZE=8"]
  assert [float(r["sni/rougeL"]) for r in rows] == [5.0, 9.0]
  assert [float(r["sni/rougeL_std"]) for r in rows] == [1.0, 1.0]
  assert rows[0]["seeds"] == "0,1,2"
  per_seed = list(csv.DictReader(open(tmp_path / "results_per_seed.csv")))
  assert len(per_seed) == 6 and per_seed[1]["run"] == "ADAPTER_SIZE=4,seed=1"
  assert "sni/rougeL_std" in (tmp_path / "results.md").read_text()


def test_seed_also_bound_by_the_sweep_is_refused(tmp_path, capsys, monkeypatch):
  _no_runs(monkeypatch)
  code = sweep.main(TINY + ["--grid", "ADAPTER_SIZE=[4,8]", "--seeds", "0,1",
                            "--gin.train.seed=3", f"--sweep_dir={tmp_path}"])
  assert code == 2
  assert "train.seed" in capsys.readouterr().err


def test_single_point_with_seeds_is_not_a_duplicate(tmp_path, capsys):
  code = sweep.main(TINY + ["--grid", "ADAPTER_SIZE=[4]", "--seeds", "0,1",
                            f"--sweep_dir={tmp_path}", "--print_only"])
  assert code == 0
  out = capsys.readouterr().out
  assert "ADAPTER_SIZE=4,seed=0" in out and "ADAPTER_SIZE=4,seed=1" in out
