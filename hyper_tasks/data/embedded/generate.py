"""Regenerates the embedded data: SNI-format tasks and the pretraining corpus.

Run from the repository root: ``python -m hyper_tasks.data.embedded.generate``.
Deterministic (fixed seeds), so the committed files are exactly what this writes.
Everything here is invented for the project; nothing is copied from a dataset.

* ``sni/tasks/*.json``: 12 small tasks in the Super-NaturalInstructions schema
  (8 listed in ``sni/splits/default/train_tasks.txt``, 4 in ``test_tasks.txt``).
  They deliberately mix schema versions, as real SNI files do: ``Definition`` as a
  string or a list, instance ``id`` present or absent, language fields present or
  absent, negative examples present or absent.
* ``pretrain/corpus.txt``: short English documents, one per line, about counting,
  lists, letters and everyday facts, for hypernetwork pretraining of the demo
  model (cut like C4 by c4.py). They describe only the seen toy operations.
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

NOUNS = [("cat", "cats"), ("box", "boxes"), ("city", "cities"),
         ("child", "children"), ("dog", "dogs"), ("bus", "buses"),
         ("baby", "babies"), ("mouse", "mice"), ("tooth", "teeth"),
         ("leaf", "leaves"), ("book", "books"), ("glass", "glasses"),
         ("party", "parties"), ("man", "men"), ("foot", "feet"),
         ("wish", "wishes"), ("toy", "toys"), ("knife", "knives"),
         ("house", "houses"), ("story", "stories"), ("fox", "foxes"),
         ("goose", "geese"), ("car", "cars"), ("church", "churches"),
         ("day", "days"), ("woman", "women"), ("wolf", "wolves"),
         ("lady", "ladies"), ("tree", "trees"), ("dish", "dishes")]
ANTONYMS = [("hot", "cold"), ("big", "small"), ("fast", "slow"),
            ("happy", "sad"), ("up", "down"), ("light", "dark"),
            ("early", "late"), ("open", "closed"), ("full", "empty"),
            ("hard", "soft"), ("old", "young"), ("rich", "poor"),
            ("wet", "dry"), ("loud", "quiet"), ("near", "far"),
            ("strong", "weak"), ("clean", "dirty"), ("tall", "short"),
            ("thick", "thin"), ("first", "last"), ("inside", "outside"),
            ("true", "false"), ("win", "lose"), ("buy", "sell"),
            ("push", "pull"), ("day", "night"), ("heavy", "light"),
            ("begin", "end")]
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"),
            ("Spain", "Madrid"), ("Germany", "Berlin"), ("Egypt", "Cairo"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Canada", "Ottawa"),
            ("Norway", "Oslo"), ("Greece", "Athens"), ("Chile", "Santiago"),
            ("Cuba", "Havana"), ("Ireland", "Dublin"), ("Poland", "Warsaw"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"),
            ("Thailand", "Bangkok"), ("Mexico", "Mexico City"),
            ("India", "New Delhi"), ("China", "Beijing"), ("Russia", "Moscow"),
            ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
            ("Hungary", "Budapest"), ("Argentina", "Buenos Aires")]
SENTIMENT = [
    ("I loved this film, it was wonderful.", "positive"),
    ("The food was cold and tasted awful.", "negative"),
    ("What a lovely sunny morning!", "positive"),
    ("The train was late again and I missed my meeting.", "negative"),
    ("This book is a delight from start to finish.", "positive"),
    ("My new phone broke after one day.", "negative"),
    ("The staff were kind and very helpful.", "positive"),
    ("I waited an hour and nobody answered.", "negative"),
    ("Our holiday was perfect in every way.", "positive"),
    ("The music was far too loud and boring.", "negative"),
    ("She smiled and thanked us warmly.", "positive"),
    ("The room was dirty and smelled bad.", "negative"),
    ("Great value, I would buy it again.", "positive"),
    ("The game was a total waste of time.", "negative"),
    ("The garden looks beautiful this spring.", "positive"),
    ("I feel terrible about how it ended.", "negative"),
    ("Everyone had a fantastic time at the party.", "positive"),
    ("The instructions were confusing and wrong.", "negative"),
    ("This is the best soup I have ever had.", "positive"),
    ("The shoes hurt my feet all day.", "negative"),
    ("A charming little cafe with friendly people.", "positive"),
    ("The software keeps crashing and losing my work.", "negative")]
SOUNDS = [("dog", "woof"), ("cat", "meow"), ("cow", "moo"), ("duck", "quack"),
          ("sheep", "baa"), ("pig", "oink"), ("owl", "hoot"),
          ("lion", "roar"), ("snake", "hiss"), ("horse", "neigh"),
          ("bee", "buzz"), ("mouse", "squeak"), ("frog", "croak"),
          ("rooster", "cock-a-doodle-doo"), ("crow", "caw"),
          ("donkey", "hee-haw"), ("goat", "bleat"), ("wolf", "howl"),
          ("chick", "cheep"), ("turkey", "gobble")]
VERBS = [("walk", "walked"), ("go", "went"), ("eat", "ate"),
         ("play", "played"), ("see", "saw"), ("jump", "jumped"),
         ("write", "wrote"), ("talk", "talked"), ("run", "ran"),
         ("sing", "sang"), ("cook", "cooked"), ("take", "took"),
         ("open", "opened"), ("buy", "bought"), ("think", "thought"),
         ("clean", "cleaned"), ("swim", "swam"), ("drink", "drank"),
         ("watch", "watched"), ("give", "gave"), ("help", "helped"),
         ("find", "found"), ("laugh", "laughed"), ("make", "made")]
COLORS = [("sky", "blue"), ("grass", "green"), ("banana", "yellow"),
          ("snow", "white"), ("coal", "black"), ("tomato", "red"),
          ("orange", "orange"), ("lemon", "yellow"), ("cloud", "white"),
          ("leaf", "green"), ("strawberry", "red"), ("crow", "black"),
          ("milk", "white"), ("sea", "blue"), ("carrot", "orange"),
          ("cherry", "red"), ("frog", "green"), ("chocolate", "brown"),
          ("pumpkin", "orange"), ("night", "black")]
WORDS = ["apple", "river", "stone", "garden", "window", "pencil", "bread",
         "mountain", "table", "rain", "orange", "music", "candle", "paper",
         "bottle", "island", "forest", "bridge", "jacket", "planet",
         "tiger", "rocket", "guitar", "kitchen", "ocean", "lemon", "cloud",
         "school", "basket", "silver", "dragon", "mirror", "puzzle",
         "button", "castle", "pillow", "winter", "summer", "sugar", "honey"]


def _english():
  return {"Input_language": ["English"], "Output_language": ["English"],
          "Instruction_language": ["English"]}


def _task(definition, categories, pos, neg, instances, *, ids=None,
          languages=True, definition_as_list=False, name=""):
  task = {"Contributors": ["hyper-tasks authors"],
          "Source": ["invented for hyper-tasks"],
          "Categories": categories}
  if languages:
    task.update(_english())
  task["Definition"] = [definition] if definition_as_list else definition
  task["Positive Examples"] = [
      {"input": i, "output": o, "explanation": e} for i, o, e in pos]
  if neg is not None:
    task["Negative Examples"] = [
        {"input": i, "output": o, "explanation": e} for i, o, e in neg]
  rows = []
  for k, (i, outs) in enumerate(instances):
    row = {"input": i, "output": outs}
    if ids:
      row = {"id": f"{name}-{ids}{k:03d}", **row}
    rows.append(row)
  task["Instances"] = rows
  return task


def make_tasks():
  rng = random.Random(1234)
  tasks = {}
  vowel_words = rng.sample(WORDS, 30)
  tasks["task001_count_vowels"] = _task(
      "Count the vowels (a, e, i, o, u) in the given word and answer with a "
      "number", ["Arithmetic", "Word Analysis"],
      [("banana", "3", "b-a-n-a-n-a has three vowels: a, a, a."),
       ("sky", "0", "There is no a, e, i, o or u in sky.")],
      [("tree", "1", "tree has two vowels: e and e.")],
      [(w, [str(sum(c in "aeiou" for c in w))]) for w in vowel_words],
      definition_as_list=True)
  tasks["task002_plural_nouns"] = _task(
      "Write the plural form of the given English noun.",
      ["Word Semantics"],
      [("apple", "apples", "Most nouns add -s."),
       ("bush", "bushes", "Nouns ending in -sh add -es.")],
      [("sheep", "sheeps", "The plural of sheep is sheep.")],
      [(s, [p]) for s, p in NOUNS], ids="p", name="task002_plural_nouns")
  tasks["task003_antonyms"] = _task(
      "Give a word that means the opposite of the given word",
      ["Word Semantics", "Antonym Generation"],
      [("good", "bad", "Bad is the opposite of good."),
       ("cheap", "expensive", "Expensive is the opposite of cheap.")],
      None, [(a, [b]) for a, b in ANTONYMS], languages=False)
  add_rows = []
  for _ in range(30):
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    add_rows.append((f"{a} + {b}", [str(a + b)]))
  tasks["task004_add_two_numbers"] = _task(
      "Add the two numbers and write the result.", ["Arithmetic"],
      [("12 + 7", "19", "12 plus 7 is 19."),
       ("30 + 5", "35", "30 plus 5 is 35.")],
      [("4 + 4", "44", "The digits were joined instead of added.")],
      add_rows, ids="a", name="task004_add_two_numbers")
  tasks["task005_capital_city"] = _task(
      "You are given the name of a country. Answer with its capital city.",
      ["Fact Based", "Answer Generation"],
      [("Brazil", "Brasilia", "Brasilia is the capital of Brazil."),
       ("Australia", "Canberra", "Canberra is the capital of Australia.")],
      [("Turkey", "Istanbul", "The capital of Turkey is Ankara.")],
      [(c, [k]) for c, k in CAPITALS], languages=False)
  tasks["task006_sentence_sentiment"] = _task(
      "Classify the sentiment of the sentence. Answer \"positive\" or "
      "\"negative\".", ["Sentiment Analysis"],
      [("The cake was delicious.", "positive", "Delicious is a happy word."),
       ("I hate waiting in the rain.", "negative", "Hate is a negative word.")],
      [("What a great day!", "negative", "The sentence is positive.")],
      [(s, [l]) for s, l in SENTIMENT], ids="s",
      name="task006_sentence_sentiment", definition_as_list=True)
  tasks["task007_animal_sound"] = _task(
      "Write the sound that the given animal makes.",
      ["Fact Based", "Commonsense"],
      [("cat", "meow", "Cats say meow."),
       ("cow", "moo", "Cows say moo.")],
      [("dog", "quack", "Ducks quack; dogs bark or say woof.")],
      [(a, [s] + (["bark"] if a == "dog" else [])) for a, s in SOUNDS],
      languages=False)
  letters = "abcdefghijklmnopqrstuvwxy"
  tasks["task008_next_letter"] = _task(
      "Write the letter that comes right after the given letter in the "
      "English alphabet.", ["Answer Generation"],
      [("a", "b", "b follows a."), ("m", "n", "n follows m.")],
      [("c", "b", "b comes before c, not after it.")],
      [(c, [letters[i + 1] if i + 1 < len(letters) else "z"])
       for i, c in enumerate(letters)], ids="l",
      name="task008_next_letter")
  pair_rows = []
  for _ in range(30):
    a, b = rng.sample(WORDS, 2)
    if len(a) == len(b):
      continue
    pair_rows.append((f"{a}, {b}", [a if len(a) > len(b) else b]))
  tasks["task009_longer_word"] = _task(
      "You are given two words separated by a comma. Answer with the word "
      "that has more letters.", ["Word Analysis", "Classification"],
      [("cat, horse", "horse", "horse has five letters, cat three."),
       ("elephant, ant", "elephant", "elephant is longer than ant.")],
      [("sun, planet", "sun", "planet has more letters than sun.")],
      pair_rows, languages=False)
  sub_rows = []
  for _ in range(30):
    a = rng.randint(10, 60)
    b = rng.randint(0, a)
    sub_rows.append((f"{a} - {b}", [str(a - b)]))
  tasks["task010_subtract_numbers"] = _task(
      "Subtract the second number from the first and write the result.",
      ["Arithmetic"],
      [("20 - 5", "15", "20 minus 5 is 15."),
       ("9 - 9", "0", "9 minus 9 is 0.")],
      [("8 - 3", "11", "The numbers were added, not subtracted.")],
      sub_rows, ids="m", name="task010_subtract_numbers")
  tasks["task011_past_tense"] = _task(
      "Write the simple past tense of the given English verb.",
      ["Word Semantics", "Grammar"],
      [("jump", "jumped", "Regular verbs add -ed."),
       ("sleep", "slept", "Sleep is irregular: slept.")],
      None, [(v, [p]) for v, p in VERBS], definition_as_list=True)
  tasks["task012_usual_color"] = _task(
      "What color is the given thing usually? Answer with one color word.",
      ["Fact Based", "Commonsense"],
      [("sky", "blue", "A clear sky is blue."),
       ("snow", "white", "Snow is white.")],
      [("grass", "red", "Grass is green.")],
      [(t, [c]) for t, c in COLORS], languages=False)
  return tasks


def write_sni(root):
  tasks = make_tasks()
  os.makedirs(os.path.join(root, "tasks"), exist_ok=True)
  os.makedirs(os.path.join(root, "splits", "default"), exist_ok=True)
  for name, task in tasks.items():
    with open(os.path.join(root, "tasks", f"{name}.json"), "w") as f:
      json.dump(task, f, indent=1, ensure_ascii=False)
      f.write("\n")
  names = sorted(tasks)
  test = {"task009_longer_word", "task010_subtract_numbers",
          "task011_past_tense", "task012_usual_color"}
  with open(os.path.join(root, "splits", "default", "train_tasks.txt"),
            "w") as f:
    f.write("".join(n + "\n" for n in names if n not in test))
  with open(os.path.join(root, "splits", "default", "test_tasks.txt"),
            "w") as f:
    f.write("".join(n + "\n" for n in names if n in test))


NAMES = ["Ada", "Ben", "Cleo", "Dev", "Ema", "Finn", "Gus", "Hana", "Ivo",
         "Jun", "Kai", "Lena", "Milo", "Nora", "Omar", "Pia", "Rosa", "Sam",
         "Tess", "Uma", "Vik", "Wren", "Yara", "Zed"]
THINGS = ["apples", "pencils", "stickers", "marbles", "books", "shells",
          "coins", "stamps", "buttons", "cards", "cookies", "balloons"]
PLACES = ["the market", "the library", "the park", "school", "the beach",
          "the museum", "the garden", "the station", "the bakery"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six",
                "seven", "eight", "nine", "ten", "eleven", "twelve"]


def _story(rng):
  a, b = rng.sample(NAMES, 2)
  thing = rng.choice(THINGS)
  n = rng.randint(3, 12)
  m = rng.randint(1, n - 1)
  place = rng.choice(PLACES)
  return (f"{a} went to {place} with {n} {thing}. On the way {a} met {b} and "
          f"gave {b} {m} of them. Now {a} has {n - m} {thing} left and {b} "
          f"has {m}. Together they still have {n} {thing}, because giving "
          f"things away does not change how many there are in total. "
          f"Later they counted again to be sure: {NUMBER_WORDS[n - m]} for "
          f"{a} and {NUMBER_WORDS[m]} for {b}.")


def _list_doc(rng):
  digits = [rng.randrange(10) for _ in range(rng.randint(4, 7))]
  text = " ".join(map(str, digits))
  parts = [f"Here is a list of numbers: {text}."]
  facts = [
      f"The list has {len(digits)} numbers.",
      f"The first number is {digits[0]} and the last number is {digits[-1]}.",
      f"Written in reverse order the list is "
      f"{' '.join(map(str, digits[::-1]))}.",
      f"Sorted from smallest to largest it becomes "
      f"{' '.join(map(str, sorted(digits)))}.",
      f"The largest number is {max(digits)} and the smallest is {min(digits)}.",
      f"The sum is {sum(digits)}, so the sum modulo 10 is {sum(digits) % 10}.",
  ]
  rng.shuffle(facts)
  parts += facts[:rng.randint(3, len(facts))]
  parts.append("Lists like this are a good way to practise careful reading.")
  return " ".join(parts)


def _word_doc(rng):
  word = rng.choice(WORDS)
  parts = [f"Consider the word \"{word}\"."]
  facts = [
      f"It has {len(word)} letters.",
      f"It starts with the letter {word[0]} and ends with the letter "
      f"{word[-1]}.",
      f"Spelled backwards it reads \"{word[::-1]}\".",
      f"Written twice it becomes \"{word + word}\".",
      f"It has {sum(c in 'aeiou' for c in word)} vowels.",
  ]
  rng.shuffle(facts)
  parts += facts[:rng.randint(2, len(facts))]
  parts.append(f"People use the word {word} in many everyday sentences.")
  return " ".join(parts)


def _fact_doc(rng):
  facts = ([f"The capital of {c} is {k}." for c, k in CAPITALS]
           + [f"A {a} says {s}." for a, s in SOUNDS]
           + [f"The {t} is usually {c}." for t, c in COLORS]
           + [f"The opposite of {a} is {b}." for a, b in ANTONYMS]
           + [f"One {s}, two {p}." for s, p in NOUNS]
           + [f"Today I {p}; yesterday I {q}." for p, q in VERBS])
  chosen = rng.sample(facts, rng.randint(5, 9))
  return ("Here are some facts worth remembering. " + " ".join(chosen)
          + " Learning a few facts every day adds up over a year.")


def _instruction_doc(rng):
  thing = rng.choice(["a recipe", "a game", "a map", "a form", "a puzzle"])
  steps = rng.sample([
      "Read every instruction before you begin.",
      "Look at the example and check what the answer should look like.",
      "Do exactly what the task asks and nothing more.",
      "If the task asks for a number, answer with a number.",
      "If the task asks for one word, do not write a sentence.",
      "Check your answer against the example before you hand it in.",
      "Short answers are easier to check than long ones.",
      "When an instruction is unclear, look at the examples again.",
  ], 4)
  return (f"How to follow the instructions of {thing}. " + " ".join(steps)
          + " Following instructions well is a skill that improves with "
          "practice.")


def write_corpus(path, num_docs=900):
  rng = random.Random(42)
  makers = [_story, _list_doc, _word_doc, _fact_doc, _instruction_doc]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for i in range(num_docs):
      f.write(makers[i % len(makers)](rng) + "\n")


if __name__ == "__main__":
  write_sni(os.path.join(HERE, "sni"))
  write_corpus(os.path.join(HERE, "pretrain", "corpus.txt"))
