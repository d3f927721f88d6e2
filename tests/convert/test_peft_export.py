"""PEFT export: our LoRA loaded by transformers + peft (PyTorch) gives our logits; the
non-LoRA sidecar round-trips exactly; unsupported requests fail clearly."""
import functools
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from hyper_tasks.convert import peft_export  # noqa: E402
from hyper_tasks.convert.peft_export import ExportError  # noqa: E402
from hyper_tasks.models.adaptation import Adaptation  # noqa: E402
from hyper_tasks.models.config import preset  # noqa: E402
from hyper_tasks.models.peft.static import set_path  # noqa: E402
from hyper_tasks.models.peft_spec import (AdapterSpec, IA3Spec, LoraSpec,  # noqa: E402
                                          PeftSpec, PrefixSpec, PromptSpec)
from hyper_tasks.models.transformer import Transformer  # noqa: E402

VOCAB = 97
GATED = preset("t5_1_1", "tiny", vocab_size=VOCAB, d_ff=48, dropout_rate=0.0,
               relative_attention_num_buckets=8, relative_attention_max_distance=20)
RELU_TIED = preset("t5", "tiny", vocab_size=VOCAB, d_ff=40, d_kv=6, num_heads=3,
                   dropout_rate=0.0, relative_attention_num_buckets=8,
                   relative_attention_max_distance=20)
CASES = {
    # every target at every site, ranks differ per target, scale 1 (alpha None)
    "gated_all_targets": (GATED, PeftSpec(lora=LoraSpec(
        (("q", 4), ("k", 2), ("v", 4), ("o", 2), ("wi", 4), ("wo", 3))))),
    # decoder sites only (encoder MLP off too), alpha / r scaling, relu MLP, tied
    "relu_decoder_sites_alpha": (RELU_TIED, PeftSpec(lora=LoraSpec(
        (("q", 2), ("v", 3), ("o", 2), ("wi", 2), ("wo", 2)),
        sites=("decoder_self", "cross"), alpha=4.0))),
}
MIXED_SPEC = PeftSpec(adapter=AdapterSpec(4, ("encoder_mlp", "decoder_mlp", "cross")),
                      prefix=PrefixSpec(3, ("encoder_self", "cross")),
                      lora=LoraSpec((("q", 2), ("wo", 2))), prompt=PromptSpec(2),
                      ia3=IA3Spec())


def _random_adaptation(cfg, spec, seed, batch=None, lh=0):
  """Non-zero random tensors for every slot (zero B would hide layout mistakes)."""
  rng = np.random.RandomState(seed)
  tree = {}
  lead = () if batch is None else (batch,)
  for slot in spec.slots(cfg):
    set_path(tree, slot.path,
             (rng.randn(*lead, *slot.shape) * 0.3).astype(np.float32))
  instr = mask = None
  if lh:
    instr = rng.randn(*lead, lh, cfg.d_model).astype(np.float32)
    mask = np.ones(lead + (lh,), bool)
    mask[..., -1] = False
  return Adaptation(tree, instr, mask, batched=batch is not None)


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, VOCAB, size=(2, 9)).astype(np.int32)
  enc[1, 6:] = 0
  dec = rng.randint(2, VOCAB, size=(2, 5)).astype(np.int32)
  dec[:, 0] = 0
  return enc, dec


@functools.lru_cache()
def _init(cfg):
  """Backbone params (a non-static spec adds none), shared by the tests of ``cfg``."""
  enc, dec = _inputs()
  return jax.jit(lambda k: nn.unbox(Transformer(cfg).init(k, enc, dec))["params"])(
      jax.random.key(0, impl="rbg"))


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
  cfg, spec = CASES[request.param]
  module = Transformer(cfg, peft_spec=spec)
  params = _init(cfg)
  # Random (not unit) layer norms so the base model is not trivially symmetric.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * (1.0 + 0.3 * np.random.RandomState(len(str(p))).randn(*x.shape))
      if "norm" in jax.tree_util.keystr(p) else x, params)
  adaptation = _random_adaptation(cfg, spec, seed=1)
  root = tmp_path_factory.mktemp(request.param)
  base_dir, adapter_dir = str(root / "base"), str(root / "adapter")
  peft_export.export_base_model(module, params, base_dir)
  written = peft_export.export_peft(module, params, adapter_dir, adaptation=adaptation,
                                    base_model_name_or_path=base_dir, lora_only=True)
  return request.param, module, params, adaptation, base_dir, adapter_dir, written


