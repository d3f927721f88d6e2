"""Super-NaturalInstructions: reader schema variants, errors, selection, formats, and
Tk-Instruct's rule of dropping demonstrations that do not fit the token budget."""
import json
import logging
import os

import pytest
import seqio

from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline
from hyper_tasks.data import sni
from hyper_tasks.data import sni_formats
from hyper_tasks.data import sni_tasks

DEF = "Definition: Answer with the capital city of the given country.\n\n"
POS1 = " Positive Example 1 -\nInput: France.\n Output: Paris.\n\n"
POS2 = " Positive Example 2 -\nInput: Japan.\n Output: Tokyo.\n\n"
POS1_EXPL = (" Positive Example 1 -\nInput: France.\n Output: Paris.\n"
             " Explanation: Paris is the capital of France.\n\n")
POS2_EXPL = (" Positive Example 2 -\nInput: Japan.\n Output: Tokyo.\n"
             " Explanation: Tokyo is the capital of Japan.\n\n")
NEG1 = " Negative Example 1 -\nInput: Italy.\n Output: Berlin.\n\n"
NEG1_EXPL = (" Negative Example 1 -\nInput: Italy.\n Output: Berlin.\n"
             " Explanation: Berlin is not in Italy.\n\n")
QUERY = "Now complete the following example -\nInput: Country 0.\nOutput: "

# Format -> (hyper_inputs, inputs) of instance 0, written out by hand.
EXPECTED = {
    "def": (DEF, QUERY),
    "def_pos_1": (DEF + POS1, QUERY),
    "def_pos_2": (DEF + POS1 + POS2, QUERY),
    "concat_def": ("", DEF + QUERY),
    "concat_def_pos_1": ("", DEF + POS1 + QUERY),
    "concat_def_pos_2": ("", DEF + POS1 + POS2 + QUERY),
    "concat_def_pos_2_neg_2": ("", DEF + POS1 + POS2 + NEG1 + QUERY),
    "concat_def_pos_2_expl": ("", DEF + POS1_EXPL + POS2_EXPL + QUERY),
    "concat_def_pos_2_neg_2_expl":
        ("", DEF + POS1_EXPL + POS2_EXPL + NEG1_EXPL + QUERY),
    "concat_pos_2": ("", POS1 + POS2 + QUERY),
    "def_pos_2_neg_2_expl": (DEF + POS1_EXPL + POS2_EXPL + NEG1_EXPL, QUERY),
}


@pytest.fixture
def task_path(tmp_path, sni_task):
  path = tmp_path / "task1_capitals.json"
  path.write_text(json.dumps(sni_task(5, name="task1_capitals")))
  return str(path)


@pytest.mark.parametrize("fmt_name", sorted(EXPECTED))
def test_formats_match_hand_written_strings(task_path, fmt_name):
  task = sni.read_task_file(task_path, test=True)
  record = sni_formats.format_instance(task, task.instances[0],
                               sni_formats.parse_format(fmt_name))
  assert (record[F.HYPER_INPUTS], record[F.INPUTS]) == EXPECTED[fmt_name]
  assert record[F.TARGETS] == "Capital 0"
  assert json.loads(record[F.REFERENCES]) == ["Capital 0"]
  assert record[F.TASK_NAMES] == "task1_capitals"
  assert record[F.CATEGORY] == "Answer Generation"
  assert record[F.EXAMPLE_ID] == "task1_capitals-id0"


def test_default_formats_are_all_covered():
  assert set(sni_formats.DEFAULT_FORMATS) <= set(EXPECTED)


def test_punctuation_rule_keeps_existing_punctuation(tmp_path, sni_task):
  data = sni_task(1, definition="Say hello!")
  data["Instances"][0]["input"] = "  Is it? "
  path = tmp_path / "t.json"
  path.write_text(json.dumps(data))
  task = sni.read_task_file(str(path), test=True)
  record = sni_formats.format_instance(task, task.instances[0],
                               sni_formats.parse_format("def"))
  assert record[F.HYPER_INPUTS] == "Definition: Say hello!\n\n"
  assert record[F.INPUTS] == (
      "Now complete the following example -\nInput: Is it?\nOutput: ")


