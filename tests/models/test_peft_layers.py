"""PEFT layers against plain T5 and hand-written references.

Identity: every method with zero tensors (adapters, LoRA, IA3) or zero length
(prefixes, prompt) is plain T5. Oracles: prefix attention against an einsum
reference, LoRA against the merged kernel ``W + A B``. Paths: per-task == broadcast
per-example, a mixed-task batch == each task alone, cached decoding with prefixes ==
argmax over full re-computation. HINT's adapters (down/up biases, GELU) against a
numpy reference.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper_tasks.models import builders
from hyper_tasks.models.adaptation import Adaptation
from hyper_tasks.models.attention import MultiHeadAttention
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.peft.adapters import adapter_delta
from hyper_tasks.models.peft.static import set_path
from hyper_tasks.models.transformer import Transformer

CFG = builders.make_t5_config("t5_1_1", "tiny", vocab_size=64, dropout_rate=0.0)
B, LI, LT = 3, 7, 5
SHAPES = {"encoder_input_tokens": (B, LI), "decoder_input_tokens": (B, LT)}
ALL_LORA = ("q", "k", "v", "o", "wi", "wo")
FULL_SPEC = builders.make_peft_spec(
    adapter_size=4, adapter_sites=("encoder_mlp", "decoder_mlp", "cross"),
    num_prefix_tokens=3, lora_rank=2, lora_targets=ALL_LORA, prompt_tokens=2,
    ia3=True)


def _key(i):
  return jax.random.key(i, impl="rbg")


def fast_jit(fn):
  """``jax.jit`` compiled with cheap XLA options (tiny programs, few calls), one
  executable per argument structure."""
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
  tgt[2, 3:] = 0
  dec = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}


def random_slots(spec, batch=None, seed=0, scale=0.5, zeros=False):
  """A slot tree for ``spec`` with random (or zero) leaves, ``[batch?, ...]``."""
  rng = np.random.RandomState(seed)
  tree = {}
  for s in spec.slots(CFG):
    shape = ((batch,) if batch else ()) + s.shape
    value = np.zeros(shape) if zeros else rng.normal(0.0, scale, shape)
    set_path(tree, s.path, jnp.asarray(value, jnp.float32))
  return tree


@pytest.fixture(scope="module")
def params():
  plain = Transformer(CFG)
  return fast_jit(lambda k: nn.unbox(plain.init(
      k, jnp.ones((B, LI), jnp.int32), jnp.ones((B, LT), jnp.int32)))["params"])(
          _key(0))


@pytest.fixture(scope="module")
def logits_fn():
  """Jitted logits of the adaptable backbone (no hypernet, no static PEFT), with an
  optional explicit adaptation; the spec only sets LoRA scales."""
  module = Transformer(CFG, FULL_SPEC)
  return fast_jit(lambda p, b, a: module.apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"], None, a))


@pytest.fixture(scope="module")
def plain_logits(params):
  return np.asarray(fast_jit(lambda p, b: Transformer(CFG).apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"]))(
          params, _batch()))


def test_all_peft_off_is_plain_t5(params, logits_fn, plain_logits):
  spec = builders.make_peft_spec(adapter_size=0, num_prefix_tokens=0, lora_rank=0,
                                 prompt_tokens=0, ia3=False)
  assert spec.is_empty and spec.slots(CFG) == []
  model = builders.make_model(hypernet="none", peft_spec=spec, vocab_size=64,
                              dropout_rate=0.0)
  got = fast_jit(lambda p, b: model.module.apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"]))(
          params, _batch())
  # Same program, same numbers (compared jitted: eager op-by-op rounds differently).
  np.testing.assert_array_equal(np.asarray(got), plain_logits)
  # The adaptable backbone with no adaptation, or an empty one, is plain T5 too.
  np.testing.assert_array_equal(np.asarray(logits_fn(params, _batch(), None)),
                                plain_logits)
  np.testing.assert_array_equal(
      np.asarray(logits_fn(params, _batch(), Adaptation({}, batched=False))),
      plain_logits)


@pytest.mark.parametrize("method", ["adapter", "lora", "ia3"])
def test_zero_tensors_are_the_identity(method, params, logits_fn, plain_logits):
  kwargs = {"adapter": dict(adapter_size=4, adapter_sites=(
                "encoder_mlp", "decoder_mlp", "encoder_self", "decoder_self", "cross")),
            "lora": dict(lora_rank=2, lora_targets=ALL_LORA),
            "ia3": dict(ia3=True)}[method]
  spec = builders.make_peft_spec(**kwargs)
  zeros = Adaptation(random_slots(spec, batch=B, zeros=True), batched=True)
  np.testing.assert_allclose(np.asarray(logits_fn(params, _batch(), zeros)),
                             plain_logits, atol=1e-6, rtol=0)
  # ...and the same tensors with random values do change the output.
  rand = Adaptation(random_slots(spec, batch=B), batched=True)
  assert np.abs(np.asarray(logits_fn(params, _batch(), rand)) - plain_logits).max() > 1e-3


def test_zero_length_prefix_and_prompt_change_nothing(params, logits_fn, plain_logits):
  assert builders.make_peft_spec(num_prefix_tokens=0, prompt_tokens=0).slots(CFG) == []
  # A prefix/prompt tensor of length 0 at every site: concatenating nothing.
  spec = builders.make_peft_spec(num_prefix_tokens=3, prompt_tokens=2)
  tree = {}
  for s in spec.slots(CFG):
    set_path(tree, s.path, jnp.zeros((B, 0) + s.shape[1:], jnp.float32))
  got = logits_fn(params, _batch(), Adaptation(tree, batched=True))
  np.testing.assert_allclose(np.asarray(got), plain_logits, atol=1e-6, rtol=0)


def test_prefix_attention_matches_einsum_reference():
  h, dk, d, p, lq, lk = CFG.num_heads, CFG.d_kv, CFG.d_model, 3, 4, 6
  rng = np.random.RandomState(1)
  xq = rng.normal(size=(B, lq, d)).astype(np.float32)
  xkv = rng.normal(size=(B, lk, d)).astype(np.float32)
  bias = rng.normal(size=(1, h, lq, lk)).astype(np.float32)
  mask = np.ones((B, 1, lq, lk), bool)
  mask[1, :, :, 4:] = False
  mask[2] = np.tril(np.ones((lq, lk), bool))[None]  # causal-style, row 0 sees 1 key
  slots = {"prefix_key": rng.normal(size=(B, p, h * dk)).astype(np.float32),
           "prefix_value": rng.normal(size=(B, p, h * dk)).astype(np.float32)}
  attn = MultiHeadAttention(CFG)
  variables = attn.init(_key(1), xq, xkv, bias, mask, slots)
  got = attn.apply(variables, xq, xkv, bias, mask, slots)
  w = {k: np.asarray(nn.unbox(v)["kernel"])
       for k, v in variables["params"].items()}
  split = lambda x: x.reshape(x.shape[:2] + (h, dk))
  q = split(xq @ w["query"])
  k = np.concatenate([split(slots["prefix_key"]), split(xkv @ w["key"])], axis=1)
  v = np.concatenate([split(slots["prefix_value"]), split(xkv @ w["value"])], axis=1)
  # Prefixes: no position bias, always visible. T5: no 1/sqrt(d_kv) scaling.
  full_bias = np.concatenate([np.zeros((1, h, lq, p), np.float32), bias], axis=-1)
  full_mask = np.concatenate([np.ones((B, 1, lq, p), bool), mask], axis=-1)
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) + full_bias
  scores = np.where(full_mask, scores, -1e10)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, lq, h * dk) @ w["out"]
  np.testing.assert_allclose(np.asarray(got), out, atol=1e-5, rtol=1e-5)


def test_lora_equals_merged_kernel(params):
  spec = builders.make_peft_spec(lora_rank=2, lora_targets=ALL_LORA, lora_alpha=6.0)
  tree = random_slots(spec, seed=3, scale=0.3)  # per task: no batch axis
  batch = _batch()

  def logits(module, p, a):
    return module.apply({"params": p}, batch["encoder_input_tokens"],
                        batch["decoder_input_tokens"], None, a)
  got = fast_jit(lambda p, a: logits(Transformer(CFG, spec), p, a))(
      params, Adaptation(tree, batched=False))
  names = {"q": "query", "k": "key", "v": "value", "o": "out"}
  merged = jax.tree.map(np.array, params)
  count = 0
  for s in spec.slots(CFG):
    if not s.name.endswith("_a"):
      continue
    target = s.name[len("lora_"):-2]
    node = merged
    for key in s.path[:-1] + (names.get(target, target),):
      node = node[key]
    a = np.asarray(tree[s.path[0]][s.path[1]][s.path[2]][s.name])
    b = np.asarray(tree[s.path[0]][s.path[1]][s.path[2]][f"lora_{target}_b"])
    node["kernel"] = node["kernel"] + (6.0 / 2) * a @ b
    count += 1
  # q, k, v, o at 3 sites x 2 layers + wi_0, wi_1, wo in 2 stacks x 2 layers.
  assert count == 4 * 3 * 2 + 3 * 2 * 2
  want = fast_jit(lambda p: logits(Transformer(CFG), p, None))(merged)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def score_fn():
  model = EncoderDecoderModel(Transformer(CFG, FULL_SPEC))
  return fast_jit(model.score_batch)


def test_per_task_and_per_example_paths_agree(params, score_fn):
  batch = _batch()
  rng = np.random.RandomState(5)
  # Two tasks, each with every method and a fused instruction [Lh, D].
  tasks = [Adaptation(random_slots(FULL_SPEC, seed=10 + t),
                      jnp.asarray(rng.normal(size=(4, CFG.d_model)), jnp.float32),
                      jnp.asarray([True, True, t == 0, False]), batched=False)
           for t in range(2)]
  per_task = np.asarray(score_fn(params, batch, tasks[0]))
  broadcast = np.asarray(score_fn(params, batch, tasks[0].broadcast(B)))
  np.testing.assert_allclose(per_task, broadcast, atol=1e-5, rtol=1e-5)
  # A batch mixing tasks (rows 0, 2 -> task 0, row 1 -> task 1) per example.
  rows = [0, 1, 0]
  mixed = jax.tree.map(lambda *xs: jnp.stack(xs), *[tasks[t] for t in rows])
  mixed = Adaptation(mixed.params, mixed.instruction, mixed.instruction_mask,
                     batched=True)
  got = np.asarray(score_fn(params, batch, mixed))
  other = np.asarray(score_fn(params, batch, tasks[1]))
  np.testing.assert_allclose(got, [per_task[0], other[1], per_task[2]],
                             atol=1e-5, rtol=1e-5)
  assert abs(per_task[1] - other[1]) > 1e-3  # the two tasks really differ


def test_decoding_with_prefixes_equals_full_recomputation(params, logits_fn):
  model = EncoderDecoderModel(Transformer(CFG, FULL_SPEC))
  batch = _batch(seed=2)
  # Per-example adaptation with every method, prefixes at all three sites.
  adaptation = Adaptation(random_slots(FULL_SPEC, batch=B, seed=7), batched=True)
  length = 6
  cached = fast_jit(lambda p, b, a: model.predict_batch(
      p, b, a, method="greedy", max_decode_length=length))(params, batch, adaptation)
  # Reference: argmax over the uncached forward on the growing prefix.
  dec = np.zeros((B, length), np.int32)  # start token 0, then predictions
  out = np.zeros((B, length), np.int32)
  done = np.zeros(B, bool)
  for t in range(length):
    logits = np.asarray(logits_fn(params, {"encoder_input_tokens":
                                           batch["encoder_input_tokens"],
                                           "decoder_input_tokens": dec}, adaptation))
    nxt = np.where(done, 0, logits[:, t].argmax(-1))
    out[:, t] = nxt
    done |= nxt == CFG.eos_id
    if t + 1 < length:
      dec[:, t + 1] = nxt
  np.testing.assert_array_equal(np.asarray(cached), out)
  assert (out[:, 0] != CFG.eos_id).any()  # decoded something beyond one EOS


# ---- HINT's adapters: down/up biases and GELU ---------------------------------------

def _gelu_tanh(x):
  """GELU, tanh approximation (flax ``nn.gelu``'s default, HINT's adapters)."""
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("batched", [False, True])
def test_adapter_with_biases_and_gelu_matches_numpy(batched):
  d, a, length = 6, 3, 4
  rng = np.random.RandomState(11)
  x = rng.normal(size=(B, length, d)).astype(np.float32)
  lead = (B,) if batched else ()
  shapes = {"adapter_down": (d, a), "adapter_up": (a, d),
            "adapter_down_bias": (a,), "adapter_up_bias": (d,)}
  w = {k: rng.normal(size=lead + s).astype(np.float32) for k, s in shapes.items()}
  row = lambda k, i: w[k][i] if batched else w[k]
  got = adapter_delta(jnp.asarray(x), {k: jnp.asarray(v) for k, v in w.items()},
                      "gelu")
  want = np.stack([
      _gelu_tanh(x[i] @ row("adapter_down", i) + row("adapter_down_bias", i))
      @ row("adapter_up", i) + row("adapter_up_bias", i) for i in range(B)])
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
  # The default: bias-free ReLU, relu(x @ down) @ up.
  plain = {k: jnp.asarray(w[k]) for k in ("adapter_down", "adapter_up")}
  want = np.stack([np.maximum(x[i] @ row("adapter_down", i), 0.0)
                   @ row("adapter_up", i) for i in range(B)])
  np.testing.assert_allclose(np.asarray(adapter_delta(jnp.asarray(x), plain)), want,
                             atol=1e-5, rtol=1e-5)


def test_hint_adapter_spec_has_bias_slots_and_checks_the_activation():
  spec = builders.make_peft_spec(adapter_size=4, adapter_bias=True,
                                 adapter_activation="gelu")
  mlp = {s.name: s.shape for s in spec.slots(CFG)
         if s.path[:3] == ("encoder", "layers_0", "mlp")}
  assert mlp == {"adapter_down": (CFG.d_model, 4), "adapter_up": (4, CFG.d_model),
                 "adapter_down_bias": (4,), "adapter_up_bias": (CFG.d_model,)}
  assert spec.adapter_activation == "gelu"
  assert "adapter_down_bias" not in {
      s.name for s in builders.make_peft_spec(adapter_size=4).slots(CFG)}
  with pytest.raises(ValueError, match="AdapterSpec.activation.*'tanh'"):
    builders.make_peft_spec(adapter_size=4, adapter_activation="tanh")


def test_biased_gelu_adapters_in_the_backbone(params, plain_logits):
  """Zero ``up`` and ``up_bias`` are the identity whatever ``down_bias`` is; the
  activation reaches every layer (GELU and ReLU give different logits)."""
  kwargs = dict(adapter_size=4, adapter_bias=True,
                adapter_sites=("encoder_mlp", "decoder_mlp", "cross"))
  gelu = builders.make_peft_spec(adapter_activation="gelu", **kwargs)
  relu = builders.make_peft_spec(adapter_activation="relu", **kwargs)
  run = {name: fast_jit(lambda p, b, a, spec=spec: Transformer(CFG, spec).apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"], None, a))
         for name, spec in (("gelu", gelu), ("relu", relu))}
  tree = random_slots(gelu, batch=B, seed=4)
  for s in gelu.slots(CFG):
    if s.name in ("adapter_up", "adapter_up_bias"):
      set_path(tree, s.path, jnp.zeros((B,) + s.shape, jnp.float32))
  np.testing.assert_allclose(
      np.asarray(run["gelu"](params, _batch(), Adaptation(tree, batched=True))),
      plain_logits, atol=1e-6, rtol=0)
  rand = Adaptation(random_slots(gelu, batch=B, seed=5), batched=True)
  out = {k: np.asarray(f(params, _batch(), rand)) for k, f in run.items()}
  assert np.abs(out["gelu"] - plain_logits).max() > 1e-3
  assert np.abs(out["gelu"] - out["relu"]).max() > 1e-3
