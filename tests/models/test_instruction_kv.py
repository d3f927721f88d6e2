"""Instruction fusion through per-task cached cross-attention keys/values.

``Adaptation.cross_kv`` (the fused instruction projected once per task by every
decoder layer's cross-attention, with the adaptation's k/v LoRA and IA3) must give the
same logits as the reference path that concatenates the instruction states in front of
the encoder output for every instance -- per task and per example, with LoRA on k/v at
the cross site and IA3 -- and cached greedy/beam decoding must match recomputation.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper_tasks.models import builders
from hyper_tasks.models.adaptation import Adaptation
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.peft.static import set_path
from hyper_tasks.models.transformer import Transformer

CFG = builders.make_t5_config("t5_1_1", "tiny", vocab_size=64, dropout_rate=0.0)
B, LI, LT, LH = 3, 6, 5, 4
# LoRA on k/v at the cross site (what the cached keys/values must include), IA3 on
# k/v everywhere, plus prefixes and adapters so their ordering with the fused keys
# is exercised too.
SPEC = builders.make_peft_spec(
    adapter_size=4, adapter_sites=("decoder_mlp", "cross"), num_prefix_tokens=2,
    lora_rank=2, lora_targets=("q", "k", "v"), lora_sites=("cross",), ia3=True)


def fast_jit(fn):
  """``jax.jit`` with cheap XLA options, one executable per argument structure."""
  jitted, compiled = jax.jit(fn), {}

  def call(*args):
    leaves, tree = jax.tree.flatten(args)
    key = (tree, tuple((np.shape(x), str(getattr(x, "dtype", type(x))))
                       for x in leaves))
    if key not in compiled:
      compiled[key] = jitted.lower(*args).compile(compiler_options={
          "xla_backend_optimization_level": 0,
          "xla_llvm_disable_expensive_passes": True})
    return compiled[key](*args)
  return call


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, CFG.vocab_size, size=(B, LI)).astype(np.int32)
  enc[1, 4:] = 0
  tgt = rng.randint(2, CFG.vocab_size, size=(B, LT)).astype(np.int32)
  dec = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": tgt}


def _adaptation(batch=None, seed=0) -> Adaptation:
  """Random slots (LoRA/IA3 clearly non-zero) and a fused instruction whose mask
  hides its last token(s), without cached keys/values."""
  rng = np.random.RandomState(seed)
  lead = (batch,) if batch else ()
  tree = {}
  for s in SPEC.slots(CFG):
    set_path(tree, s.path, jnp.asarray(rng.normal(0.0, 0.5, lead + s.shape),
                                       jnp.float32))
  instr = jnp.asarray(rng.normal(size=lead + (LH, CFG.d_model)), jnp.float32)
  mask = np.ones(lead + (LH,), bool)
  mask[..., -1] = False
  if batch:
    mask[0, 1:] = False  # per-example masks differ
  return Adaptation(tree, instr, jnp.asarray(mask), batched=batch is not None)


@pytest.fixture(scope="module")
def setup():
  module = Transformer(CFG, SPEC, instruction_fusion=True)
  model = EncoderDecoderModel(module)
  params = fast_jit(lambda k: nn.unbox(Transformer(CFG).init(
      k, jnp.ones((B, LI), jnp.int32), jnp.ones((B, LT), jnp.int32)))["params"])(
          jax.random.key(0, impl="rbg"))
  logits = fast_jit(lambda p, b, a: module.apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"], None, a))
  cache_kv = fast_jit(model.cache_instruction_kv)
  return module, model, params, logits, cache_kv


@pytest.mark.parametrize("batch", [None, B], ids=["per_task", "per_example"])
def test_cached_kv_equals_concatenated_instruction(setup, batch):
  module, _, params, logits, cache_kv = setup
  plain = _adaptation(batch, seed=1)
  cached = cache_kv(params, plain)
  assert plain.cross_kv is None and cached.batched == plain.batched
  lead = (B,) if batch else ()
  assert sorted(cached.cross_kv) == ["layers_0", "layers_1"]
  for kv in cached.cross_kv.values():
    assert kv["key"].shape == kv["value"].shape == lead + (LH, CFG.inner_dim)
  got, want = np.asarray(logits(params, _batch(), cached)), np.asarray(
      logits(params, _batch(), plain))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # The instance path no longer carries the instruction in the encoder output.
  enc_len = lambda a: jax.eval_shape(lambda: module.apply(
      {"params": params}, jnp.ones((B, LI), jnp.int32), a,
      method=Transformer.encode))[0].shape[1]
  assert enc_len(cached) == LI and enc_len(plain) == LH + LI
  # The instruction (and its mask) really matter.
  other = plain.replace(instruction=plain.instruction + 1.0)
  assert np.abs(np.asarray(logits(params, _batch(), cache_kv(params, other)))
                - got).max() > 1e-3


def test_cached_kv_applies_the_cross_sites_lora_and_ia3(setup):
  """Oracle: ``(h W + h A B s) * (1 + ia3)`` with layer i's own kernels."""
  module, _, params, _, cache_kv = setup
  adaptation = _adaptation(seed=2)
  cached = cache_kv(params, adaptation)
  h = np.asarray(adaptation.instruction)
  scale = SPEC.lora.scale(2)
  for i in range(CFG.num_decoder_layers):
    p = params["decoder"][f"layers_{i}"]["encoder_decoder_attention"]
    slots = adaptation.get("decoder", f"layers_{i}", "encoder_decoder_attention")
    for t, name in (("k", "key"), ("v", "value")):
      want = h @ np.asarray(p[name]["kernel"]) + scale * (
          h @ np.asarray(slots[f"lora_{t}_a"]) @ np.asarray(slots[f"lora_{t}_b"]))
      want = want * (1.0 + np.asarray(slots[f"ia3_{t}"]))
      np.testing.assert_allclose(np.asarray(cached.cross_kv[f"layers_{i}"][name]),
                                 want, atol=1e-5, rtol=1e-5)


