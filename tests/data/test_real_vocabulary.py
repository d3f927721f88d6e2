"""The real recipe's vocabulary: bound once (``VOCABULARY``), found in the checkpoint
directory, and checked against the model.

``experiments/hint_finetune_sni.gin`` without ``tiny.gin`` used to tokenize SNI with
the byte vocabulary (ids < 260) for a 32k-embedding T5, silently.
"""
import json
import shutil

import gin
import numpy as np
import pytest
import seqio

from hyper_tasks import gin_utils
from hyper_tasks.data import pipeline
from hyper_tasks.data import register
from hyper_tasks.data import vocab


pytestmark = pytest.mark.usefixtures("clean_gin", "restore_embedded_registry")


def _macro(name):
  return gin.query_parameter(f"{name}/macro.value")


@pytest.fixture
def hf_dir(shared_data, tmp_path):
  """An HF-style checkpoint directory that carries the real ``spiece.model``."""
  d = tmp_path / "t5-ckpt"
  d.mkdir()
  shutil.copy(shared_data / "t5_vocab" / "spiece.model", d / "spiece.model")
  return d


def test_real_sni_recipe_tokenizes_with_t5_sentencepiece(shared_data, hf_dir,
                                                         tmp_path, monkeypatch):
  monkeypatch.delenv(vocab.VOCABULARY_ENV, raising=False)
  gin_utils.parse(["experiments/hint_finetune_sni.gin"],
                  [f"MODEL_DIR = '{tmp_path / 'run'}'",
                   f"SNI_DIR = '{shared_data / 'sni'}'",
                   f"INITIAL_CHECKPOINT_PATH = '{hf_dir}'",
                   "SNI_MAX_INSTANCES_PER_TASK = 4",
                   "register_all.sni_allow_missing_tasks = True"])
  register.register_all()
  name = _macro("MIXTURE_OR_TASK_NAME")
  lengths = dict(_macro("TASK_FEATURE_LENGTHS"))
  v = pipeline.task_vocabulary(name)
  assert isinstance(v, seqio.SentencePieceVocabulary)
  assert v.vocab_size == 32100  # 32,000 pieces + 100 sentinels
  assert v.sentencepiece_model_file == str(hf_dir / "spiece.model")

  transformers = pytest.importorskip("transformers")
  hf = transformers.T5TokenizerFast(
      tokenizer_file=str(shared_data / "t5_vocab" / "t5-small.tokenizer.json"))
  examples = pipeline.load_examples(name, "train", max_examples=4)
  batch = next(iter(pipeline.get_dataset(name, "train", lengths, batch_size=4,
                                         shuffle=False, num_epochs=1)))
  enc = np.asarray(batch["encoder_input_tokens"])
  hyper = np.asarray(batch["hyper_encoder_input_tokens"])
  assert enc.max() >= 260  # not the byte vocabulary
  for i, ex in enumerate(examples):
    for text, row, length in ((ex["inputs"], enc[i], lengths["inputs"]),
                              (ex["hyper_inputs"], hyper[i],
                               lengths["hyper_inputs"])):
      want = hf(text, add_special_tokens=True)["input_ids"]
      if len(want) > length:  # truncated, EOS kept
        want = want[:length - 1] + [1]
      assert row[:len(want)].tolist() == want, text[:80]


def test_auto_vocabulary_search_order(shared_data, tmp_path, monkeypatch):
  spiece = shared_data / "t5_vocab" / "spiece.model"
  monkeypatch.delenv(vocab.VOCABULARY_ENV, raising=False)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(vocab.VocabularyError, match=str(empty)):
    vocab.resolve("auto", [None, str(empty)])
  monkeypatch.setenv(vocab.VOCABULARY_ENV, str(spiece))
  assert vocab.resolve("auto", [str(empty)]).sentencepiece_model_file == str(spiece)
  # A MODEL_DIR that recorded the byte vocabulary wins over the environment.
  run = tmp_path / "run"
  run.mkdir()
  vocab.save_to_model_dir(vocab.byte_vocabulary(), str(run))
  assert vocab.resolve("auto", [str(run), str(empty)]) is vocab.byte_vocabulary()
  # HF directory with a tokenizer.json that is not a SentencePiece export.
  hf_json = tmp_path / "hf_json"
  hf_json.mkdir()
  (hf_json / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {}}}')
  with pytest.raises(vocab.VocabularyError, match="tokenizer.json.*Unigram"):
    vocab.resolve("auto", [str(hf_json)])


def test_hf_directory_with_only_tokenizer_json(shared_data, c4_texts, tmp_path,
                                               monkeypatch):
  """An HF T5 directory without spiece.model: its tokenizer.json becomes the same
  SentencePiece model (ids equal the real spiece.model's on real text)."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  hf = tmp_path / "hf"
  hf.mkdir()
  shutil.copy(shared_data / "t5_vocab" / "t5-small.tokenizer.json",
              hf / "tokenizer.json")
  converted = vocab.resolve("auto", [str(hf)])
  real = vocab.get_vocabulary(str(shared_data / "t5_vocab" / "spiece.model"))
  assert converted.vocab_size == real.vocab_size == 32100
  texts = c4_texts + ["  extra   spaces ", "ﬁ ligature ½ “quotes” é", ""]
  assert [list(converted.encode(t)) for t in texts] == [
      list(real.encode(t)) for t in texts]
  assert converted.decode(real.encode(texts[0])) == real.decode(
      real.encode(texts[0]))
  # Cached: the second resolution reuses the converted file.
  assert vocab.resolve("auto", [str(hf)]) is converted


@pytest.fixture(scope="module")
def c4_texts(shared_data):
  path = shared_data / "c4" / "c4-en.sample-1000docs.jsonl"
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["text"] for _, line in zip(range(100), f)]


def test_model_dir_records_and_copies_the_vocabulary(shared_data, tmp_path):
  spiece = shared_data / "t5_vocab" / "spiece.model"
  v = vocab.get_vocabulary(str(spiece))
  run = tmp_path / "run"
  run.mkdir()
  vocab.save_to_model_dir(v, str(run))
  info = json.loads((run / vocab.RECORD).read_text())
  assert info["kind"] == "sentencepiece" and info["extra_ids"] == 100
  assert (run / "spiece.model").read_bytes() == spiece.read_bytes()
  # The next stage (restoring from this MODEL_DIR) finds it.
  assert vocab.resolve("auto", [None, str(run)]).vocab_size == 32100
  vocab.save_to_model_dir(v, str(run))  # same vocabulary again: fine
  with pytest.raises(vocab.VocabularyError, match="trained with vocabulary"):
    vocab.save_to_model_dir(vocab.byte_vocabulary(), str(run))


def test_vocabulary_fit_errors_name_both(shared_data):
  byte = vocab.byte_vocabulary()
  with pytest.raises(vocab.VocabularyError, match=r"byte\+0 has 259 ids.*32128"):
    vocab.check_fits(byte, 32128, where="train")
  sp = vocab.get_vocabulary(str(shared_data / "t5_vocab" / "spiece.model"))
  with pytest.raises(vocab.VocabularyError, match=r"32100 ids.*512 rows"):
    vocab.check_fits(sp, 512)
  vocab.check_fits(sp, 32128)
  vocab.check_fits(byte, 320)


def test_missing_vocabulary_file_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    vocab.resolve(str(tmp_path / "nope.model"))