def test_same_instances_and_targets_in_every_format(tmp_path, sni_task):
  data = sni_task(12, name="t")
  for i, inst in enumerate(data["Instances"]):
    inst["output"] = [f"a{i}", f"b{i}", f"c{i}"]  # Several references.
  path = tmp_path / "t.json"
  path.write_text(json.dumps(data))
  task = sni.read_task_file(str(path), max_instances=8)
  by_format = {name: sni_formats.format_tasks([task],
                                             sni_formats.parse_format(name))
               for name in sni_formats.DEFAULT_FORMATS}
  base = by_format["def"]
  assert len(base) == 8
  # Targets are spread over the references, not always the first.
  assert len({r[F.TARGETS][0] for r in base}) > 1
  for name, records in by_format.items():
    assert [r[F.EXAMPLE_ID] for r in records] == [
        r[F.EXAMPLE_ID] for r in base], name
    assert [r[F.TARGETS] for r in records] == [r[F.TARGETS] for r in base]
    assert [r[F.REFERENCES] for r in records] == [
        r[F.REFERENCES] for r in base]
  # Baselines hold exactly what HINT splits between the two encoders.
  for hint, concat in (("def", "concat_def"), ("def_pos_2", "concat_def_pos_2")):
    for h, c in zip(by_format[hint], by_format[concat]):
      assert c[F.HYPER_INPUTS] == ""
      assert c[F.INPUTS] == h[F.HYPER_INPUTS] + h[F.INPUTS]


# ------------------------------------------------------------ schema variants


def test_definition_as_list_uses_first(tmp_path, sni_task):
  path = tmp_path / "t.json"
  path.write_text(json.dumps(sni_task(2, definition=["First one", "Second"])))
  task = sni.read_task_file(str(path), test=True)
  assert task.definition == "First one"


def test_missing_ids_are_task_and_file_index(tmp_path, sni_task):
  path = tmp_path / "task9_x.json"
  path.write_text(json.dumps(sni_task(6, ids=False)))
  test_task = sni.read_task_file(str(path), test=True)
  assert [i.id for i in test_task.instances] == [
      f"task9_x-{i}" for i in range(6)]
  # Train tasks are sampled: each id still names the instance's file index.
  train_task = sni.read_task_file(str(path), max_instances=4)
  for inst in train_task.instances:
    index = int(inst.id.rsplit("-", 1)[1])
    assert inst.input == f"Country {index}"


def test_missing_language_fields_mean_english(tmp_path, sni_dir_factory,
                                              sni_task):
  spanish = sni_task(3)
  spanish["Input_language"] = ["Spanish"]
  root = sni_dir_factory(tmp_path, train={
      "t_nolang": sni_task(3, languages=False), "t_en": sni_task(3),
      "t_es": spanish})
  names = sni.read_split(root, "train")
  kept = sni.load_tasks(root, names, test=False)
  assert [t.name for t in kept] == ["t_nolang", "t_en"]
  everything = sni.load_tasks(root, names, test=False, english_only=False)
  assert [t.name for t in everything] == ["t_nolang", "t_en", "t_es"]
  assert everything[0].languages == ()


