"""Toy instruction tasks: list and word operations described in plain English.

The embedded default's data, sized for the CPU demo: a tiny byte-level T5 must
learn them in minutes, so inputs are at most 13 bytes (3-7 digits, or a 3-7 letter
word), targets at most 14 bytes, instructions one short sentence.

The instruction is necessary: all list operations read the same kind of input
("3 1 4 1 5"), all word operations the same kind of word, and map it to different
targets (reverse -> "5 1 4 1 3", max -> "5", length -> "5"...). Only the
instruction tells them apart.

Each operation has 3-4 seen phrasings and one held-out phrasing. Three operations
are held out entirely; their phrasings reuse the words of seen ones ("sort ... from
largest to smallest", "first letter ... in uppercase", "reverse ... in capital
letters"), so they test composition, and will be hard. Held-out phrasings of seen
operations are the main zero-shot test.

Registered names (``<format>`` is empty, ``concat_`` or ``noinstr_``):

  ``toy_<format>train``                  seen operations, seen phrasings
  ``toy_<format>test_seen``              the same, fresh instances
  ``toy_<format>test_heldout_phrasing``  seen operations, held-out phrasings
  ``toy_<format>test_heldout_op``        held-out operations

Formats: HINT (instruction in ``hyper_inputs``, instance in ``inputs``); ``concat``
(baseline: ``"<instruction> Input: <instance>"`` in ``inputs``, ``hyper_inputs``
empty); ``noinstr`` (control: instance only, ``hyper_inputs`` empty). All three use
the same instances. Each task has ``train``, ``validation`` and ``test`` splits,
independent samples of the same distribution. ``task_names`` is the operation,
``category`` its input kind, ``template`` ``"<operation>/<phrasing index>"``.
"""
from __future__ import annotations

import dataclasses
import functools
import random
import zlib
from typing import Callable, Optional

from hyper_tasks.data import features as F
from hyper_tasks.data import registry
from hyper_tasks.data import sources
from hyper_tasks.data import vocab as vocab_lib

LIST = "list"
WORD = "word"
FORMATS = ("", "concat", "noinstr")
SUBSETS = ("train", "test_seen", "test_heldout_phrasing", "test_heldout_op")
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Operation:
  """One toy operation: its input kind, function, and phrasings.

  ``phrasings[-1]`` is the held-out phrasing of a seen operation; every phrasing
  of a held-out operation is unseen.
  """
  name: str
  kind: str
  fn: Callable[[str], str]
  phrasings: tuple[str, ...]
  heldout: bool = False

  @property
  def seen_phrasings(self) -> tuple[str, ...]:
    return () if self.heldout else self.phrasings[:-1]

  @property
  def heldout_phrasings(self) -> tuple[str, ...]:
    return self.phrasings if self.heldout else self.phrasings[-1:]


def _digits(x: str) -> list[int]:
  return [int(d) for d in x.split()]


def _join(ds) -> str:
  return " ".join(str(d) for d in ds)


def _dedupe(x: str) -> str:
  seen, out = set(), []
  for d in _digits(x):
    if d not in seen:
      seen.add(d)
      out.append(d)
  return _join(out)


