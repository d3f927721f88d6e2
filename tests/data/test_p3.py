"""P3 / T0: promptsource rendering, rank classification, T0 cap, few-shot shots."""
import json
import os
import textwrap

import pytest
import seqio
import tensorflow as tf

from hyper_tasks.data import features as F
from hyper_tasks.data import p3
from hyper_tasks.data import p3_instructions
from hyper_tasks.data import p3_rows
from hyper_tasks.data import p3_tasks
from hyper_tasks.data import p3_templates
from hyper_tasks.data import pipeline
from hyper_tasks.data import registry

TEMPLATES_YAML = textwrap.dedent("""\
    dataset: toyds
    subset: sub
    templates:
      id-b: !Template
        answer_choices: no ||| yes
        id: id-b
        jinja: 'Is "{{ sentence }}" about {{ topic }}? ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}'
        metadata: !TemplateMetadata
          choices_in_prompt: false
          metrics:
          - Accuracy
          original_task: true
        name: is about
        reference: ''
      id-a: !Template
        answer_choices: '{{ topic }} ||| something else'
        id: id-a
        jinja: "{{ sentence }}\\nTopic: {{ answer_choices | join(\\" or \\") }}? ||| {{ answer_choices[1 - label] }}"
        metadata: !TemplateMetadata
          choices_in_prompt: true
          metrics:
          - Accuracy
          original_task: true
        name: a topic
        reference: ''
      id-c: !Template
        id: id-c
        jinja: 'Write a sentence about {{ topic }}. ||| {{ sentence }}'
        metadata: !TemplateMetadata
          choices_in_prompt: false
          metrics:
          - ROUGE
          original_task: false
        name: generate
        reference: ''
    """)


def _rows(n, offset=0):
  return [{"sentence": f"Sentence number {offset + i}.",
           "topic": ["cats", "dogs", "birds"][i % 3], "label": i % 2,
           "idx": offset + i} for i in range(n)]