def test_output_string_and_integer_ids_are_accepted(tmp_path, sni_task):
  data = sni_task(2)
  data["Instances"][0]["output"] = "single"
  data["Instances"][1]["id"] = 17
  path = tmp_path / "t.json"
  path.write_text(json.dumps(data))
  task = sni.read_task_file(str(path), test=True)
  assert task.instances[0].outputs == ("single",)
  assert task.instances[1].id == "17"


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("Definition"), "'Definition'"),
    (lambda d: d.update(Definition=3), "'Definition'"),
    (lambda d: d.update(Definition=[]), "'Definition'"),
    (lambda d: d.pop("Instances"), "'Instances'"),
    (lambda d: d["Instances"][1].pop("output"), "'Instances'[1].output"),
    (lambda d: d["Instances"][2].update(input=["a"]), "'Instances'[2].input"),
    (lambda d: d["Instances"][0].update(output=["ok", 5]),
     "'Instances'[0].output[1]"),
    (lambda d: d["Positive Examples"][1].pop("input"),
     "'Positive Examples'[1].input"),
    (lambda d: d.update(Input_language=4), "'Input_language'"),
])
def test_malformed_file_names_file_and_field(tmp_path, sni_task, mutate,
                                             field):
  data = sni_task(4)
  mutate(data)
  path = tmp_path / "task7_bad.json"
  path.write_text(json.dumps(data))
  with pytest.raises(sni.SniFormatError) as e:
    sni.read_task_file(str(path), test=True)
  assert e.value.path == str(path)
  assert e.value.field == field
  assert str(path) in str(e.value) and field in str(e.value)


def test_invalid_json_names_file(tmp_path):
  path = tmp_path / "task8.json"
  path.write_text("{not json")
  with pytest.raises(sni.SniFormatError, match="task8.json.*invalid JSON"):
    sni.read_task_file(str(path))


def test_bad_files_fail_unless_skipped(tmp_path, sni_dir_factory, sni_task):
  bad = sni_task(3)
  del bad["Instances"][0]["input"]
  root = sni_dir_factory(tmp_path, train={
      "t_good": sni_task(3), "t_bad": bad, "t_broken": "[1, 2"})
  names = sni.read_split(root, "train")
  with pytest.raises(sni.SniFormatError, match="t_bad.json"):
    sni.load_tasks(root, names, test=False)
  kept = sni.load_tasks(root, names, test=False, skip_bad_files=True)
  assert [t.name for t in kept] == ["t_good"]


def test_missing_task_file(tmp_path, sni_dir_factory, sni_task):
  root = sni_dir_factory(tmp_path, test={"t_here": sni_task(2)})
  with pytest.raises(FileNotFoundError, match="t_gone.json"):
    sni.load_tasks(root, ["t_here", "t_gone"], test=True)
  kept = sni.load_tasks(root, ["t_here", "t_gone"], test=True,
                        allow_missing=True)
  assert [t.name for t in kept] == ["t_here"]


def test_missing_split_file_fails_at_registration(tmp_path, clean_registry):
  with pytest.raises(FileNotFoundError, match="train_tasks.txt"):
    sni_tasks.register_sni(str(tmp_path))


# ---------------------------------------------------------- instance selection


def test_max_instances_test_takes_first_train_samples(tmp_path, sni_task):
  path = tmp_path / "t.json"
  path.write_text(json.dumps(sni_task(30, name="t")))
  test_task = sni.read_task_file(str(path), test=True, max_instances=10)
  assert [i.id for i in test_task.instances] == [f"t-id{i}" for i in range(10)]
  assert test_task.validation_instances == ()

  train = sni.read_task_file(str(path), max_instances=10, max_validation=5)
  again = sni.read_task_file(str(path), max_instances=10, max_validation=5)
  other_seed = sni.read_task_file(str(path), max_instances=10, seed=1)
  ids = [i.id for i in train.instances]
  assert len(ids) == 10 and len(set(ids)) == 10
  assert ids != [f"t-id{i}" for i in range(10)]  # Sampled, not the first 10.
  assert ids == [i.id for i in again.instances]  # Deterministic for a seed.
  assert ids != [i.id for i in other_seed.instances]
  validation = [i.id for i in train.validation_instances]
  assert len(validation) == 5 and not set(validation) & set(ids)
  everything = sni.read_task_file(str(path), max_instances=None)
  assert len(everything.instances) == 30