def test_adapter_config_is_standard(exported):
  name, module, _, _, base_dir, adapter_dir, written = exported
  assert sorted(map(os.path.basename, written["peft"])) == [
      "adapter_config.json", "adapter_model.safetensors"]
  with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
    cfg = json.load(f)
  assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_2_SEQ_LM"
  assert cfg["base_model_name_or_path"] == base_dir
  loaded = peft.PeftConfig.from_pretrained(adapter_dir)
  assert isinstance(loaded, peft.LoraConfig)
  from safetensors.numpy import load_file
  tensors = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
  d = module.config.d_model
  if name == "gated_all_targets":
    assert sorted(cfg["target_modules"]) == ["k", "o", "q", "v", "wi_0", "wi_1", "wo"]
    assert cfg["r"] == 4 and cfg["rank_pattern"] == {"k": 2, "o": 2, "wo": 3}
    a = tensors["base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"]
    b = tensors["base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight"]
    assert a.shape == (4, d) and b.shape == (module.config.inner_dim, 4)
    b = tensors["base_model.model.decoder.block.1.layer.2.DenseReluDense.wo.lora_B.weight"]
    assert b.shape == (d, 3)
  else:
    assert isinstance(cfg["target_modules"], str)  # a regex: decoder sites only
    assert cfg["lora_alpha"] == 4.0
    assert not any(k.startswith("base_model.model.encoder") for k in tensors)
    assert ("base_model.model.decoder.block.0.layer.1.EncDecAttention.v.lora_A.weight"
            in tensors)


def test_peft_logits_equal_ours(exported):
  _, module, params, adaptation, base_dir, adapter_dir, _ = exported
  enc, dec = _inputs(3)
  ours = np.asarray(jax.jit(lambda p, a: module.apply({"params": p}, enc, dec,
                                                      adaptation=a))(params, adaptation))
  base = transformers.T5ForConditionalGeneration.from_pretrained(base_dir).eval()
  kwargs = dict(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long))
  with torch.no_grad():
    plain = base(**kwargs).logits.numpy()
  model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
  # Every exported tensor found its module (none silently left at PEFT's init).
  n_lora = sum(1 for n, _ in model.named_parameters() if "lora_" in n)
  assert n_lora == sum(1 for s in module.peft_spec.slots(module.config))
  with torch.no_grad():
    ref = model(**kwargs).logits.numpy()
  assert np.abs(ref - plain).max() > 1e-2  # the adapter does something
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_lora_round_trip_is_exact(exported):
  _, module, _, adaptation, _, adapter_dir, _ = exported
  loaded, spec = peft_export.load_adaptation(adapter_dir)
  assert spec == module.peft_spec
  assert not loaded.batched and loaded.instruction is None
  jax.tree.map(np.testing.assert_array_equal, loaded.params, adaptation.params)


# -- non-LoRA slots: the sidecar ----------------------------------------------------------
@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  module = Transformer(GATED, peft_spec=MIXED_SPEC, instruction_fusion=True)
  params = _init(GATED)
  # A batch of two instructions; export the second one.
  batched = _random_adaptation(GATED, MIXED_SPEC, seed=5, batch=2, lh=4)
  out = str(tmp_path_factory.mktemp("mixed"))
  written = peft_export.export_peft(module, params, out, adaptation=batched.index(1))
  return module, params, batched.index(1), out, written