def _write_dataset(root, name, subset, templates_yaml, splits):
  tdir = root / "templates" / name / subset
  tdir.mkdir(parents=True)
  (tdir / "templates.yaml").write_text(templates_yaml)
  ddir = root / "data" / name / subset
  ddir.mkdir(parents=True)
  for split, rows in splits.items():
    (ddir / f"{split}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
  return str(root / "templates"), str(root / "data")


@pytest.fixture
def toy_p3(tmp_path):
  """(templates_dir, data_dir) with one dataset: 9 train and 6 validation rows."""
  return _write_dataset(tmp_path, "toyds", "sub", TEMPLATES_YAML,
                        {"train": _rows(9), "validation": _rows(6, 100)})


TOYDS = p3_rows.P3Dataset("toyds", "sub")


# ----------------------------------------------------------------- rendering


def test_load_templates_reads_promptsource_yaml(toy_p3):
  templates = p3_templates.load_templates(toy_p3[0], "toyds", "sub")
  assert [t.name for t in templates] == ["a topic", "generate", "is about"]
  by_name = {t.name: t for t in templates}
  assert by_name["is about"].original_task
  assert not by_name["generate"].original_task
  assert by_name["a topic"].choices_in_prompt
  assert by_name["is about"].metrics == ("Accuracy",)
  assert by_name["generate"].answer_choices is None


def test_render_matches_hand_computed_prompts(toy_p3):
  t = {x.name: x
       for x in p3_templates.load_templates(toy_p3[0], "toyds", "sub")}
  row = {"sentence": "A cat sat.", "topic": "cats", "label": 1}
  r = p3.render(t["is about"], row)
  assert (r.prompt, r.target, r.choices) == (
      'Is "A cat sat." about cats?', "yes", ("no", "yes"))
  r = p3.render(t["a topic"], row)
  assert (r.prompt, r.target, r.choices) == (
      "A cat sat.\nTopic: cats or something else?", "cats",
      ("cats", "something else"))
  r = p3.render(t["generate"], row)
  assert (r.prompt, r.target, r.choices) == (
      "Write a sentence about cats.", "A cat sat.", None)
  # An unlabeled row gives no target, hence no record.
  assert p3.render(t["is about"], {**row, "label": -1}) is None


def test_render_protects_pipes_and_hyphens_and_truncates():
  template = p3_templates.Template(name="t", jinja="{{ a_b }} ||| {{ c }}")
  r = p3.render(template, {"a-b": "x ||| y", "c": "z"})
  assert (r.prompt, r.target) == ("x ||| y", "z")
  long_text = "word " * 1000
  r = p3.render(template, {"a-b": long_text, "c": "z"})
  # promptsource pipes every variable through ``truncate(2048)``.
  assert r.prompt.endswith("...") and len(r.prompt) <= 2048
  with pytest.raises(ValueError, match="answer_choices"):
    template.apply({"a_b": "x", "c": "y", "answer_choices": []})


def test_choice_filter_is_seeded():
  template = p3_templates.Template(
      name="t", jinja="{{ options | choice }} ||| {{ options | choice }}")
  row = {"options": [str(i) for i in range(100)]}
  assert template.apply(row, seed=3) == template.apply(row, seed=3)
  renders = {tuple(template.apply(row, seed=s)) for s in range(5)}
  assert len(renders) > 1
  frequent = p3_templates.Template(name="f", jinja="{{ xs | most_frequent }}")
  assert frequent.apply({"xs": ["a", "b", "b", "a", "c"]}) == ["['a', 'b']"]


# -------------------------------------------------------- rank classification


def test_rank_classification_one_example_per_choice():
  records = [
      {**F.make_example("p0", "p0", "yes", "d", example_id="e0"),
       p3_templates.ANSWER_CHOICES: ["no", "yes", "maybe"]},
      {**F.make_example("p1", "p1", "no", "d", example_id="e1"),
       p3_templates.ANSWER_CHOICES: ["no", "yes"]},
      {**F.make_example("p2", "p2", "x", "d", example_id="e2"),
       p3_templates.ANSWER_CHOICES: []},  # No choices: dropped.
  ]
  signature = dict(F.RECORD_SIGNATURE)
  signature[p3_templates.ANSWER_CHOICES] = tf.TensorSpec([None], tf.string)
  ds = tf.data.Dataset.from_generator(lambda: iter(records),
                                      output_signature=signature)
  out = [F.decode_example(ex) for ex in
         p3.rank_classification(ds).as_numpy_iterator()]
  got = [(r[F.EXAMPLE_ID], r[F.INPUTS], r[F.TARGETS], r[F.CHOICE_INDEX],
          r[F.IS_CORRECT], r[F.NUM_CHOICES]) for r in out]
  assert got == [("e0", "p0", "no", 0, 0, 3), ("e0", "p0", "yes", 1, 1, 3),
                 ("e0", "p0", "maybe", 2, 0, 3), ("e1", "p1", "no", 0, 1, 2),
                 ("e1", "p1", "yes", 1, 0, 2)]
  assert all(r[F.REFERENCES] == json.dumps([r[F.INPUTS] == "p0" and "yes"
                                            or "no"]) for r in out)


# ---------------------------------------------------------------- T0 mixture


@pytest.mark.parametrize("rows, templates, cap, rate", [
    (1_000, 10, 500_000, 1_000),        # Small datasets are not capped.
    (500_000, 10, 500_000, 500_000),
    (2_000_000, 10, 500_000, 50_000),   # 500k in all, shared by templates.
    (2_000_000, 3, 500_000, 166_666),
    (12, 3, 10, 3),
])
def test_t0_rate(rows, templates, cap, rate):
  assert p3_tasks.t0_rate(rows, templates, cap) == rate


def test_t0_train_mixture_applies_the_cap(tmp_path, clean_registry):
  templates_dir, data_dir = _write_dataset(
      tmp_path, "bigds", "sub", TEMPLATES_YAML, {"train": _rows(12)})
  _write_dataset(tmp_path / "second", "smallds", "sub", TEMPLATES_YAML,
                 {"train": _rows(5)})
  small = tmp_path / "second"
  (tmp_path / "templates" / "smallds").symlink_to(small / "templates" /
                                                  "smallds")
  (tmp_path / "data" / "smallds").symlink_to(small / "data" / "smallds")
  names = p3_tasks.register_t0(
      templates_dir, data_dir,
      train_datasets=(p3_rows.P3Dataset("bigds", "sub"),
                      p3_rows.P3Dataset("smallds", "sub")),
      eval_datasets=(), shots=(), max_examples_per_dataset=10)
  assert "t0_train" in names
  mixture = seqio.get_mixture_or_task("t0_train")
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates == {
      "p3_bigds_sub_a_topic": 3.0, "p3_bigds_sub_generate": 3.0,
      "p3_bigds_sub_is_about": 3.0, "p3_smallds_sub_a_topic": 5.0,
      "p3_smallds_sub_generate": 5.0, "p3_smallds_sub_is_about": 5.0}


# ----------------------------------------------------------------- few-shot


def _register_toy(toy_p3, shots=(2,), instruction="prompt",
                  few_shot_format="newline"):
  """The toy dataset; by default the per-example form and newline shots."""
  return p3_tasks.register_t0(
      toy_p3[0], toy_p3[1], train_datasets=(TOYDS,), eval_datasets=(TOYDS,),
      shots=shots, instruction=instruction, few_shot_format=few_shot_format)


def test_registration_names(toy_p3, clean_registry):
  names = set(_register_toy(toy_p3))
  assert {"t0_train", "t0_train_2_shot", "t0_train_2_shot_concat",
          "t0_eval_score_eval", "t0_eval_score_eval_2_shot",
          "t0_eval_score_eval_2_shot_concat", "p3_toyds_sub_generate",
          "p3_toyds_sub_is_about_score_eval_2_shot"} <= names
  # Held-out evaluation uses the original-task templates only.
  eval_tasks = {t.name for t in
                seqio.get_mixture_or_task("t0_eval_score_eval").tasks}
  assert eval_tasks == {"p3_toyds_sub_a_topic_score_eval",
                        "p3_toyds_sub_is_about_score_eval"}


def test_score_eval_records_from_registered_task(toy_p3, clean_registry):
  _register_toy(toy_p3)
  records = pipeline.load_examples("p3_toyds_sub_is_about_score_eval",
                                   "validation")
  assert len(records) == 12  # 6 rows x 2 choices.
  first = records[:2]
  assert [r[F.INPUTS] for r in first] == ['Is "Sentence number 100." about '
                                          'cats?'] * 2
  assert [r[F.TARGETS] for r in first] == ["no", "yes"]
  assert [r[F.IS_CORRECT] for r in first] == [1, 0]  # label 0 -> "no".
  assert {r[F.EXAMPLE_ID] for r in first} == {"toyds_sub-validation-0"}
  for r in records:
    assert r[F.HYPER_INPUTS] == r[F.INPUTS]
    assert r[F.TEMPLATE] == "is about"


def test_registry_records_the_evaluation_mode(toy_p3, clean_registry):
  _register_toy(toy_p3)
  # Held-out score-eval tasks are ranked over answer choices; the rest decode.
  assert registry.evaluation_mode(
      "p3_toyds_sub_is_about_score_eval") == registry.RANK
  assert registry.evaluation_mode(
      "p3_toyds_sub_is_about_score_eval_2_shot_concat") == registry.RANK
  assert registry.evaluation_mode("p3_toyds_sub_generate") == registry.GENERATION
  assert registry.evaluation_mode("t0_eval_score_eval") == registry.RANK
  assert registry.evaluation_mode("t0_train") == registry.GENERATION
  # The recorded mode agrees with the preprocessor the task runs.
  for name in registry.registered_names("p3_*")["tasks"]:
    task = seqio.get_mixture_or_task(name)
    has_rank = any(getattr(p, "func", p) is p3.rank_classification
                   for p in task.preprocessors)
    assert (registry.evaluation_mode(name) == registry.RANK) == has_rank


def _prompt_of(row):
  return f'Is "{row["sentence"]}" about {row["topic"]}?'


@pytest.mark.parametrize("name, split, pool", [
    ("p3_toyds_sub_is_about_score_eval_2_shot", "validation", _rows(9)),
    ("p3_toyds_sub_is_about_2_shot", "train", _rows(9)),
])
def test_few_shot_hint_format_and_no_self_shots(toy_p3, clean_registry, name,
                                                split, pool):
  _register_toy(toy_p3)
  labels = ["no", "yes"]
  shot_texts = {f"{_prompt_of(r)}\n{labels[r['label']]}" for r in pool}
  records = pipeline.load_examples(name, split)
  assert records
  for r in records:
    # HINT: the shots and the prompt in hyper_inputs, the prompt alone in inputs.
    parts = r[F.HYPER_INPUTS].split("\n\n")
    assert len(parts) == 3
    assert parts[2] == r[F.INPUTS]
    assert all(s in shot_texts for s in parts[:2])
    assert parts[0] != parts[1]
    own = r[F.INPUTS]
    assert not any(s.startswith(own + "\n") for s in parts[:2]), r
  # The shots are a seeded function of the example: the same on every read.
  assert records == pipeline.load_examples(name, split)


def test_few_shot_same_split_pool_excludes_the_example(tmp_path,
                                                       clean_registry):
  # Only a validation split: shots come from it, never the example itself.
  templates_dir, data_dir = _write_dataset(
      tmp_path, "evalonly", "sub", TEMPLATES_YAML,
      {"validation": _rows(4)})
  dataset = p3_rows.P3Dataset("evalonly", "sub")
  p3_tasks.register_t0(templates_dir, data_dir, train_datasets=(),
                       eval_datasets=(dataset,), shots=(3,),
                       instruction="prompt", few_shot_format="newline")
  records = pipeline.load_examples(
      "p3_evalonly_sub_is_about_score_eval_3_shot", "validation")
  assert len(records) == 8
  for r in records:
    shots = r[F.HYPER_INPUTS].split("\n\n")[:-1]
    assert len(shots) == 3
    assert all(not s.startswith(r[F.INPUTS] + "\n") for s in shots)


def test_few_shot_concat_puts_shots_in_inputs(toy_p3, clean_registry):
  _register_toy(toy_p3)
  hint = pipeline.load_examples("p3_toyds_sub_generate_2_shot", "train")
  concat = pipeline.load_examples("p3_toyds_sub_generate_2_shot_concat",
                                  "train")
  assert len(hint) == len(concat) == 9
  for h, c in zip(hint, concat):
    assert c[F.HYPER_INPUTS] == ""
    assert c[F.INPUTS] == h[F.HYPER_INPUTS]
    assert c[F.TARGETS] == h[F.TARGETS]


def test_format_shots_hand_written():
  shots = [p3.Rendered("Q1?", "A1", None), p3.Rendered("Q2?", "A2", None)]
  record = p3.make_record(TOYDS, p3_templates.Template("t", "x"),
                          p3.Rendered("Q?", "A", None), "id", shots=shots,
                          shot_format="newline")
  assert record[F.HYPER_INPUTS] == "Q1?\nA1\n\nQ2?\nA2\n\nQ?"
  assert record[F.INPUTS] == "Q?"
  record = p3.make_record(TOYDS, p3_templates.Template("t", "x"),
                          p3.Rendered("Q?", "A", None), "id", shots=shots,
                          shots_in_inputs=True, shot_format="newline")
  assert (record[F.HYPER_INPUTS], record[F.INPUTS]) == (
      "", "Q1?\nA1\n\nQ2?\nA2\n\nQ?")


def test_pick_shots_never_returns_the_row():
  pool = [(i, p3.Rendered(f"q{i}", f"a{i}", None)) for i in range(6)]
  for index in range(6):
    for seed in range(5):
      shots = p3.pick_shots(pool, 5, index, True, seed, "salt")
      assert len(shots) == 5
      assert p3.Rendered(f"q{index}", f"a{index}", None) not in shots
  # A pool from another split may hold the same index.
  shots = p3.pick_shots(pool, 6, 0, False, 0, "salt")
  assert len(shots) == 6


# ------------------------------------------------------ real data (optional)


def test_real_copa_and_wsc_through_real_templates(shared_data,
                                                  clean_registry):
  names = p3_tasks.register_t0(
      str(shared_data / "p3" / "promptsource_templates"),
      str(shared_data / "p3"), shots=(1,), instruction="prompt",
      few_shot_format="newline")
  assert "t0_eval_score_eval" in names
  assert "t0_train" not in names  # No training data is present.
  mixture = seqio.get_mixture_or_task("t0_eval_score_eval")
  task_names = [t.name for t in mixture.tasks]
  assert any("copa" in n for n in task_names)
  assert any("wsc" in n for n in task_names)
  for name in task_names:
    # The first 10 examples of each template (TF reads are slow one by one).
    records = pipeline.load_examples(name, "validation", max_examples=20)
    assert records, name
    by_example = {}
    for r in records:
      by_example.setdefault(r[F.EXAMPLE_ID], []).append(r)
    for group in by_example.values():
      assert len(group) == group[0][F.NUM_CHOICES] == 2
      assert sum(r[F.IS_CORRECT] for r in group) == 1, name
  copa = pipeline.load_examples("p3_super_glue_copa_exercise_score_eval",
                                "validation", max_examples=2)
  assert copa[0][F.INPUTS] == (
      "Exercise: choose the most plausible alternative.\n\n"
      "The man turned on the faucet.  so... \n"
      "- The toilet filled with water.\n- Water flowed from the spout.")
  assert [r[F.TARGETS] for r in copa] == ["The toilet filled with water.",
                                          "Water flowed from the spout."]
  assert [r[F.IS_CORRECT] for r in copa] == [0, 1]
  wsc = pipeline.load_examples(
      "p3_super_glue_wsc.fixed_by_p_they_mean_score_eval", "validation",
      max_examples=2)
  assert wsc[0][F.INPUTS] == (
      "Bernard , who had not told the government official that he was less "
      "than 21 when he filed for a homestead claim, did not consider that he "
      "had done anything dishonest. Still, anyone who knew that he was 19 "
      "years old could take his claim away from him . Here, by \"him\" they "
      "mean \"anyone\". Yes or no?")
  assert [(r[F.TARGETS], r[F.IS_CORRECT]) for r in wsc] == [("No", 1),
                                                          ("Yes", 0)]
  one_shot = pipeline.load_examples(
      "p3_super_glue_copa_exercise_score_eval_1_shot", "validation",
      max_examples=2)
  assert one_shot[0][F.INPUTS] == copa[0][F.INPUTS]
  assert one_shot[0][F.HYPER_INPUTS].endswith("\n\n" + copa[0][F.INPUTS])
  shot = one_shot[0][F.HYPER_INPUTS][:-len(copa[0][F.INPUTS]) - 2]
  assert shot and not shot.startswith(copa[0][F.INPUTS] + "\n")


def test_real_template_files_all_parse(shared_data):
  root = shared_data / "p3" / "promptsource_templates"
  count = 0
  for path in sorted(root.glob("**/templates.yaml")):
    rel = path.parent.relative_to(root).parts
    count += len(p3_templates.load_templates(
        str(root), rel[0], rel[1] if len(rel) > 1 else None))
  assert count > 1000
  # Jinja compilation is slow (about 10 ms a template): T0's held-out sets only.
  for dataset in p3_rows.T0_EVAL_DATASETS:
    if os.path.exists(p3_templates.template_path(str(root), dataset.name,
                                                 dataset.subset)):
      for t in p3_templates.load_templates(str(root), dataset.name,
                                           dataset.subset):
        assert t._compiled is not None  # pylint: disable=protected-access


# ------------------------------------------------- template-level instructions


def test_template_instructions_of_the_toy_templates(toy_p3):
  t = {x.name: x
       for x in p3_templates.load_templates(toy_p3[0], "toyds", "sub")}
  assert p3_instructions.template_instruction(t["is about"]) == (
      'Is "[sentence]" about [topic]?')
  # Answer choices are rendered over the same placeholders.
  assert p3_instructions.template_instruction(t["a topic"]) == (
      "[sentence]\nTopic: [topic] or something else?")
  assert p3_instructions.template_instruction(t["generate"]) == (
      "Write a sentence about [topic].")


@pytest.mark.parametrize("jinja, choices, expected", [
    # Nested fields, filters, str methods, slices.
    ("{{ passage.text | trim }} {{ question.strip() }} {{ answers['text'][0] }}"
     " {{ premise[:-1] | lower }}. ||| {{ label }}", None,
     "[passage.text] [question] [answers.text[0]] [premise]."),
    # Static answer choices are kept; the target part is never rendered.
    ("{{ premise }} {{ answer_choices | join(' or ') }}? ||| "
     "{{ answer_choices[label] }}", "Yes ||| No", "[premise] Yes or No?"),
    # A conditional on a row field shows the branches it may take.
    ('{{ premise }} {% if question == "cause" %}because{% else %}so'
     '{% endif %} ||| x', None, "[premise] [because | so]"),
    # A branch empty for some rows: the template applies to the others.
    ('{% if question == "effect" %}{{ premise }} What next? ||| x{% endif %}',
     None, "[premise] What next?"),
    # Loops over a row list: one element stands for all of them.
    ("{% for c in choices %}- {{ c }}\n{% endfor %}Pick one. ||| x", None,
     "- [choices]\nPick one."),
    # Known values still select as jinja does.
    ('{% set n = 2 %}{% if n > 1 %}many{% else %}one{% endif %} {{ x }} ||| y',
     None, "many [x]"),
    # Row-derived answer choices stay one blank, indexed.
    ("{{ ctx }} (a) {{ answer_choices[0] }} (b) {{ answer_choices[1] }} ||| x",
     '{{ endings | join(" ||| ") }}', "[ctx] (a) [answer_choices[0]] "
     "(b) [answer_choices[1]]"),
])
def test_blank_instruction_constructs(jinja, choices, expected):
  template = p3_templates.Template(name="t", jinja=jinja,
                                   answer_choices=choices)
  assert p3_instructions.blank_instruction(template) == expected


def test_unblankable_template_falls_back_to_the_prompt(tmp_path, caplog,
                                                       clean_registry):
  # A loop filtered on a row value: how many items it shows depends on the row.
  jinja = ('Is "{{ sentence }}" about {% for t in ["cats", "dogs", "birds"] '
           'if t != topic %}{{ t }} or {% endfor %}nothing? ||| '
           '{{ answer_choices[label] }}')
  yaml_text = textwrap.dedent(f"""\
      dataset: odd
      templates:
        id-x: !Template
          answer_choices: no ||| yes
          id: id-x
          jinja: '{jinja}'
          metadata: !TemplateMetadata
            original_task: true
          name: other topics
      """)
  templates_dir, data_dir = _write_dataset(tmp_path, "odd", "sub", yaml_text,
                                           {"validation": _rows(4)})
  template = p3_templates.load_templates(templates_dir, "odd", "sub")[0]
  with caplog.at_level("WARNING"):
    assert p3_instructions.template_instruction(template) is None
  assert "'other topics'" in caplog.text and "odd/sub" in caplog.text
  p3_tasks.register_t0(templates_dir, data_dir, train_datasets=(),
                       eval_datasets=(p3_rows.P3Dataset("odd", "sub"),),
                       shots=())
  records = pipeline.load_examples("p3_odd_sub_other_topics_score_eval",
                                   "validation")
  assert len(records) == 8
  assert all(r[F.HYPER_INPUTS] == r[F.INPUTS] for r in records)
  assert len({r[F.HYPER_INPUTS] for r in records}) == 4


def test_template_instruction_is_the_default(toy_p3, clean_registry):
  p3_tasks.register_t0(toy_p3[0], toy_p3[1], train_datasets=(TOYDS,),
                       eval_datasets=(TOYDS,), shots=())
  for name, split in (("p3_toyds_sub_is_about_score_eval", "validation"),
                      ("p3_toyds_sub_is_about", "train")):
    records = pipeline.load_examples(name, split)
    assert {r[F.HYPER_INPUTS] for r in records} == {
        'Is "[sentence]" about [topic]?'}
    assert len({r[F.INPUTS] for r in records}) == len(records) // (
        2 if split == "validation" else 1)
    assert records[0][F.INPUTS] == 'Is "Sentence number {}." about cats?'.format(
        100 if split == "validation" else 0)
  with pytest.raises(ValueError, match="instruction"):
    p3_tasks.register_t0(toy_p3[0], toy_p3[1], instruction="shots")
  with pytest.raises(ValueError, match="few-shot format"):
    p3_tasks.register_t0(toy_p3[0], toy_p3[1], few_shot_format="gpt3")


