"""The analytic FLOP counts against XLA's cost analysis of the real modules.

XLA also counts elementwise work (softmax, norms, activations) that the analytic
count ignores, so XLA's number is a little larger; at these widths (d_model 64,
head dim 16+) the gap stays under 10%. Only tracing and lowering: nothing compiles.
"""
import jax
import jax.numpy as jnp
import pytest

from hyper_tasks.models import flops
from hyper_tasks.models.adaptation import Adaptation
from hyper_tasks.models.builders import make_model
from hyper_tasks.models.config import preset
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.peft.static import set_path
from hyper_tasks.models.peft_spec import (AdapterSpec, IA3Spec, LoraSpec, PeftSpec,
                                          PrefixSpec, PromptSpec)
from hyper_tasks.models.transformer import Transformer

B = 2
CONFIGS = {
    "gated_untied": preset("t5_1_1", "tiny", d_model=64, num_heads=4, d_kv=16,
                           d_ff=128, vocab_size=256),
    # original T5 (relu, tied, scaled logits) with heads * d_kv != d_model
    "relu_tied_odd_inner": preset("t5", "tiny", d_model=64, num_heads=3, d_kv=24,
                                  d_ff=160, vocab_size=200),
    # more decoder than encoder layers, longer sequences
    "uneven_stacks": preset("t5_1_1", "tiny", d_model=96, num_heads=4, d_kv=24,
                            d_ff=192, vocab_size=320, num_encoder_layers=2,
                            num_decoder_layers=3),
}
LENGTHS = {"gated_untied": (32, 16), "relu_tied_odd_inner": (24, 12),
           "uneven_stacks": (64, 20)}
ALL_PEFT = PeftSpec(adapter=AdapterSpec(16, ("encoder_mlp", "decoder_mlp", "cross")),
                    prefix=PrefixSpec(6),
                    lora=LoraSpec((("q", 4), ("k", 4), ("v", 2), ("o", 2), ("wi", 4),
                                   ("wo", 4))),
                    prompt=PromptSpec(5), ia3=IA3Spec())


def _ints(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.int32)


def _variables(module):
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                            jnp.ones((1, 2), jnp.int32),
                                            jnp.ones((1, 2), jnp.int32)))


def _xla_forward(module, li, ld, adaptation=None):
  def fn(v, e, d, a):
    return module.apply(v, e, d, adaptation=a)
  return flops.xla_flops(fn, _variables(module), _ints(B, li), _ints(B, ld),
                         adaptation) / B


def _abstract_adaptation(cfg, spec, fused_len=0, cached_kv=False):
  tree = {}
  for s in spec.slots(cfg):
    set_path(tree, s.path, jax.ShapeDtypeStruct((B,) + s.shape, jnp.float32))
  instr = mask = cross_kv = None
  if fused_len:
    instr = jax.ShapeDtypeStruct((B, fused_len, cfg.d_model), jnp.float32)
    mask = jax.ShapeDtypeStruct((B, fused_len), jnp.bool_)
  if fused_len and cached_kv:
    kv = jax.ShapeDtypeStruct((B, fused_len, cfg.inner_dim), jnp.float32)
    cross_kv = {f"layers_{i}": {"key": kv, "value": kv}
                for i in range(cfg.num_decoder_layers)}
  return Adaptation(tree, instr, mask, cross_kv, batched=True)


def _close(analytic, xla, tol=0.10):
  ratio = xla / analytic
  assert 0.99 <= ratio <= 1 + tol, (analytic, xla, ratio)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_backbone_forward_matches_xla(name):
  cfg, (li, ld) = CONFIGS[name], LENGTHS[name]
  ours = flops.backbone(cfg, li, ld)
  assert ours.per_task == 0
  _close(ours.per_instance, _xla_forward(Transformer(cfg), li, ld))


@pytest.mark.parametrize("cached", [True, False], ids=["cached_kv", "concat"])
def test_every_peft_method_and_fusion_match_xla(cached):
  """Fusion through per-task cached instruction keys/values (as the model runs) and
  through an adaptation without them (instruction concatenated per instance)."""
  cfg, (li, ld), lh = CONFIGS["gated_untied"], LENGTHS["gated_untied"], 12
  module = Transformer(cfg, peft_spec=ALL_PEFT, instruction_fusion=True)
  parts = flops.forward_parts(cfg, li, ld, ALL_PEFT, lh, cached_fused_kv=cached)
  if cached:
    assert sum(parts.values()) == flops.model_flops(module, li, ld, lh).per_instance
  xla = _xla_forward(module, li, ld, _abstract_adaptation(cfg, ALL_PEFT, lh, cached))
  _close(sum(parts.values()), xla)
  # The overhead over plain T5 is what it claims to be, too.
  plain_ours = flops.backbone(cfg, li, ld).per_instance
  plain_xla = _xla_forward(Transformer(cfg), li, ld)
  overhead = flops.peft_overhead(cfg, ALL_PEFT, li, ld, lh, cached)
  assert all(v > 0 for k, v in overhead.items()), overhead
  assert sum(overhead.values()) == pytest.approx(sum(parts.values()) - plain_ours)
  _close(sum(overhead.values()), xla - plain_xla, tol=0.15)