def test_sidecar_round_trip_is_exact(mixed):
  module, params, adaptation, out, written = mixed
  assert {os.path.basename(p) for p in written["sidecar"]} == {
      "hyper_tasks_adaptation.safetensors", "hyper_tasks_adaptation.json"}
  loaded, spec = peft_export.load_adaptation(out)
  assert spec == MIXED_SPEC
  jax.tree.map(np.testing.assert_array_equal, loaded.params, adaptation.params)
  np.testing.assert_array_equal(loaded.instruction, adaptation.instruction)
  np.testing.assert_array_equal(loaded.instruction_mask, adaptation.instruction_mask)
  assert loaded.instruction_mask.dtype == bool
  # Slot paths are the keys of the documented file.
  from safetensors.numpy import load_file
  keys = set(load_file(os.path.join(out, "hyper_tasks_adaptation.safetensors")))
  assert "encoder/layers_0/mlp/adapter_down" in keys
  assert "decoder/layers_1/encoder_decoder_attention/prefix_key" in keys
  assert "prompt/embedding" in keys and "instruction" in keys
  assert not any("lora" in k for k in keys)  # LoRA lives in the PEFT file
  # Our model runs with the reloaded adaptation and gives the same logits.
  enc, dec = _inputs(4)
  run = jax.jit(lambda a: module.apply({"params": params}, enc, dec, adaptation=a))
  np.testing.assert_array_equal(np.asarray(run(loaded)), np.asarray(run(adaptation)))


def test_cached_instruction_kv_is_recomputed_after_reload(mixed, tmp_path):
  """An adaptation carrying cached cross-attention keys/values exports the same
  files (they follow from the instruction); the reloaded one, recached, runs the
  same logits as the original."""
  module, params, adaptation, out, _ = mixed
  cache_kv = jax.jit(lambda a: module.apply({"params": params}, a,
                                            method=Transformer.cache_instruction_kv))
  cached = cache_kv(adaptation)
  peft_export.export_peft(module, params, str(tmp_path), adaptation=cached)
  from safetensors.numpy import load_file
  name = "hyper_tasks_adaptation.safetensors"
  assert set(load_file(str(tmp_path / name))) == set(load_file(os.path.join(out, name)))
  loaded, _ = peft_export.load_adaptation(str(tmp_path))
  assert loaded.cross_kv is None
  recached = cache_kv(loaded)
  enc, dec = _inputs(4)
  run = jax.jit(lambda a: module.apply({"params": params}, enc, dec, adaptation=a))
  np.testing.assert_allclose(np.asarray(run(recached)), np.asarray(run(cached)),
                             atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(run(recached)), np.asarray(run(loaded)),
                             atol=1e-5, rtol=1e-5)


def test_lora_only_refuses_what_peft_cannot_hold(mixed, tmp_path):
  module, params, adaptation, _, _ = mixed
  with pytest.raises(ExportError) as info:
    peft_export.export_peft(module, params, str(tmp_path), adaptation=adaptation,
                            lora_only=True)
  msg = str(info.value)
  for frag in ("adapter_down", "prefix_key", "prompt", "ia3_k", "instruction fusion"):
    assert frag in msg
  assert not os.listdir(tmp_path)  # nothing half-written


def test_clear_errors(mixed, tmp_path):
  module, params, adaptation, _, _ = mixed
  batched = _random_adaptation(GATED, MIXED_SPEC, seed=6, batch=2)
  with pytest.raises(ExportError, match="one instruction at a time"):
    peft_export.export_peft(module, params, str(tmp_path / "a"), adaptation=batched)
  with pytest.raises(ExportError, match="no hypernetwork"):
    peft_export.export_peft(module, params, str(tmp_path / "b"),
                            hyper_encoder_input_tokens=np.ones(4, np.int32))
  with pytest.raises(ExportError, match="nothing to export"):
    peft_export.export_peft(Transformer(GATED), params, str(tmp_path / "c"),
                            adaptation=adaptation)
  with pytest.raises(ExportError, match="nothing to export"):
    peft_export.export_peft(module, params, str(tmp_path / "d"))
  wrong = _random_adaptation(GATED, PeftSpec(lora=LoraSpec((("q", 2),))), seed=7)
  with pytest.raises(ExportError, match="lacks slot"):
    peft_export.export_peft(module, params, str(tmp_path / "e"), adaptation=wrong)
  with pytest.raises(ExportError, match="hyper_tasks_adaptation.json"):
    peft_export.load_adaptation(str(tmp_path / "nowhere"))


