"""Every gin model/PEFT/hypernetwork file parses, and every valid combination builds at
the tiny size through gin, initialises and computes a loss; invalid combinations fail
with a clear error; size-0 macros switch methods off."""
import pathlib

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

from hyper_tasks import gin_utils
from hyper_tasks.models import builders
from hyper_tasks.models.config import preset
from hyper_tasks.models.peft_spec import PeftSpec

GIN = pathlib.Path(__file__).resolve().parents[2] / "gin"
PEFTS = ["adapters", "prefixes", "lora", "prompt", "ia3", "hint_default", "none"]
HYPERNETS = ["hint", "hypter", "hypertune", "t2l", "none"]
SIZES = ["tiny", "small", "base", "large", "xl", "xxl"]
# Which gin/peft files each hypernetwork can generate ("none" learns any of them).
VALID = {"hint": set(PEFTS) - {"none"}, "hypter": {"adapters"},
         "hypertune": {"prefixes", "lora"}, "t2l": {"lora"}, "none": set(PEFTS)}


@gin.configurable("test_builders_gin_take")
def take(model=None):
  """Stands in for the trainer: receives ``%MODEL`` as ``train.model`` would."""
  return model


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def parse(size="tiny", peft="none", hypernet="none", bindings=()):
  # gin_utils.parse resolves the size files' `include 'models/t5.gin'` in gin/.
  gin_utils.parse(
      [str(GIN / "models" / f"{size}.gin"), str(GIN / "peft" / f"{peft}.gin"),
       str(GIN / "hypernets" / f"{hypernet}.gin")],
      ["test_builders_gin_take.model = %MODEL"] + list(bindings), finalize=False)


def test_every_gin_file_is_covered():
  on_disk = {str(p.relative_to(GIN)) for d in ("models", "peft", "hypernets")
             for p in (GIN / d).glob("*.gin")}
  # models/t5.gin is parsed through every size file, which includes it.
  tested = ({f"models/{s}.gin" for s in SIZES} | {"models/t5.gin"}
            | {f"peft/{p}.gin" for p in PEFTS}
            | {f"hypernets/{h}.gin" for h in HYPERNETS})
  assert on_disk == tested


def _batch(cfg, with_instruction):
  rng = np.random.RandomState(0)
  tok = lambda *s: rng.randint(2, cfg.vocab_size, size=s).astype(np.int32)
  tgt = tok(2, 3)
  batch = {"encoder_input_tokens": tok(2, 5), "decoder_target_tokens": tgt,
           "decoder_input_tokens": np.concatenate(
               [np.zeros((2, 1), np.int32), tgt[:, :-1]], 1)}
  if with_instruction:
    batch["hyper_encoder_input_tokens"] = tok(2, 4)
  return batch


@pytest.mark.parametrize("hypernet", HYPERNETS)
def test_every_valid_combination_builds_and_runs_through_gin(hypernet):
  for peft in PEFTS:
    gin.clear_config()
    parse("tiny", peft, hypernet)
    if peft not in VALID[hypernet]:
      with pytest.raises(ValueError, match=f"hypernet '{hypernet}'"):
        take()
      continue
    model = take()
    cfg = model.config
    assert cfg == preset("t5_1_1", "tiny")
    spec = model.module.peft_spec
    assert spec.is_empty == (peft == "none")
    assert model.uses_instruction == (hypernet != "none")
    batch = _batch(cfg, model.uses_instruction)
    shapes = {k: v.shape for k, v in batch.items()}
    # Eagerly (one small run per combination is cheaper than compiling each). The
    # first valid combination per hypernetwork initialises for real; the others
    # trace init abstractly and fill the shapes with small random values, which
    # skips re-running every initialiser eagerly (the slow part on CPU).
    init = lambda: model.get_initial_variables(jax.random.key(0, impl="rbg"), shapes)
    if peft == min(VALID[hypernet], key=PEFTS.index):
      params = nn.unbox(init())["params"]
    else:
      rng = np.random.RandomState(0)
      params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype),
                            nn.unbox(jax.eval_shape(init))["params"])
    groups = set(params)
    assert ("hypernet" in groups) == (hypernet != "none")
    assert ("peft" in groups) == (hypernet == "none" and peft != "none")
    loss, metrics = model.loss_fn(params, batch)
    assert np.isfinite(float(loss)) and float(loss) > 0, (hypernet, peft)


