"""Toy instruction tasks: list and word operations described in plain English.

The embedded default's data, sized for the CPU demo: a tiny byte-level T5 must
learn them in minutes, so inputs are at most 15 bytes (5-8 digits, or a 3-7 letter
word), targets at most 15 bytes, instructions one short sentence. The operations
are mostly "find" operations (largest, first, how many...) that a tiny model learns
in a few hundred steps; copy-heavy ones (reverse, uppercase a word) take thousands
of steps at this size and would only add noise to the demo's table.

The instruction is necessary: all list operations read the same kind of input
("3 1 4 1 5"), all word operations the same kind of word, and map it to different
targets (max -> "5", first -> "3", length -> "5", sort -> "1 1 3 4 5"). Only the
instruction tells them apart.

Instructions are a *core* (the part that names the operation: "find the maximum of
the list") inside a *frame* ("Please {}.", "Task: {}."), so each seen operation is
trained with 50 different sentences (5 cores x 10 frames) and the hypernetwork has to
read the words that matter rather than memorise sentences. Zero-shot tests:

  * held-out phrasings of seen operations: 2 cores per operation never seen in
    training ("return the maximum digit"), in every frame, three of them unseen.
    They reuse a content word of the seen cores ("maximum"), never a whole
    sentence. This is the demo's headline column.
  * held-out operations: a concept seen on one input kind asked of the other
    ("give the last number" is trained only as "give the last letter of the word";
    "give the length of the word" only as "... of the list"). Harder.

Registered names (``<format>`` is empty, ``concat_`` or ``noinstr_``):

  ``toy_<format>train``                  seen operations, seen phrasings
  ``toy_<format>test_seen``              the same, fresh instances
  ``toy_<format>test_heldout_phrasing``  seen operations, held-out phrasings
  ``toy_<format>test_heldout_op``        held-out operations

Formats: HINT (instruction in ``hyper_inputs``, instance in ``inputs``); ``concat``
(baseline: ``"<instruction> Input: <instance>"`` in ``inputs``, ``hyper_inputs``
empty); ``noinstr`` (control: instance only, ``hyper_inputs`` empty). All three use
the same instances.

Few-shot (``shots``, Tk-Instruct's format names of ``sni_formats.py``): ``def_pos_K``
makes the instruction ``"Definition: <phrasing>.\n\n"`` followed by K positive
examples (`` Positive Example 1 -\nInput: ...\n Output: ...\n``, built by
``sni_formats``), ``pos_K`` the examples alone; registered as
``toy_[concat_]<shots>_<subset>`` (no ``noinstr``: it has no instruction). An
operation has ``MAX_SHOTS`` positive examples per phrasing: inputs drawn from the
operation's own input distribution, deterministic per (operation, phrasing,
seed), and never the evaluated instance's input (the next one of the pool takes
its place). So every instruction is still shared by many instances (one
hypernetwork run per instruction), and the examples differ across phrasings. Each task has ``train``, ``validation`` and ``test`` splits,
independent samples of the same distribution. ``task_names`` is the operation,
``category`` its input kind, ``template`` ``"<operation>/<phrasing index>"`` (an
index into ``Operation.phrasings``).
"""
from __future__ import annotations

import dataclasses
import functools
import random
import zlib
from typing import Callable, Optional

from hyper_tasks.data import features as F
from hyper_tasks.data import registry
from hyper_tasks.data import sni
from hyper_tasks.data import sni_formats
from hyper_tasks.data import sources
from hyper_tasks.data import vocab as vocab_lib

LIST = "list"
WORD = "word"
FORMATS = ("", "concat", "noinstr")
SUBSETS = ("train", "test_seen", "test_heldout_phrasing", "test_heldout_op")
SPLITS = ("train", "validation", "test")
TEST_PHRASINGS_PER_OP = 10
# Few-shot formats registered by default, and positive examples per instruction.
SHOT_FORMATS = ("def_pos_2", "pos_2")
MAX_SHOTS = 4

# "{c}" is the core as written, "{C}" the core with a capital first letter.
SEEN_FRAMES = ("{C}.", "Please {c}.", "Task: {c}.", "{C}, please.",
               "Your job is to {c}.", "Read the input and {c}.",
               "I need you to {c}.", "{C}. Answer briefly.",
               "Look at the input, then {c}.", "Go ahead and {c}.")
HELDOUT_FRAMES = ("Now {c}.", "Instruction: {c}.", "You must {c}.")
FRAMES = SEEN_FRAMES + HELDOUT_FRAMES


def frame(template: str, core: str) -> str:
  return template.format(c=core, C=core[0].upper() + core[1:])