def test_instances_without_outputs_are_not_formatted(tmp_path, sni_task):
  data = sni_task(3, name="t")
  data["Instances"][1]["output"] = []
  path = tmp_path / "t.json"
  path.write_text(json.dumps(data))
  task = sni.read_task_file(str(path), test=True)
  records = sni_formats.format_tasks([task], sni_formats.parse_format("def"))
  assert [r[F.EXAMPLE_ID] for r in records] == ["t-id0", "t-id2"]


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize("name", [*sni_formats.DEFAULT_FORMATS, "pos_1",
                                  "def_pos_2_neg_1_expl"])
def test_format_names_round_trip(name):
  assert sni_formats.format_name(sni_formats.parse_format(name)) == name


@pytest.mark.parametrize("name", ["", "concat_", "expl", "def_neg", "pos",
                                  "def_pos_2_concat", "def__pos_2",
                                  "concat_neg_2"])
def test_bad_format_names_raise(name):
  with pytest.raises(ValueError, match="Unknown SNI format"):
    sni_formats.parse_format(name)


# ------------------------------------------------------- seqio registration


def test_registered_tasks_serve_the_formatted_records(
    tmp_path, sni_dir_factory, sni_task, clean_registry):
  root = sni_dir_factory(
      tmp_path, train={"t_a": sni_task(6, name="t_a"),
                       "t_b": sni_task(4, ids=False, name="t_b")},
      test={"t_c": sni_task(5, name="t_c")})
  names = sni_tasks.register_sni(root, formats=("def", "concat_def_pos_2"),
                                 max_instances_per_task=3,
                                 max_validation_per_task=2)
  assert set(names) == {
      "sni_def_train", "sni_def_test", "sni_def",
      "sni_concat_def_pos_2_train", "sni_concat_def_pos_2_test",
      "sni_concat_def_pos_2"}
  tasks = sni.load_tasks(root, ["t_c"], test=True, max_instances=3)
  expected = sni_formats.format_tasks(
      tasks, sni_formats.parse_format("concat_def_pos_2"))
  got = pipeline.load_examples("sni_concat_def_pos_2_test", "test")
  assert got == expected
  assert len(pipeline.load_examples("sni_def_train", "train")) == 6
  assert len(pipeline.load_examples("sni_def_train", "validation")) == 3
  # The mixture reads the split of its member that has it.
  assert pipeline.load_examples("sni_def", "test") == pipeline.load_examples(
      "sni_def_test", "test")


def test_registered_bad_file_fails_or_is_skipped(tmp_path, sni_dir_factory,
                                                 sni_task, clean_registry):
  bad = sni_task(3)
  bad["Definition"] = {"oops": 1}
  root = sni_dir_factory(tmp_path, train={"t_ok": sni_task(3, name="t_ok"),
                                          "t_bad": bad})
  sni_tasks.register_sni(root, formats=("def",), prefix="strict")
  with pytest.raises(sni.SniFormatError, match="t_bad.json.*'Definition'"):
    pipeline.load_examples("strict_def_train", "train")
  sni_tasks.register_sni(root, formats=("def",), prefix="lenient",
                         skip_bad_files=True)
  records = pipeline.load_examples("lenient_def_train", "train")
  assert {r[F.TASK_NAMES] for r in records} == {"t_ok"}


def test_embedded_sni_tasks_load(clean_registry):
  sni_tasks.register_embedded_sni()
  for fmt in ("def_pos_2", "concat_def_pos_2_neg_2_expl"):
    for name, split in ((f"esni_{fmt}_train", "train"),
                        (f"esni_{fmt}_test", "test")):
      records = pipeline.load_examples(name, split)
      assert records and all(r[F.TARGETS] for r in records), name


# ------------------------------------------------------ real data (optional)