def test_hint_gin_turns_on_instruction_fusion_and_hint_options():
  parse("tiny", "hint_default", "hint", ["HYPER_QUERIES = 'factored'"])
  model = take()
  assert model.module.instruction_fusion and not model.module.no_instruction
  net = model.module.hypernet
  assert (net.NAME, net.query_method, net.num_heads) == ("hint", "factored", 8)
  spec = model.module.peft_spec
  assert (spec.adapter.size, spec.prefix.num_tokens) == (64, 30)
  # HINT's adapters: generated down/up biases and GELU; macros switch them back.
  assert (spec.adapter.bias, spec.adapter.activation) == (True, "gelu")
  gin.clear_config()
  parse("tiny", "hint_default", "hint", ["ADAPTER_BIAS = False",
                                         "ADAPTER_ACTIVATION = 'relu'"])
  adapter = take().module.peft_spec.adapter
  assert (adapter.bias, adapter.activation) == (False, "relu")
  gin.clear_config()
  parse("tiny", "adapters", "hypter")  # plain adapters keep their defaults
  adapter = take().module.peft_spec.adapter
  assert (adapter.bias, adapter.activation) == (False, "relu")


def test_size_zero_macros_switch_methods_off():
  parse("tiny", "hint_default", "hint", ["NUM_PREFIX_TOKENS = 0",
                                         "ADAPTER_SIZE = 8"])
  spec = take().module.peft_spec
  assert spec.prefix is None and spec.adapter.size == 8
  gin.clear_config()
  parse("tiny", "hint_default", "hint", ["ADAPTER_SIZE = 0"])
  spec = take().module.peft_spec
  assert spec.adapter is None and spec.prefix.num_tokens == 30
  gin.clear_config()
  parse("tiny", "hint_default", "hint", ["ADAPTER_SIZE = 0", "NUM_PREFIX_TOKENS = 0"])
  with pytest.raises(ValueError, match="generates no parameters"):
    take()
  # Without a hypernetwork, everything off is plain T5.
  gin.clear_config()
  parse("tiny", "hint_default", "none", ["ADAPTER_SIZE = 0", "NUM_PREFIX_TOKENS = 0"])
  model = take()
  assert model.module.peft_spec == PeftSpec() and not model.uses_instruction


def test_no_instruction_macro_reaches_the_model():
  parse("tiny", "adapters", "hypter", ["NO_INSTRUCTION = True", "ADAPTER_SIZE = 8"])
  model = take()
  assert model.module.no_instruction and model.module.peft_spec.adapter.size == 8


@pytest.mark.parametrize("size", SIZES)
def test_size_files_only_set_the_size(size):
  parse(size, "none", "none")
  assert gin.query_parameter("%MODEL_SIZE") == size
  assert take().config == preset("t5_1_1", size)
  gin.clear_config()
  parse(size, "none", "none", ["MODEL_VARIANT = 't5'",
                               "models.make_model.dtype = 'bfloat16'"])
  cfg = take().config
  assert cfg == preset("t5", size, dtype=cfg.dtype) and cfg.dtype.__name__ == "bfloat16"


def test_make_peft_spec_and_make_model_reject_bad_values():
  with pytest.raises(ValueError, match="adapter_size must be an integer >= 0"):
    builders.make_peft_spec(adapter_size=-1)
  with pytest.raises(ValueError, match="lora_targets must be a sequence"):
    builders.make_peft_spec(lora_rank=2, lora_targets="q")
  with pytest.raises(ValueError, match="LoraSpec targets"):
    builders.make_peft_spec(lora_rank=2, lora_targets=("x",))
  spec = builders.make_peft_spec(adapter_size=4)
  with pytest.raises(ValueError, match="needs static_peft=True"):
    builders.make_model(hypernet="none", peft_spec=spec)
  with pytest.raises(ValueError, match="cannot be combined with hypernet='hint'"):
    builders.make_model(hypernet="hint", peft_spec=spec, static_peft=True)
  with pytest.raises(ValueError, match="instruction_fusion needs a hypernetwork"):
    builders.make_model(hypernet="none", instruction_fusion=True)
  with pytest.raises(ValueError, match="Unknown dtype 'fp8'"):
    builders.make_model(hypernet="none", dtype="fp8")