@dataclasses.dataclass(frozen=True)
class Operation:
  """One toy operation: its input kind, function, and instruction cores.

  A seen operation trains on ``cores`` x ``SEEN_FRAMES``; its held-out phrasings
  are ``heldout_cores`` x ``FRAMES``. Every phrasing of a held-out operation
  (``cores`` x ``FRAMES``) is unseen.
  """
  name: str
  kind: str
  fn: Callable[[str], str]
  cores: tuple[str, ...]
  heldout_cores: tuple[str, ...] = ()
  heldout: bool = False

  @property
  def seen_phrasings(self) -> tuple[str, ...]:
    if self.heldout:
      return ()
    return tuple(frame(f, c) for c in self.cores for f in SEEN_FRAMES)

  @property
  def heldout_phrasings(self) -> tuple[str, ...]:
    cores = self.cores if self.heldout else self.heldout_cores
    return tuple(frame(f, c) for c in cores for f in FRAMES)

  @property
  def phrasings(self) -> tuple[str, ...]:
    """Seen then held-out phrasings; templates index into this."""
    return self.seen_phrasings + self.heldout_phrasings


def _digits(x: str) -> list[int]:
  return [int(d) for d in x.split()]


def _join(ds) -> str:
  return " ".join(str(d) for d in ds)


_VOWELS = "aeiou"
_CONSONANTS = "bcdfghjklmnprstvwz"

OPERATIONS = (
    Operation("list_max", LIST, lambda x: str(max(_digits(x))), (
        "give the largest number",
        "find the maximum of the list",
        "write the biggest digit",
        "output the highest number",
        "pick the largest digit in the list",
    ), ("return the maximum digit", "tell me the biggest number")),
    Operation("list_min", LIST, lambda x: str(min(_digits(x))), (
        "give the smallest number",
        "find the minimum of the list",
        "write the lowest digit",
        "output the least number",
        "pick the smallest digit in the list",
    ), ("return the minimum digit", "tell me the lowest number")),
    Operation("list_first", LIST, lambda x: x.split()[0], (
        "give the first number",
        "write the number at the start of the list",
        "output the first digit",
        "copy the first number of the list",
        "pick the digit that comes first",
    ), ("return the first digit", "tell me which number is at the start")),
    Operation("list_length", LIST, lambda x: str(len(x.split())), (
        "count the numbers",
        "give the length of the list",
        "say how many digits there are",
        "write the number of items in the list",
        "count how many numbers the list has",
    ), ("return the length of the list", "tell me how many numbers there are")),
    Operation("list_sort", LIST, lambda x: _join(sorted(_digits(x))), (
        "sort the numbers",
        "write the digits in increasing order",
        "sort the list",
        "arrange the numbers in ascending order",
        "put the digits in sorted order",
    ), ("return the list sorted", "tell me the numbers in ascending order")),
    Operation("word_first_letter", WORD, lambda w: w[0], (
        "give the first letter of the word",
        "write the letter at the start of the word",
        "output the first letter",
        "copy the first letter of the word",
        "pick the letter that comes first",
    ), ("return the first letter", "tell me which letter is at the start")),
    Operation("word_last_letter", WORD, lambda w: w[-1], (
        "give the last letter of the word",
        "write the letter at the end of the word",
        "output the last letter",
        "copy the last letter of the word",
        "pick the letter that comes last",
    ), ("return the last letter", "tell me which letter is at the end")),
    Operation("word_count_vowels", WORD,
              lambda w: str(sum(ch in _VOWELS for ch in w)), (
                  "count the vowels",
                  "say how many vowels the word has",
                  "give the number of vowels",
                  "write how many vowels there are",
                  "count the vowels in the word",
              ), ("return the number of vowels",
                  "tell me how many vowels there are")),
    Operation("word_first_letter_upper", WORD, lambda w: w[0].upper(), (
        "give the first letter in uppercase",
        "write the first letter as a capital",
        "output the first letter in capitals",
        "capitalize the first letter and give it",
        "copy the first letter as an uppercase letter",
    ), ("return the first letter in capitals",
        "tell me the first letter as an uppercase letter")),
    # Held-out operations: a concept trained on the other input kind.
    Operation("list_last", LIST, lambda x: x.split()[-1], (
        "give the last number",
        "write the number at the end of the list",
        "output the last digit",
        "return the last digit",
        "tell me which number is at the end",
    ), heldout=True),
    Operation("word_length", WORD, lambda w: str(len(w)), (
        "count the letters",
        "give the length of the word",
        "say how many letters there are",
        "return the length of the word",
        "tell me how many letters the word has",
    ), heldout=True),
)
OPERATIONS_BY_NAME = {op.name: op for op in OPERATIONS}