def test_real_sni_files_through_every_format(shared_data):
  root = str(shared_data / "sni")
  for which in ("train", "test"):
    names = sni.read_split(root, which)
    tasks = sni.load_tasks(root, names, test=which == "test",
                           allow_missing=True)
    assert len(tasks) == 5, which
    for task in tasks:
      assert task.definition and task.instances and task.category
      # Real files have no instance ids: they are derived from the index.
      assert all(i.id.startswith(task.name + "-") for i in task.instances)
    for fmt in sni_formats.DEFAULT_FORMATS:
      records = sni_formats.format_tasks(tasks, sni_formats.parse_format(fmt))
      assert len(records) == sum(len(t.instances) for t in tasks)
      for r in records:
        assert r[F.TARGETS] in json.loads(r[F.REFERENCES])
        text = r[F.HYPER_INPUTS] + r[F.INPUTS]
        assert text.endswith("\nOutput: ")
        assert text.startswith("Definition: ") == ("def" in fmt)
  # The newest schema (Definition as a list) is among the real files.
  copa = sni.read_task_file(
      str(shared_data / "sni" / "tasks"
          / "task1393_superglue_copa_text_completion.json"), test=True)
  assert copa.definition.startswith("In this task")


# ------------------------------------------ token budget (Tk-Instruct's rule)

POS2_LONG = (" Positive Example 2 -\nInput: " + "Japan, " * 29 + "Japan.\n"
             " Output: Tokyo.\n\n")
POS3 = " Positive Example 3 -\nInput: Peru.\n Output: Lima.\n\n"
COUNT = sni_formats.token_counter(seqio.ByteVocabulary())


def n_tokens(text):
  """Byte-vocabulary tokens of ``text`` plus EOS, as the task will count them."""
  return len(text.encode("utf-8")) + 1


@pytest.fixture
def long_task(tmp_path, sni_task):
  """The capitals task with a long second positive example."""
  data = sni_task(5, name="t_long")
  data["Positive Examples"][1]["input"] = "Japan, " * 29 + "Japan"
  path = tmp_path / "t_long.json"
  path.write_text(json.dumps(data))
  return sni.read_task_file(str(path), test=True)


def _record(task, fmt, budget):
  return sni_formats.format_instance(task, task.instances[0],
                                     sni_formats.parse_format(fmt), budget,
                                     COUNT)


def test_counter_counts_eos():
  assert COUNT(DEF) == n_tokens(DEF) == len(DEF) + 1


def test_demonstrations_that_do_not_fit_are_dropped_whole(long_task):
  rec = lambda fmt, **budget: _record(long_task, fmt, budget)
  full = DEF + POS1 + POS2_LONG
  # Everything fits: nothing dropped (and no budget at all: the same).
  assert rec("def_pos_2", hyper_inputs=n_tokens(full))[F.HYPER_INPUTS] == full
  assert _record(long_task, "def_pos_2", None)[F.HYPER_INPUTS] == full
  # One token short: the long example goes, whole; the instance is untouched.
  got = rec("def_pos_2", hyper_inputs=n_tokens(full) - 1)
  assert (got[F.HYPER_INPUTS], got[F.INPUTS]) == (DEF + POS1, QUERY)
  # The budget is inclusive and counts EOS.
  assert rec("def_pos_1", hyper_inputs=n_tokens(DEF + POS1))[
      F.HYPER_INPUTS] == DEF + POS1
  assert rec("def_pos_1", hyper_inputs=n_tokens(DEF + POS1) - 1)[
      F.HYPER_INPUTS] == DEF
  # The first that does not fit ends the positives: example 3 would fit after
  # example 1 but is not tried (Tk-Instruct's `break`) ...
  budget = n_tokens(DEF + POS1 + POS3)
  assert rec("def_pos_3", hyper_inputs=budget)[F.HYPER_INPUTS] == DEF + POS1
  # ... while negatives are still tried after them.
  budget = n_tokens(DEF + POS1 + NEG1)
  assert rec("def_pos_2_neg_1", hyper_inputs=budget)[F.HYPER_INPUTS] == (
      DEF + POS1 + NEG1)
  # The definition is never dropped (the feature converter truncates it).
  assert rec("def_pos_2", hyper_inputs=3)[F.HYPER_INPUTS] == DEF
  # A HINT format reads the hyper_inputs budget only, a concat format the inputs
  # budget, counted with the instance part.
  assert rec("def_pos_2", inputs=10)[F.HYPER_INPUTS] == full
  budget = n_tokens(DEF + POS1 + QUERY)
  got = rec("concat_def_pos_2", inputs=budget, hyper_inputs=1)
  assert (got[F.HYPER_INPUTS], got[F.INPUTS]) == ("", DEF + POS1 + QUERY)
  assert rec("concat_def_pos_2", inputs=budget - 1)[F.INPUTS] == DEF + QUERY
  with pytest.raises(ValueError, match="needs count_tokens"):
    sni_formats.format_instance(long_task, long_task.instances[0],
                                sni_formats.parse_format("def_pos_2"),
                                {"hyper_inputs": 5})