def test_cached_instruction_kv_moves_to_per_task():
  """Caching moves exactly the instruction's k/v projections (and cross k/v LoRA)
  from every instance to once per task."""
  cfg, (li, ld), lh = CONFIGS["uneven_stacks"], LENGTHS["uneven_stacks"], 40
  spec = PeftSpec(lora=LoraSpec((("k", 8), ("v", 4)), sites=("cross",)))
  cached = sum(flops.forward_parts(cfg, li, ld, spec, lh).values())
  concat = sum(flops.forward_parts(cfg, li, ld, spec, lh,
                                   cached_fused_kv=False).values())
  per_task = flops.instruction_kv(cfg, spec, lh)
  want = cfg.num_decoder_layers * (2 * lh * cfg.d_model * 2 * cfg.inner_dim
                                   + 2 * lh * 8 * (cfg.d_model + cfg.inner_dim)
                                   + 2 * lh * 4 * (cfg.d_model + cfg.inner_dim))
  assert per_task == want and concat - cached == pytest.approx(per_task)
  assert flops.instruction_kv(cfg, spec, 0) == 0


@pytest.mark.parametrize("method,spec", [
    ("lora_cross_kv", PeftSpec(lora=LoraSpec((("k", 8), ("v", 8)), sites=("cross",)))),
    ("prefix", PeftSpec(prefix=PrefixSpec(16))),
    ("prompt", PeftSpec(prompt=PromptSpec(16))),
], ids=lambda x: x if isinstance(x, str) else "")
def test_single_method_overhead_matches_xla(method, spec):
  cfg, (li, ld) = CONFIGS["uneven_stacks"], LENGTHS["uneven_stacks"]
  module = Transformer(cfg, peft_spec=spec)
  extra_ours = flops.model_flops(module, li, ld).per_instance - flops.backbone(
      cfg, li, ld).per_instance
  extra_xla = (_xla_forward(module, li, ld, _abstract_adaptation(cfg, spec))
               - _xla_forward(Transformer(cfg), li, ld))
  _close(extra_ours, extra_xla, tol=0.15)


@pytest.mark.parametrize("hypernet,spec", [
    ("hint", PeftSpec(adapter=AdapterSpec(8), prefix=PrefixSpec(4),
                      lora=LoraSpec((("q", 4), ("v", 4))))),
    ("hypter", PeftSpec(adapter=AdapterSpec(8))),  # counted through XLA
])
def test_hypernetwork_per_task_cost_matches_xla(hypernet, spec):
  li, ld, lh = 32, 16, 24
  model = make_model("t5_1_1", "tiny", hypernet=hypernet, peft_spec=spec,
                     instruction_fusion=hypernet == "hint", vocab_size=256,
                     hypernet_kwargs={"num_heads": 4})
  # The gin builder's tiny model, widened so that elementwise work stays small.
  cfg = CONFIGS["gated_untied"]
  module = model.module.clone(config=cfg,
                              hypernet=model.module.hypernet.clone(config=cfg))
  model = EncoderDecoderModel(module)
  shapes = {"encoder_input_tokens": (B, li), "decoder_input_tokens": (B, ld),
            "hyper_encoder_input_tokens": (B, lh)}
  variables = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), shapes, boxed=False))
  encode = lambda v, h: module.apply(v, h, method=Transformer.encode_instruction)
  ours = flops.model_flops(module, li, ld, lh)
  assert set(ours.parts) >= {"task/instruction_encoder", "task/hypernet"}
  assert ("task/instruction_kv" in ours.parts) == (hypernet == "hint")
  _close(ours.per_task, flops.xla_flops(encode, variables, _ints(B, lh)) / B)
  adaptation = jax.eval_shape(encode, variables, _ints(B, lh))
  per_instance = flops.xla_flops(
      lambda v, e, d, a: module.apply(v, e, d, adaptation=a), variables,
      _ints(B, li), _ints(B, ld), adaptation) / B
  _close(ours.per_instance, per_instance)


def test_settings_and_amortization():
  cfg = preset("t5_1_1", "small")
  base = flops.concat_baseline(cfg, 512, 128, 32)
  assert base.per_task == 0
  assert base.per_instance == flops.backbone(cfg, 640, 32).per_instance
  model = make_model("t5_1_1", "small", hypernet="hint",
                     peft_spec=PeftSpec(adapter=AdapterSpec(64), prefix=PrefixSpec(30)),
                     instruction_fusion=True, hypernet_kwargs={"num_heads": 8})
  hint = flops.hint_cached(model, 512, 128, 32)
  assert hint.per_task > 0
  assert hint.amortized(1) == hint.uncached() == hint.per_task + hint.per_instance
  assert hint.amortized(10) > hint.amortized(1000) > hint.per_instance
  # Reading the instruction once per task instead of in every instance is the
  # point: per instance HINT is far cheaper than the concatenated baseline...
  assert hint.per_instance < 0.4 * base.per_instance
  # ...while running the hypernetwork for every instance would not be.
  assert hint.uncached() > base.per_instance
  with pytest.raises(ValueError, match="no hypernetwork"):
    flops.hint_cached(Transformer(cfg), 512, 128, 32)