def random_input(kind: str, rng: random.Random) -> str:
  """A list of 5-8 digits (``"3 1 4 1 5"``) or a 3-7 letter pronounceable word.

  Lists are long enough that the first digit, the largest and the smallest rarely
  coincide, so guessing one operation's answer scores little on the others.
  """
  if kind == LIST:
    return _join(rng.randrange(10) for _ in range(rng.randint(5, 8)))
  length = rng.randint(3, 7)
  start = rng.randrange(2)  # words start with a consonant or a vowel
  letters = [rng.choice(_CONSONANTS if (i + start) % 2 == 0 else _VOWELS)
             for i in range(length)]
  return "".join(letters)


def _seed(*parts) -> int:
  return zlib.crc32("/".join(str(p) for p in parts).encode())


def instances(subset: str, split: str, *, num_per_op: int = 500,
              num_test_per_op: int = 40, seed: int = 0) -> list[dict]:
  """Deterministic ``(op, phrasing index, input, target)`` instances.

  ``train`` draws ``num_per_op`` instances per operation, cycling through all its
  seen phrasings; test subsets draw ``num_test_per_op`` per operation, cycling
  through a sample of ``TEST_PHRASINGS_PER_OP`` of the subset's phrasings.
  """
  if subset not in SUBSETS:
    raise ValueError(f"Unknown toy subset {subset!r}; choose from {SUBSETS}.")
  rng = random.Random(_seed("toy", subset, split, seed))
  out = []
  for op in OPERATIONS:
    if (subset == "test_heldout_op") != op.heldout:
      continue
    num_seen = len(op.seen_phrasings)
    if subset in ("train", "test_seen"):
      indices = list(range(num_seen))
    else:
      indices = list(range(num_seen, len(op.phrasings)))
    rng.shuffle(indices)
    if subset != "train":
      # A sample of phrasings, several instances each: per-template statistics
      # mean something and an evaluation encodes fewer distinct instructions.
      indices = indices[:TEST_PHRASINGS_PER_OP]
    count = num_per_op if subset == "train" else num_test_per_op
    for i in range(count):
      index = indices[i % len(indices)]
      x = random_input(op.kind, rng)
      out.append(dict(op=op, phrasing_index=index, phrasing=op.phrasings[index],
                      input=x, target=op.fn(x)))
  return out


def parse_shots(shots: str) -> sni_formats.SniFormat:
  """``""`` (zero-shot), ``"def_pos_K"`` or ``"pos_K"`` -> its SniFormat.

  Raises:
    ValueError: another SNI format name (negatives, explanations, ``concat_``:
      the toy format carries where the instruction goes).
  """
  fmt = sni_formats.parse_format(shots or "def")
  if fmt.num_neg or fmt.explanation or fmt.concat:
    raise ValueError(f"Unknown toy few-shot format {shots!r}: use def_pos_K or "
                     "pos_K (positive examples only).")
  return fmt


def demonstrations(op: Operation, k: int, phrasing_index: int, *,
                   exclude: str = "", seed: int = 0,
                   task: str = "") -> list[sni.Demonstration]:
  """``k`` positive examples of ``op`` for one phrasing, none with input ``exclude``.

  The pool holds ``MAX_SHOTS + 1`` distinct inputs of ``op``'s kind drawn from a
  stream seeded by (operation, phrasing, seed); the first ``k`` that differ from
  ``exclude`` are taken, so the same instruction serves every other instance.

  Raises:
    ValueError: ``k`` above ``MAX_SHOTS`` (or negative), naming the task and k.
  """
  if not 0 <= k <= MAX_SHOTS:
    raise ValueError(
        f"Toy task {task or op.name!r}: k={k} positive examples asked, but "
        f"operation {op.name!r} has {MAX_SHOTS} per instruction (toy.MAX_SHOTS).")
  rng = random.Random(_seed("toy-demos", op.name, phrasing_index, seed))
  pool: list[str] = []
  while len(pool) < MAX_SHOTS + 1:
    x = random_input(op.kind, rng)
    if x not in pool:
      pool.append(x)
  return [sni.Demonstration(x, op.fn(x)) for x in pool if x != exclude][:k]


def instruction_text(phrasing: str, demos, definition: bool = True) -> str:
  """The instruction: the phrasing alone without examples (zero-shot), else
  Tk-Instruct's definition and example parts (``sni_formats``)."""
  if not demos:
    return phrasing
  text = sni_formats.definition_part(phrasing) if definition else ""
  return text + "".join(sni_formats.demonstration_part(d, i + 1, "Positive", False)
                        for i, d in enumerate(demos))