def test_load_adaptation_names_damaged_file(mixed, tmp_path):
  _, _, _, out, _ = mixed
  bad = str(tmp_path / "bad")
  shutil.copytree(out, bad)
  from safetensors.numpy import load_file, save_file
  f = os.path.join(bad, "hyper_tasks_adaptation.safetensors")
  tensors = dict(load_file(f))
  tensors.pop("decoder/layers_0/mlp/adapter_up")
  save_file(tensors, f)
  with pytest.raises(ExportError, match="decoder/layers_0/mlp/adapter_up") as info:
    peft_export.load_adaptation(bad)
  assert "hyper_tasks_adaptation.safetensors" in str(info.value)
  shutil.copy(os.path.join(out, "hyper_tasks_adaptation.safetensors"), f)
  peft_export.load_adaptation(bad)  # repaired
  os.remove(os.path.join(bad, "adapter_model.safetensors"))
  with pytest.raises(ExportError, match="adapter_model.safetensors"):
    peft_export.load_adaptation(bad)


def test_hint_generated_lora_exports_to_peft(tmp_path):
  """End to end: HINT reads an instruction, its LoRA runs in transformers + peft."""
  from hyper_tasks.models.builders import make_model
  spec = PeftSpec(lora=LoraSpec((("q", 4), ("v", 4), ("wo", 2))))
  model = make_model("t5_1_1", "tiny", hypernet="hint", peft_spec=spec,
                     vocab_size=VOCAB, dropout_rate=0.0,
                     # full-size output heads, so the generated B is far from 0
                     hypernet_kwargs={"num_heads": 4, "small_init": 1.0})
  enc, dec = _inputs(5)
  instruction = np.random.RandomState(6).randint(2, VOCAB, size=(7,)).astype(np.int32)
  shapes = {"encoder_input_tokens": enc.shape, "decoder_input_tokens": dec.shape,
            "hyper_encoder_input_tokens": (2, 7)}
  params = jax.jit(lambda k: model.get_initial_variables(k, shapes, boxed=False)
                   ["params"])(jax.random.key(0, impl="rbg"))
  hyper = np.broadcast_to(instruction, (2, 7))
  ours = np.asarray(jax.jit(lambda p: model.module.apply({"params": p}, enc, dec,
                                                          hyper))(params))
  base_dir, adapter_dir = str(tmp_path / "base"), str(tmp_path / "adapter")
  peft_export.export_base_model(model, params, base_dir)
  peft_export.export_peft(model, params, adapter_dir,
                          hyper_encoder_input_tokens=instruction,
                          base_model_name_or_path=base_dir, lora_only=True)
  base = transformers.T5ForConditionalGeneration.from_pretrained(base_dir).eval()
  kwargs = dict(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long))
  with torch.no_grad():
    plain = base(**kwargs).logits.numpy()
    ref = peft.PeftModel.from_pretrained(base, adapter_dir).eval()(**kwargs).logits
  assert np.abs(ref.numpy() - plain).max() > 1e-2
  np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=1e-4)
  # Two instructions at once are refused: export is per task.
  with pytest.raises(ExportError, match="one instruction at a time"):
    peft_export.export_peft(model, params, str(tmp_path / "two"),
                            hyper_encoder_input_tokens=hyper)