OPERATIONS = (
    Operation("list_reverse", LIST, lambda x: _join(_digits(x)[::-1]), (
        "Reverse the list.",
        "Write the numbers in reverse order.",
        "List the digits from last to first.",
        "Flip the order of the numbers.",
        "Give the list backwards.")),
    Operation("list_sort", LIST, lambda x: _join(sorted(_digits(x))), (
        "Sort the numbers from smallest to largest.",
        "Put the digits in increasing order.",
        "Arrange the list in ascending order.",
        "Order the numbers, lowest first.")),
    Operation("list_first", LIST, lambda x: x.split()[0], (
        "What is the first number?",
        "Give the first digit of the list.",
        "Output the number at the start.",
        "Which number comes first?")),
    Operation("list_last", LIST, lambda x: x.split()[-1], (
        "What is the last number?",
        "Give the last digit of the list.",
        "Output the number at the end.",
        "Which number comes last?")),
    Operation("list_length", LIST, lambda x: str(len(x.split())), (
        "How many numbers are in the list?",
        "Count the digits.",
        "Give the length of the list.",
        "Tell me how many numbers there are.")),
    Operation("list_sum_mod_10", LIST, lambda x: str(sum(_digits(x)) % 10), (
        "Add the numbers and give the last digit of the sum.",
        "What is the sum modulo 10?",
        "Give the sum of the digits mod 10.",
        "Sum the list and keep only the ones digit.")),
    Operation("list_max", LIST, lambda x: str(max(_digits(x))), (
        "What is the largest number?",
        "Give the biggest digit.",
        "Find the maximum of the list.",
        "Which number is the highest?")),
    Operation("list_min", LIST, lambda x: str(min(_digits(x))), (
        "What is the smallest number?",
        "Give the lowest digit.",
        "Find the minimum of the list.",
        "Which number is the least?")),
    Operation("list_dedupe", LIST, _dedupe, (
        "Remove the duplicate numbers.",
        "Keep only the first copy of each digit.",
        "Delete repeated numbers from the list.",
        "Write the list without repeats.")),
    Operation("word_upper", WORD, str.upper, (
        "Write the word in uppercase.",
        "Convert the word to capital letters.",
        "Make every letter uppercase.",
        "Capitalize all the letters.")),
    Operation("word_reverse", WORD, lambda w: w[::-1], (
        "Reverse the word.",
        "Spell the word backwards.",
        "Write the letters in reverse order.",
        "Give the word from its last letter to its first.")),
    Operation("word_first_letter", WORD, lambda w: w[0], (
        "What is the first letter of the word?",
        "Give the letter at the start of the word.",
        "Output the first letter.",
        "Which letter does the word begin with?")),
    Operation("word_last_letter", WORD, lambda w: w[-1], (
        "What is the last letter of the word?",
        "Give the letter at the end of the word.",
        "Output the last letter.",
        "Which letter does the word end with?")),
    Operation("word_double", WORD, lambda w: w + w, (
        "Write the word twice.",
        "Repeat the word two times.",
        "Double the word.",
        "Say the word and then say it again.")),
    # Held-out operations: composed from the vocabulary of seen ones.
    Operation("list_sort_desc", LIST,
              lambda x: _join(sorted(_digits(x), reverse=True)), (
                  "Sort the numbers from largest to smallest.",
                  "Put the digits in decreasing order.",
                  "Arrange the list in descending order."), heldout=True),
    Operation("word_first_letter_upper", WORD, lambda w: w[0].upper(), (
        "Give the first letter of the word in uppercase.",
        "Write the first letter as a capital letter."), heldout=True),
    Operation("word_reverse_upper", WORD, lambda w: w[::-1].upper(), (
        "Reverse the word and write it in uppercase.",
        "Spell the word backwards in capital letters."), heldout=True),
)
OPERATIONS_BY_NAME = {op.name: op for op in OPERATIONS}

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def random_input(kind: str, rng: random.Random) -> str:
  """A list of 3-7 digits (``"3 1 4"``) or a 3-7 letter pronounceable word."""
  if kind == LIST:
    return _join(rng.randrange(10) for _ in range(rng.randint(3, 7)))
  length = rng.randint(3, 7)
  letters = [rng.choice(_CONSONANTS if i % 2 == 0 else _VOWELS)
             for i in range(length)]
  return "".join(letters)


def _seed(*parts) -> int:
  return zlib.crc32("/".join(str(p) for p in parts).encode())