def test_flan_few_shot_format_hand_written():
  shots = [p3.Rendered("Q1?", "A1", None), p3.Rendered("Q2?", "A2", None)]
  rendered = p3.Rendered("Q?", "A", None)
  template = p3_templates.Template("t", "x")
  flan = p3.make_record(TOYDS, template, rendered, "id",
                        shots=shots, instruction="Answer [q].")
  # HINT's FLAN-style exemplars before the instruction; " X" after the query.
  assert flan[F.HYPER_INPUTS] == (
      "0 Q1? X 1 A1 X 0 Q2? X 1 A2 X  Definition: Answer [q].")
  assert flan[F.INPUTS] == "Q? X"
  newline = p3.make_record(TOYDS, template, rendered, "id",
                           shots=shots, instruction="Answer [q].",
                           shot_format="newline")
  assert newline[F.HYPER_INPUTS] == "Q1?\nA1\n\nQ2?\nA2\n\nAnswer [q]."
  assert newline[F.INPUTS] == "Q?"
  concat = p3.make_record(TOYDS, template, rendered, "id",
                          shots=shots, shots_in_inputs=True,
                          instruction="Answer [q].")
  assert (concat[F.HYPER_INPUTS], concat[F.INPUTS]) == (
      "", "0 Q1? X 1 A1 X 0 Q2? X 1 A2 X  Definition: Q? X")
  # Zero-shot records are the same in both formats.
  assert (p3.make_record(TOYDS, template, rendered, "id") ==
          p3.make_record(TOYDS, template, rendered, "id",
                         shot_format="newline"))