def test_registered_tasks_drop_demonstrations_with_a_budget(
    tmp_path, sni_dir_factory, sni_task, clean_registry):
  data = sni_task(4, name="t_b")
  data["Positive Examples"][1]["input"] = "Japan, " * 29 + "Japan"
  root = sni_dir_factory(tmp_path, train={"t_a": sni_task(3, name="t_a")},
                         test={"t_b": data})
  budget = {"hyper_inputs": n_tokens(DEF + POS1 + POS2_LONG) - 1,
            "inputs": n_tokens(DEF + POS1 + QUERY), "targets": 4}
  sni_tasks.register_sni(root, formats=("def_pos_2", "concat_def_pos_2"),
                         demonstration_budget=budget)
  tasks = sni.load_tasks(root, ["t_b"], test=True)
  for fmt in ("def_pos_2", "concat_def_pos_2"):
    got = pipeline.load_examples(f"sni_{fmt}_test", "test")
    assert got == sni_formats.format_tasks(
        tasks, sni_formats.parse_format(fmt), budget=budget,
        count_tokens=COUNT)
    text = [r[F.HYPER_INPUTS] + r[F.INPUTS] for r in got]
    assert all(t.startswith(DEF + POS1) and "Positive Example 2" not in t
               for t in text), (fmt, text[0])
  # Without a budget the same names serve every demonstration again.
  sni_tasks.register_sni(root, formats=("def_pos_2",))
  got = pipeline.load_examples("sni_def_pos_2_test", "test")
  assert all(POS2_LONG in r[F.HYPER_INPUTS] for r in got)
  with pytest.raises(ValueError, match=r"demonstration_budget\['inputs'\]"):
    sni_tasks.register_sni(root, demonstration_budget={"inputs": 0})


def test_non_utf8_file_is_a_format_error_and_skippable(tmp_path, sni_dir_factory,
                                                       sni_task, caplog):
  root = sni_dir_factory(tmp_path, train={"t_good": sni_task(3),
                                          "t_latin1": sni_task(3)})
  bad = os.path.join(root, "tasks", "t_latin1.json")
  with open(bad, "wb") as f:  # a Latin-1 "é" in an otherwise valid file
    f.write(json.dumps(sni_task(3)).replace("Definition", "D\u00e9finition")
            .encode("latin-1").replace(b"D\xe9finition", b"Definition\xe9", 1))
  with pytest.raises(sni.SniFormatError, match="t_latin1.json.*not valid UTF-8"):
    sni.read_task_file(bad)
  names = sni.read_split(root, "train")
  with caplog.at_level(logging.WARNING):
    kept = sni.load_tasks(root, names, test=False, skip_bad_files=True)
  assert [t.name for t in kept] == ["t_good"]
  assert "t_latin1.json" in caplog.text


def test_empty_instance_list_warns_or_fails_in_strict_mode(tmp_path, sni_task,
                                                          caplog):
  data = sni_task(2)
  data["Instances"] = []
  path = tmp_path / "task9_empty.json"
  path.write_text(json.dumps(data))
  with caplog.at_level(logging.WARNING):
    task = sni.read_task_file(str(path), test=True)
  assert task.instances == ()
  assert "task9_empty has no instances" in caplog.text
  with pytest.raises(sni.SniFormatError, match="task9_empty.json.*'Instances'.*empty"):
    sni.read_task_file(str(path), test=True, strict=True)