def test_adaptation_methods_carry_cross_kv(setup):
  _, _, params, _, cache_kv = setup
  task = cache_kv(params, _adaptation(seed=3))
  wide = task.broadcast(B)
  assert wide.cross_kv["layers_1"]["key"].shape == (B, LH, CFG.inner_dim)
  rep = wide.repeat(2)
  assert rep.cross_kv["layers_0"]["value"].shape == (2 * B, LH, CFG.inner_dim)
  back = rep.index(3)
  assert not back.batched
  jax.tree.map(np.testing.assert_array_equal, back.cross_kv, task.cross_kv)
  with pytest.raises(ValueError, match="layers_1"):
    bad = task.replace(cross_kv={"layers_0": task.cross_kv["layers_0"]})
    jax.eval_shape(lambda: setup[0].apply(
        {"params": params}, jnp.ones((B, LI), jnp.int32),
        jnp.ones((B, LT), jnp.int32), None, bad))


def test_cached_greedy_decoding_equals_recomputation(setup):
  """Per task (broadcast inside each step); per example is the beam test below."""
  _, model, params, logits, cache_kv = setup
  plain = _adaptation(seed=4)
  cached = cache_kv(params, plain)
  length = 6
  enc = _batch(seed=5)["encoder_input_tokens"]
  got = fast_jit(lambda p, e, a: model.predict_batch(
      p, {"encoder_input_tokens": e}, a, method="greedy",
      max_decode_length=length))(params, enc, cached)
  # Reference: argmax over the uncached forward, instruction concatenated.
  dec = np.zeros((B, length), np.int32)
  out = np.zeros((B, length), np.int32)
  done = np.zeros(B, bool)
  for t in range(length):
    step = np.asarray(logits(params, {"encoder_input_tokens": enc,
                                      "decoder_input_tokens": dec}, plain))
    nxt = np.where(done, 0, step[:, t].argmax(-1))
    out[:, t] = nxt
    done |= nxt == CFG.eos_id
    if t + 1 < length:
      dec[:, t + 1] = nxt
  np.testing.assert_array_equal(np.asarray(got), out)
  assert (out[:, 0] != CFG.eos_id).any()


def test_beam_search_with_cached_kv_equals_concatenated(setup):
  """Per-example keys/values repeated over the beams."""
  _, model, params, _, cache_kv = setup
  plain = _adaptation(B, seed=6)
  beam = fast_jit(lambda p, e, a: model.predict_batch(
      p, {"encoder_input_tokens": e}, a, method="beam", num_beams=2,
      max_decode_length=5, return_all_beams=True))
  enc = _batch(seed=7)["encoder_input_tokens"]
  np.testing.assert_array_equal(np.asarray(beam(params, enc, cache_kv(params, plain))),
                                np.asarray(beam(params, enc, plain)))


@pytest.fixture(scope="module")
def hint():
  model = builders.make_model(
      hypernet="hint", peft_spec=builders.make_peft_spec(
          adapter_size=4, num_prefix_tokens=2, lora_rank=2, lora_targets=("k", "v"),
          ia3=True),
      instruction_fusion=True, vocab_size=64, dropout_rate=0.0,
      hypernet_kwargs={"num_heads": 4, "dropout_rate": 0.0})
  batch = _batch(seed=8)
  hyper = np.random.RandomState(9).randint(2, 64, size=(B, LH + 2)).astype(np.int32)
  hyper[0, 3:] = 0
  batch["hyper_encoder_input_tokens"] = hyper
  shapes = {k: v.shape for k, v in batch.items()}
  params = fast_jit(lambda k: model.get_initial_variables(k, shapes, boxed=False)
                    ["params"])(jax.random.key(1, impl="rbg"))
  # A fresh hypernetwork emits near-identity LoRA/IA3; perturb its output heads so
  # the generated k/v adaptation is clearly non-zero.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 if "hypernet" in jax.tree_util.keystr(path) else x,
      params)
  return model, params, batch


def test_hint_encode_instruction_caches_kv_with_generated_slots(hint):
  model, params, batch = hint
  generated = fast_jit(model.encode_instruction)(params,
                                                 batch["hyper_encoder_input_tokens"])
  assert generated.cross_kv is not None and generated.instruction is not None
  ia3 = generated.get("decoder", "layers_0", "encoder_decoder_attention")["ia3_k"]
  assert np.abs(np.asarray(ia3)).max() > 1e-3
  # Recomputed from the instruction alone, with the generated slots: the same.
  again = fast_jit(model.cache_instruction_kv)(params,
                                               generated.replace(cross_kv=None))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               again.cross_kv, generated.cross_kv)
  score = fast_jit(model.score_batch)
  from_tokens = np.asarray(score(params, batch))
  concat = np.asarray(score(params, batch, generated.replace(cross_kv=None)))
  np.testing.assert_allclose(from_tokens, concat, atol=1e-5, rtol=1e-5)