def format_instance(instance: dict, fmt: str, example_id: str, shots: str = "",
                    seed: int = 0, task: str = "") -> dict:
  """One record in format ``""`` (HINT), ``"concat"`` or ``"noinstr"``, with the
  few-shot format ``shots`` (``""``: zero-shot; see the module docstring)."""
  op, phrasing, x = instance["op"], instance["phrasing"], instance["input"]
  if fmt not in FORMATS:
    raise ValueError(f"Unknown toy format {fmt!r}; choose from {FORMATS}.")
  if shots:
    few = parse_shots(shots)
    if fmt == "noinstr":
      raise ValueError(
          f"Toy task {task or 'toy_noinstr'!r} has no instruction: k="
          f"{few.num_pos} positive examples ({shots!r}) cannot be added to it.")
    demos = demonstrations(op, few.num_pos, instance["phrasing_index"], exclude=x,
                           seed=seed, task=task)
    phrasing = instruction_text(phrasing, demos, few.definition)
  if fmt == "":
    hyper, inputs = phrasing, x
  elif fmt == "concat":
    hyper, inputs = "", f"{phrasing} Input: {x}"
  else:
    hyper, inputs = "", x
  return F.make_example(
      hyper, inputs, instance["target"], op.name, category=op.kind,
      template=f"{op.name}/{instance['phrasing_index']}",
      example_id=example_id)


@functools.lru_cache(maxsize=64)
def records(fmt: str, subset: str, split: str, num_per_op: int = 500,
            num_test_per_op: int = 40, seed: int = 0,
            shots: str = "") -> tuple[dict, ...]:
  """All records of one toy task and split (cached; a few thousand)."""
  task = task_name(fmt, subset, shots)
  return tuple(
      format_instance(inst, fmt, f"toy-{subset}-{split}-{i}", shots, seed, task)
      for i, inst in enumerate(instances(
          subset, split, num_per_op=num_per_op,
          num_test_per_op=num_test_per_op, seed=seed)))


def task_name(fmt: str, subset: str, shots: str = "") -> str:
  return f"toy_{fmt + '_' if fmt else ''}{shots + '_' if shots else ''}{subset}"


def register_toy(vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE,
                 num_per_op: int = 500, num_test_per_op: int = 40,
                 seed: int = 0,
                 shot_formats: tuple[str, ...] = SHOT_FORMATS) -> list[str]:
  """Registers every toy task (see the module docstring); returns the names.

  ``shot_formats``: the few-shot formats registered besides zero-shot (HINT and
  ``concat`` formats only).
  """
  vocabulary = vocab_lib.get_vocabulary(vocabulary)
  for shots in shot_formats:
    parse_shots(shots)  # Fail now on a bad name.
  names = []
  for fmt in FORMATS:
    for shots in ("",) + (tuple(shot_formats) if fmt != "noinstr" else ()):
      for subset in SUBSETS:
        name = task_name(fmt, subset, shots)
        key = ("toy", fmt, subset, num_per_op, num_test_per_op, seed, shots,
               vocab_lib.vocabulary_key(vocabulary))
        fn = sources.records_fn(functools.partial(
            _split_records, fmt, subset, num_per_op=num_per_op,
            num_test_per_op=num_test_per_op, seed=seed, shots=shots))
        registry.add_task(name, key, functools.partial(
            sources.text_task_kwargs, sources.RecordsSource(fn, SPLITS),
            vocabulary), evaluation_mode=registry.GENERATION)
        names.append(name)
  return names


def _split_records(fmt: str, subset: str, split: str, *, num_per_op: int,
                   num_test_per_op: int, seed: int,
                   shots: str = "") -> tuple[dict, ...]:
  return records(fmt, subset, split, num_per_op, num_test_per_op, seed, shots)


def describe(op_name: Optional[str] = None) -> str:
  """Human-readable list of operations and their cores (CLI, notebooks)."""
  lines = [f"frames (seen): {' | '.join(SEEN_FRAMES)}",
           f"frames (held out): {' | '.join(HELDOUT_FRAMES)}"]
  for op in OPERATIONS:
    if op_name and op.name != op_name:
      continue
    tag = "held-out op" if op.heldout else "seen op"
    lines.append(f"{op.name} ({op.kind}, {tag})")
    for c in ((), op.cores)[not op.heldout]:
      lines.append(f"    seen:     {c}")
    for c in op.cores if op.heldout else op.heldout_cores:
      lines.append(f"    held out: {c}")
  return "\n".join(lines)