def test_flan_format_in_registered_tasks(toy_p3, clean_registry):
  _register_toy(toy_p3, instruction="template", few_shot_format="flan")
  instruction = 'Is "[sentence]" about [topic]?'
  labels = ["no", "yes"]
  shot_texts = {f"0 {_prompt_of(r)} X 1 {labels[r['label']]} X "
                for r in _rows(9)}
  records = pipeline.load_examples("p3_toyds_sub_is_about_score_eval_2_shot",
                                   "validation")
  assert len(records) == 12
  for r in records:
    shots, query = r[F.HYPER_INPUTS].split(" Definition: ")
    assert query == instruction
    parts = [s + " X " for s in shots.split(" X 0 ")]
    parts = [parts[0], "0 " + parts[1][:-3]]
    assert all(p in shot_texts for p in parts), parts
    assert r[F.INPUTS].endswith("? X")
  concat = pipeline.load_examples(
      "p3_toyds_sub_is_about_score_eval_2_shot_concat", "validation")
  assert [c[F.INPUTS] for c in concat] == [
      h[F.HYPER_INPUTS][:-len(instruction)] + h[F.INPUTS] for h in records]


def test_real_held_out_templates_give_one_instruction_per_task(
    shared_data, clean_registry):
  root = str(shared_data / "p3" / "promptsource_templates")
  data = str(shared_data / "p3")
  # Every example of every COPA / WSC template: one instruction per template.
  for dataset in (p3_rows.P3Dataset("super_glue", "copa"),
                  p3_rows.P3Dataset("super_glue", "wsc.fixed",
                                    aliases=("wsc",))):
    path = p3_rows.find_data_file(data, dataset, "validation")
    rows = [row for _, row in p3_rows.iter_jsonl(path)]
    templates = [t for t in p3_templates.load_templates(root, dataset.name,
                                                        dataset.subset)
                 if t.original_task]
    assert len(templates) >= 10
    for template in templates:
      instruction = p3_instructions.template_instruction(template)
      assert instruction and "[" in instruction, template.name
      hyper = set()
      for i, row in enumerate(rows):
        rendered = p3.render(template, row)
        if rendered is not None:
          hyper.add(p3.make_record(dataset, template, rendered, str(i),
                                   instruction=instruction)[F.HYPER_INPUTS])
      assert hyper == {instruction}, template.name
  # And through a registered score_eval task (all 100 COPA examples).
  p3_tasks.register_t0(root, data, shots=())
  records = pipeline.load_examples("p3_super_glue_copa_exercise_score_eval",
                                   "validation")
  assert len(records) == 200
  assert {r[F.HYPER_INPUTS] for r in records} == {
      "Exercise: choose the most plausible alternative.\n\n"
      "[premise] [because... | so...]\n- [choice1]\n- [choice2]"}
  assert records[0][F.INPUTS] == (
      "Exercise: choose the most plausible alternative.\n\n"
      "The man turned on the faucet.  so... \n"
      "- The toilet filled with water.\n- Water flowed from the spout.")


