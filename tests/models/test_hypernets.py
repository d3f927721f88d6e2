"""Hypernetworks: output trees match the spec, zeros are plain T5, clear errors for
methods a hypernetwork cannot produce, gradients reach every parameter, and each
variant learns a toy instruction task (copy / reverse / shift, named only in the
instruction) within a few hundred steps."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyper_tasks.models import builders
from hyper_tasks.models.hypernets import HYPERNETS, make_hypernet
from hyper_tasks.models.transformer import Transformer
from hyper_tasks.train.partitioning import resolve_logical_axes

V = 32
# One layer per stack keeps compiles short; the slots still span both stacks.
LAYERS = dict(num_encoder_layers=1, num_decoder_layers=1)
CFG = builders.make_t5_config("t5_1_1", "tiny", vocab_size=V, dropout_rate=0.0,
                              **LAYERS)
# Trained specs: HINT's default (adapters + prefixes) and each peer's own methods.
SPECS = {
    "hint": builders.make_peft_spec(adapter_size=4, num_prefix_tokens=2),
    "hypter": builders.make_peft_spec(adapter_size=4),
    "hypertune": builders.make_peft_spec(num_prefix_tokens=2, lora_rank=2),
    "t2l": builders.make_peft_spec(lora_rank=2, lora_targets=("q", "v", "wo")),
}
# Every method at once, for the hypernetwork-level check of HINT.
ALL_METHODS = builders.make_peft_spec(adapter_size=4, num_prefix_tokens=2,
                                      lora_rank=2, lora_targets=("q",),
                                      prompt_tokens=2, ia3=True)
# Per variant: options of the trained model, and alternatives checked at the
# hypernetwork level (layer-embedding / query methods).
OPTIONS = {
    "hint": dict(num_heads=4, dropout_rate=0.0),
    "hypter": dict(mlp_dim=16, dropout_rate=0.0),
    "hypertune": dict(num_heads=4, dropout_rate=0.0, num_layers=1),
    "t2l": dict(dropout_rate=0.0),
}
# HINT's own setting: adapters with generated biases and GELU, plus prefixes.
HINT_RECIPE = builders.make_peft_spec(adapter_size=4, adapter_bias=True,
                                      adapter_activation="gelu", num_prefix_tokens=2)
# Options not trained end to end, checked at the hypernetwork level (spec, grads).
ALTERNATIVES = [("hint", ALL_METHODS, dict(query_method="factored")),
                ("hint", HINT_RECIPE, dict(separate_encoder=True, encoder_layers=1)),
                ("hypter", SPECS["hypter"], dict(layer_embedding="shared")),
                ("t2l", SPECS["t2l"], dict(layer_embedding="sinusoidal",
                                           num_blocks=1)),
                ("hypertune", SPECS["hypertune"], dict(
                    num_layers=2, separate_encoder=True, encoder_layers=1))]
NAMES = sorted(HYPERNETS)
B, N_IN, LH = 16, 4, 4
COPY, REVERSE, SHIFT = 2, 3, 4
DATA = np.arange(5, 17)
# Compile cheaply: these tests run tiny programs a few hundred times at most.
FAST_COMPILE = {"xla_backend_optimization_level": 0,
                "xla_llvm_disable_expensive_passes": True}


def _key(i):
  return jax.random.key(i, impl="rbg")


def _compile(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def _model(name, spec=None, **kwargs):
  opts = dict(OPTIONS[name], **kwargs.pop("hypernet_kwargs", {}))
  kwargs.setdefault("instruction_fusion", name == "hint")
  return builders.make_model(hypernet=name, peft_spec=spec or SPECS[name],
                             vocab_size=V, dropout_rate=0.0, hypernet_kwargs=opts,
                             config_overrides=LAYERS, **kwargs)


def toy_batch(rng, ops=None):
  """Instruction ``[17, op, 18, EOS]`` names the op; the encoder sees only the data."""
  x = rng.choice(DATA, size=(B, N_IN))
  ops = rng.randint(COPY, SHIFT + 1, size=B) if ops is None else ops
  y = np.where((ops == COPY)[:, None], x,
               np.where((ops == REVERSE)[:, None], x[:, ::-1],
                        DATA[0] + (x - DATA[0] + 1) % len(DATA)))
  eos = np.ones((B, 1), np.int64)
  tgt = np.concatenate([y, eos], 1).astype(np.int32)
  hyper = np.stack([np.full(B, 17), ops, np.full(B, 18), np.ones(B)], 1)
  return {"hyper_encoder_input_tokens": hyper.astype(np.int32),
          "encoder_input_tokens": np.concatenate([x, eos], 1).astype(np.int32),
          "decoder_input_tokens": np.concatenate(
              [np.zeros((B, 1), np.int32), tgt[:, :-1]], 1),
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": np.ones_like(tgt, np.float32)}


SHAPES = {k: v.shape for k, v in toy_batch(np.random.RandomState(0)).items()}


@pytest.fixture(scope="module")
def backbone():
  """Plain T5 parameters, shared by every model here (the backbone tree does not
  depend on the hypernetwork)."""
  plain = Transformer(CFG)
  init = lambda k: nn.unbox(plain.init(
      k, jnp.ones(SHAPES["encoder_input_tokens"], jnp.int32),
      jnp.ones(SHAPES["decoder_input_tokens"], jnp.int32)))["params"]
  return _compile(init, _key(0))(_key(0))


def _init(model, backbone, seed=0):
  """Full parameters: the shared backbone plus a fresh hypernetwork, initialised on
  its own (a much smaller program than initialising the whole model)."""
  net = model.module.hypernet
  h = jnp.zeros((B, LH, CFG.d_model))
  mask = jnp.ones((B, LH), bool)
  def call(m, h, mask):
    return m(m.encode(h, mask) if m.has_encoder else h, mask)
  init = lambda k: nn.unbox(net.init(k, h, mask, method=call))["params"]
  return dict(backbone, hypernet=_compile(init, _key(seed))(_key(seed)))


@pytest.fixture(scope="module")
def trained(backbone):
  """Trains each variant once, lazily (adam, 200 steps, backbone and hypernetwork)."""
  cache = {}

  def run(name, steps=200):
    if name in cache:
      return cache[name]
    model = _model(name)
    params = _init(model, backbone)
    opt = optax.adam(3e-3)

    def step(params, opt_state, batch):
      (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
          params, batch, None)
      updates, opt_state = opt.update(grads, opt_state, params)
      norms = jax.tree.map(jnp.linalg.norm, grads["hypernet"])
      return optax.apply_updates(params, updates), opt_state, loss, norms

    rng = np.random.RandomState(1)
    opt_state = opt.init(params)
    step = _compile(step, params, opt_state, toy_batch(rng))
    losses, first_norms = [], None
    for _ in range(steps):
      params, opt_state, loss, norms = step(params, opt_state, toy_batch(rng))
      first_norms = norms if first_norms is None else first_norms
      losses.append(float(loss))
    # The step's loss is taken before its update: evaluate with it, discard updates.
    evaluate = lambda batch: float(step(params, opt_state, batch)[2])
    cache[name] = dict(model=model, params=params, losses=losses, evaluate=evaluate,
                       grad_norms=jax.tree.map(float, first_norms))
    return cache[name]
  return run


@pytest.mark.parametrize("name", NAMES)
def test_toy_instruction_task_is_learned(name, trained):
  run = trained(name)
  first, last = run["losses"][0], np.mean(run["losses"][-10:])
  assert np.isfinite(run["losses"]).all()
  assert last < 0.5 * first, (name, first, last)
  # The instruction carries the op: the same inputs under the wrong instruction
  # (copy -> reverse -> shift -> copy) have a clearly higher loss.
  ops = np.random.RandomState(9).randint(COPY, SHIFT + 1, size=B)
  right = toy_batch(np.random.RandomState(3), ops)
  wrong = dict(right, hyper_encoder_input_tokens=toy_batch(
      np.random.RandomState(3), COPY + (ops - COPY + 1) % 3)[
          "hyper_encoder_input_tokens"])
  assert run["evaluate"](wrong) > 1.5 * run["evaluate"](right)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_hypernetwork_parameter(name, trained):
  norms = trained(name)["grad_norms"]
  flat = jax.tree_util.tree_flatten_with_path(norms)[0]
  assert flat
  dead = [jax.tree_util.keystr(p) for p, n in flat if not n > 0]
  assert not dead, f"{name}: zero gradient at the first step for {dead}"


def _paths(tree):
  return {tuple(k.key for k in p): x.shape
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("name", NAMES)
def test_param_tree_and_output_tree_match_the_spec(name, trained):
  run = trained(name)
  model, params = run["model"], run["params"]
  assert set(params) == {"token_embedder", "encoder", "decoder", "hypernet"}
  boxed = jax.eval_shape(lambda: model.get_initial_variables(_key(0), SHAPES))
  specs = nn.get_partition_spec(boxed)["params"]["hypernet"]
  shapes = _paths(params["hypernet"])
  assert shapes == _paths(nn.unbox(boxed)["params"]["hypernet"])
  flat_specs = jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: x is None or isinstance(x, jax.sharding.PartitionSpec))[0]
  assert len(flat_specs) == len(shapes)
  for path, spec in flat_specs:
    key = tuple(k.key for k in path)
    assert spec is not None, f"{name}: no logical axes on {key}"
    resolve_logical_axes(tuple(spec), shape=shapes[key], name="/".join(key))
  hyper = toy_batch(np.random.RandomState(0))["hyper_encoder_input_tokens"]
  adaptation = jax.eval_shape(model.encode_instruction, params, hyper)
  assert _paths(adaptation.params) == {s.path: (B,) + s.shape
                                       for s in SPECS[name].slots(CFG)}
  assert (adaptation.instruction is not None) == (name == "hint")


@pytest.mark.parametrize("name,spec,options", ALTERNATIVES)
def test_hypernetwork_options_emit_the_spec_and_get_gradients(name, spec, options):
  net = make_hypernet(name, CFG, spec, **dict(OPTIONS[name], **options))
  rng = np.random.RandomState(0)
  h = jnp.asarray(rng.normal(size=(2, 5, CFG.d_model)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  weights = {s.path: jnp.asarray(rng.normal(size=(2,) + s.shape), jnp.float32)
             for s in spec.slots(CFG)}

  def call(m, h, mask):  # through the hypernetwork's own encoder, if it has one
    return m(m.encode(h, mask) if m.has_encoder else h, mask)

  def objective(params):
    out = net.apply({"params": params}, h, mask, method=call)
    flat = {tuple(k.key for k in p): x
            for p, x in jax.tree_util.tree_flatten_with_path(out)[0]}
    return sum(jnp.sum(flat[k] * w) for k, w in weights.items()), out

  init = lambda k: nn.unbox(net.init(k, h, mask, method=call))["params"]
  params = _compile(init, _key(0))(_key(0))
  assert ("encoder" in params) == bool(options.get("separate_encoder"))
  grads, out = _compile(jax.grad(objective, has_aux=True), params)(params)
  assert _paths(out) == {s.path: (2,) + s.shape for s in spec.slots(CFG)}
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_flatten_with_path(
      grads)[0] if not jnp.linalg.norm(g) > 0]
  assert not dead, f"{name} {options}: zero gradient for {dead}"
  # Output-side tensors (adapter up, LoRA B, prefix values, IA3) start near zero.
  flat = {tuple(k.key for k in p): np.abs(np.asarray(x)).mean()
          for p, x in jax.tree_util.tree_flatten_with_path(out)[0]}
  for pair in (("adapter_down", "adapter_up"), ("lora_q_a", "lora_q_b"),
               ("prefix_key", "prefix_value"),
               ("adapter_down_bias", "adapter_up_bias")):
    ins = [v for k, v in flat.items() if k[-1] == pair[0]]
    outs = [v for k, v in flat.items() if k[-1] == pair[1]]
    if ins:
      assert max(outs) < 0.1 * min(ins), (pair, ins, outs)


def test_hypernetwork_emitting_zeros_is_plain_t5(backbone):
  """HINT with every zero-identity method (adapters beside MLP and attention, LoRA on
  attention in/out and MLP kernels, IA3) and ``output_scale=0``: the whole model
  equals plain T5. (Each target alone is tested in test_peft_layers, as is the
  identity of prefixes and prompts: zero length, since a zero prefix still takes
  attention mass.)"""
  spec = builders.make_peft_spec(
      adapter_size=4, adapter_sites=("encoder_mlp", "decoder_mlp", "cross"),
      lora_rank=2, lora_targets=("q", "o", "wi"), ia3=True)
  model = _model("hint", spec, hypernet_kwargs={"output_scale": 0.0},
                 instruction_fusion=False)
  params = _init(model, backbone, seed=2)
  batch = toy_batch(np.random.RandomState(4))

  def logits(module, p):
    return module.apply({"params": p}, batch["encoder_input_tokens"],
                        batch["decoder_input_tokens"],
                        batch["hyper_encoder_input_tokens"])
  got = _compile(lambda p: logits(model.module, p), params)(params)
  want = _compile(lambda p: logits(Transformer(CFG), p), backbone)(backbone)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)


def test_no_instruction_control_ignores_the_instruction(backbone):
  """The hypernetwork sees the same fixed instruction for every row, so rows with
  different ops get the same adaptation."""
  hyper = toy_batch(np.random.RandomState(5))["hyper_encoder_input_tokens"]
  assert len(set(hyper[:, 1])) == 3
  model = _model("hypter", no_instruction=True)
  params = _init(model, backbone)
  adaptation = _compile(model.encode_instruction, params, hyper)(params, hyper)
  for x in jax.tree.leaves(adaptation.params):
    np.testing.assert_array_equal(np.asarray(x), np.broadcast_to(x[:1], x.shape))


@pytest.mark.parametrize("name,spec,match", [
    ("hypter", builders.make_peft_spec(adapter_size=4, num_prefix_tokens=2),
     r"'hypter' cannot produce PEFT method\(s\) \['prefix'\]"),
    ("hypertune", builders.make_peft_spec(adapter_size=4, num_prefix_tokens=2),
     r"'hypertune' cannot produce PEFT method\(s\) \['adapter'\]"),
    ("t2l", builders.make_peft_spec(lora_rank=2, ia3=True, prompt_tokens=2),
     r"'t2l' cannot produce PEFT method\(s\) \['ia3', 'prompt'\]"),
    ("hint", builders.make_peft_spec(), r"generates no parameters"),
    ("hypter", builders.make_peft_spec(adapter_size=4, adapter_bias=True),
     r"'hypter' generates bias-free adapters"),
])
def test_unsupported_specs_raise_clear_errors(name, spec, match):
  with pytest.raises(ValueError, match=match):
    make_hypernet(name, CFG, spec)
  with pytest.raises(ValueError, match=match):
    builders.make_model(hypernet=name, peft_spec=spec)


def test_bad_hypernet_names_and_options_raise():
  with pytest.raises(ValueError, match="Unknown hypernet 'hyper'"):
    make_hypernet("hyper", CFG, SPECS["hint"])
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['query_method'\]"):
    make_hypernet("t2l", CFG, SPECS["t2l"], query_method="component")
  assert make_hypernet("none", CFG, SPECS["hint"]) is None
  h, mask = jnp.ones((1, 2, CFG.d_model)), jnp.ones((1, 2), bool)
  with pytest.raises(ValueError, match="not divisible by num_heads 5"):
    make_hypernet("hint", CFG, SPECS["hint"], num_heads=5).init(_key(0), h, mask)
  with pytest.raises(ValueError, match="unknown query_method 'rows'"):
    make_hypernet("hint", CFG, SPECS["hint"], query_method="rows").init(
        _key(0), h, mask)