def instances(subset: str, split: str, *, num_per_op: int = 500,
              num_per_phrasing: int = 20, seed: int = 0) -> list[dict]:
  """Deterministic ``(op, phrasing index, input, target)`` instances.

  ``train`` subsets draw ``num_per_op`` instances per operation (phrasings
  cycled); test subsets ``num_per_phrasing`` per (operation, phrasing).
  """
  if subset not in SUBSETS:
    raise ValueError(f"Unknown toy subset {subset!r}; choose from {SUBSETS}.")
  rng = random.Random(_seed("toy", subset, split, seed))
  out = []
  for op in OPERATIONS:
    if subset in ("train", "test_seen"):
      if op.heldout:
        continue
      phrasings = list(enumerate(op.seen_phrasings))
    elif subset == "test_heldout_phrasing":
      if op.heldout:
        continue
      phrasings = [(len(op.phrasings) - 1, op.phrasings[-1])]
    else:
      if not op.heldout:
        continue
      phrasings = list(enumerate(op.phrasings))
    if subset == "train":
      slots = [phrasings[i % len(phrasings)] for i in range(num_per_op)]
    else:
      slots = [p for p in phrasings for _ in range(num_per_phrasing)]
    for index, phrasing in slots:
      x = random_input(op.kind, rng)
      out.append(dict(op=op, phrasing_index=index, phrasing=phrasing, input=x,
                      target=op.fn(x)))
  return out


def format_instance(instance: dict, fmt: str, example_id: str) -> dict:
  """One record in format ``""`` (HINT), ``"concat"`` or ``"noinstr"``."""
  op, phrasing, x = instance["op"], instance["phrasing"], instance["input"]
  if fmt == "":
    hyper, inputs = phrasing, x
  elif fmt == "concat":
    hyper, inputs = "", f"{phrasing} Input: {x}"
  elif fmt == "noinstr":
    hyper, inputs = "", x
  else:
    raise ValueError(f"Unknown toy format {fmt!r}; choose from {FORMATS}.")
  return F.make_example(
      hyper, inputs, instance["target"], op.name, category=op.kind,
      template=f"{op.name}/{instance['phrasing_index']}",
      example_id=example_id)


@functools.lru_cache(maxsize=64)
def records(fmt: str, subset: str, split: str, num_per_op: int = 500,
            num_per_phrasing: int = 20, seed: int = 0) -> tuple[dict, ...]:
  """All records of one toy task and split (cached; a few thousand)."""
  return tuple(
      format_instance(inst, fmt, f"toy-{subset}-{split}-{i}")
      for i, inst in enumerate(instances(
          subset, split, num_per_op=num_per_op,
          num_per_phrasing=num_per_phrasing, seed=seed)))


def task_name(fmt: str, subset: str) -> str:
  return f"toy_{fmt + '_' if fmt else ''}{subset}"


def register_toy(vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE,
                 num_per_op: int = 500, num_per_phrasing: int = 20,
                 seed: int = 0) -> list[str]:
  """Registers every toy task (see the module docstring); returns the names."""
  vocabulary = vocab_lib.get_vocabulary(vocabulary)
  names = []
  for fmt in FORMATS:
    for subset in SUBSETS:
      name = task_name(fmt, subset)
      key = ("toy", fmt, subset, num_per_op, num_per_phrasing, seed,
             vocab_lib.vocabulary_key(vocabulary))
      fn = sources.records_fn(functools.partial(
          _split_records, fmt, subset, num_per_op=num_per_op,
          num_per_phrasing=num_per_phrasing, seed=seed))
      registry.add_task(name, key, functools.partial(
          sources.text_task_kwargs, sources.RecordsSource(fn, SPLITS),
          vocabulary))
      names.append(name)
  return names


def _split_records(fmt: str, subset: str, split: str, *, num_per_op: int,
                   num_per_phrasing: int, seed: int) -> tuple[dict, ...]:
  return records(fmt, subset, split, num_per_op, num_per_phrasing, seed)


def describe(op_name: Optional[str] = None) -> str:
  """Human-readable list of operations and phrasings (CLI, notebooks)."""
  lines = []
  for op in OPERATIONS:
    if op_name and op.name != op_name:
      continue
    tag = "held-out op" if op.heldout else "seen op"
    lines.append(f"{op.name} ({op.kind}, {tag})")
    for p in op.seen_phrasings:
      lines.append(f"    seen:     {p}")
    for p in op.heldout_phrasings:
      lines.append(f"    held out: {p}")
  return "\n".join(lines)