def test_real_template_files_derive_instructions(shared_data):
  """Derives every promptsource 0.2.3 template's instruction (p3_instructions.py
  docstring)."""
  root = shared_data / "p3" / "promptsource_templates"
  ok = total = 0
  for path in sorted(root.glob("**/templates.yaml")):
    rel = path.parent.relative_to(root).parts
    for t in p3_templates.load_templates(
        str(root), rel[0], rel[1] if len(rel) > 1 else None):
      total += 1
      try:
        ok += bool(p3_instructions.blank_instruction(t))
      except Exception:  # pylint: disable=broad-except
        pass
  assert total == 2085
  assert ok == 2030  # 97.4%; the rest fall back to the per-example form.


class _ArrowLikeSplit:
  """A stand-in for a memory-mapped ``datasets.Dataset``: ``len`` and ``ds[i]``;
  iterating or listing the whole split is an error (that would materialise it)."""

  def __init__(self, n):
    self.n, self.read = n, []

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    self.read.append(i)
    return {"premise": f"p{i}", "label": i % 2}

  def __iter__(self):
    raise AssertionError("the whole split was iterated")


def test_hf_datasets_split_is_read_row_by_row_never_materialised(monkeypatch):
  import sys
  import types
  split = _ArrowLikeSplit(10)
  calls = []
  fake = types.ModuleType("datasets")
  fake.load_dataset = lambda name, subset, split: calls.append(
      (name, subset, split)) or splits_by_name[split]
  splits_by_name = {"train": split}
  monkeypatch.setitem(sys.modules, "datasets", fake)
  p3_rows._hf_rows_cached.cache_clear()
  try:
    dataset = p3_rows.P3Dataset("fake_ds", "sub")
    reader = p3_rows.RowReader(dataset, data_dir=None, use_hf_datasets=True)
    assert reader.num_rows("train") == 10
    shard = list(reader.rows("train", shard_index=1, num_shards=3))
    assert [i for i, _ in shard] == [1, 4, 7]
    assert shard[1][1] == {"premise": "p4", "label": 0}
    assert split.read == [1, 4, 7]  # Only this shard's rows were read.
    assert reader.rows_at("train", [9, 0]) == [{"premise": "p9", "label": 1},
                                               {"premise": "p0", "label": 0}]
    assert calls == [("fake_ds", "sub", "train")]  # Loaded once, kept mapped.
  finally:
    p3_rows._hf_rows_cached.cache_clear()
