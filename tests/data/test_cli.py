"""hyper_tasks.data.cli: list and show."""
import pytest

from hyper_tasks.data import cli


def test_list_with_pattern(capsys, clean_registry):
  assert cli.main(["list", "esni_def_t*"]) == 0
  out = capsys.readouterr().out
  assert out == ("tasks (2):\n  esni_def_test\n  esni_def_train\n"
                 "mixtures (0):\n")


def test_list_everything_embedded(capsys, clean_registry):
  assert cli.main(["list"]) == 0
  out = capsys.readouterr().out
  for name in ("toy_train", "esni_concat_def_pos_2", "embedded_pretrain"):
    assert f"  {name}\n" in out


def test_show_splits_and_counts_tokens(capsys, clean_registry):
  assert cli.main(["show", "esni_def_test", "--num", "2"]) == 0
  out = capsys.readouterr().out
  assert "esni_def_test [test], vocabulary byte+0: 2 examples" in out
  assert out.count("== example") == 2
  first = out.split("== example 1/2")[1].split("== example 2/2")[0]
  hyper = first.split("--- hyper_inputs (")[1]
  count, text = hyper.split(" tokens with EOS) ---\n", 1)
  text = text.split("\n--- inputs")[0]
  assert text.startswith("Definition: ")
  # Byte vocabulary: one token per UTF-8 byte, plus EOS.
  assert int(count) == len(text.encode()) + 1
  assert "--- inputs (" in first and "Now complete the following example" in first
  assert "--- targets (" in first


def test_show_baseline_has_empty_hyper_inputs(capsys, clean_registry):
  assert cli.main(["show", "toy_concat_train", "--num", "1"]) == 0
  out = capsys.readouterr().out
  assert "--- hyper_inputs (1 tokens with EOS) ---\n(empty)" in out
  assert " Input: " in out


def test_show_token_level_task(capsys, clean_registry):
  assert cli.main(["show", "embedded_pretrain", "--num", "1",
                   "--lengths", "40,30,20"]) == 0
  out = capsys.readouterr().out
  counts = [int(part.split(" tokens")[0]) for part in out.split("(")[1:]
            if " tokens with EOS" in part]
  assert len(counts) == 3
  assert counts[0] <= 40 and counts[1] <= 30 and counts[2] <= 20


def test_show_unknown_name(capsys, clean_registry):
  assert cli.main(["show", "no_such_task"]) == 2
  assert "No seqio task or mixture named" in capsys.readouterr().err


def test_bad_lengths_flag(clean_registry):
  with pytest.raises(SystemExit, match="three integers"):
    cli.main(["show", "toy_train", "--lengths", "1,2"])


def test_show_real_sni_with_t5_vocab(capsys, shared_data, clean_registry):
  assert cli.main([
      "show", "sni_def_pos_2_test", "--num", "1",
      "--sni_dir", str(shared_data / "sni"), "--sni_allow_missing_tasks",
      "--vocab", str(shared_data / "t5_vocab" / "spiece.model")]) == 0
  out = capsys.readouterr().out
  assert "spiece.model+100" in out
  assert " Positive Example 2 -" in out
