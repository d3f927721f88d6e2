"""Our T5 against transformers' PyTorch T5: logits, gradients, decoding, round trips."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hyper_tasks.convert import hf  # noqa: E402
from hyper_tasks.models.model_api import EncoderDecoderModel  # noqa: E402

VARIANTS = {
    # name: HF config overrides
    "t5_relu_tied": dict(feed_forward_proj="relu", tie_word_embeddings=True,
                         d_model=32, d_kv=8, num_heads=4, d_ff=48),
    "t5_1_1_gated_untied": dict(feed_forward_proj="gated-gelu",
                                tie_word_embeddings=False, d_model=32, d_kv=8,
                                num_heads=4, d_ff=48),
    # d_kv * heads != d_model
    "odd_inner_dim": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                          d_model=32, d_kv=6, num_heads=3, d_ff=40),
    "relu_untied_odd": dict(feed_forward_proj="relu", tie_word_embeddings=False,
                            d_model=24, d_kv=10, num_heads=2, d_ff=40),
}


def _hf_model(tmp_path_factory, name):
  torch.manual_seed(sum(map(ord, name)))
  kwargs = dict(vocab_size=97, num_layers=2, num_decoder_layers=2,
                relative_attention_num_buckets=8, relative_attention_max_distance=20,
                dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                eos_token_id=1)
  kwargs.update(VARIANTS[name])
  config = transformers.T5Config(**kwargs)
  model = transformers.T5ForConditionalGeneration(config).eval()
  # Random layer norms and relative biases, so that nothing is trivially 1 or 0.
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "layer_norm" in n or "relative_attention_bias" in n:
        p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in n else 0.0))
  path = tmp_path_factory.mktemp(name)
  model.save_pretrained(path)
  return model, str(path)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
  hf_model, path = _hf_model(tmp_path_factory, request.param)
  module, params = hf.load_t5(path)
  return request.param, hf_model, module, params, path


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, 97, size=(3, 11)).astype(np.int32)
  enc[0, 7:] = 0  # padding
  enc[2, 4:] = 0
  dec = rng.randint(2, 97, size=(3, 6)).astype(np.int32)
  dec[:, 0] = 0  # decoder start
  return enc, dec


def test_logits_match_pytorch(pair):
  _, hf_model, module, params, _ = pair
  enc, dec = _inputs()
  ours = module.apply({"params": params}, enc, dec)
  with torch.no_grad():
    ref = hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                   attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                   decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits
  np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=1e-4, rtol=1e-4)


def test_gradients_match_pytorch(pair):
  _, hf_model, module, params, _ = pair
  enc, dec = _inputs(1)
  targets = np.concatenate([dec[:, 1:], np.ones((3, 1), np.int32)], axis=1)
  model = EncoderDecoderModel(module, z_loss=0.0, loss_normalizing_factor="sum")
  batch = dict(encoder_input_tokens=enc, decoder_input_tokens=dec,
               decoder_target_tokens=targets,
               decoder_loss_weights=np.ones_like(targets, np.float32))
  grads = jax.grad(lambda p: model.loss_fn(p, batch)[0])(params)
  hf_model.zero_grad()
  logits = hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                    attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                    decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits
  loss = torch.nn.functional.cross_entropy(
      logits.reshape(-1, logits.shape[-1]),
      torch.tensor(targets, dtype=torch.long).reshape(-1), reduction="sum")
  loss.backward()
  sd = dict(hf_model.named_parameters())
  checks = {
      "encoder.block.0.layer.0.SelfAttention.q.weight":
          grads["encoder"]["layers_0"]["attention"]["query"]["kernel"].T,
      "decoder.block.1.layer.1.EncDecAttention.v.weight":
          grads["decoder"]["layers_1"]["encoder_decoder_attention"]["value"]["kernel"].T,
      "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
          grads["decoder"]["relpos_bias"]["rel_embedding"].T,
      "shared.weight": grads["token_embedder"]["embedding"],
      "encoder.final_layer_norm.weight": grads["encoder"]["encoder_norm"]["scale"],
  }
  for key, ours in checks.items():
    ref = sd[key].grad.numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max(), err_msg=key)


def test_greedy_matches_hf_generate(pair):
  _, hf_model, module, params, _ = pair
  enc, _ = _inputs(2)
  model = EncoderDecoderModel(module)
  ours = np.asarray(model.predict_batch(params, {"encoder_input_tokens": enc},
                                        max_decode_length=8))
  with torch.no_grad():
    ref = hf_model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                            attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                            max_new_tokens=8, do_sample=False, num_beams=1,
                            min_length=0).numpy()[:, 1:]
  ref = np.pad(ref, ((0, 0), (0, 8 - ref.shape[1])))
  np.testing.assert_array_equal(ours, ref)


def test_cached_decoding_equals_uncached_and_beam1(pair):
  _, _, module, params, _ = pair
  enc, _ = _inputs(3)
  model = EncoderDecoderModel(module)
  cached = np.asarray(model.predict_batch(params, {"encoder_input_tokens": enc},
                                          max_decode_length=7))
  # Uncached: re-run the full decoder on the growing prefix, argmax each step.
  dec = np.zeros((3, 8), np.int32)
  done = np.zeros(3, bool)
  for i in range(7):
    logits = module.apply({"params": params}, enc, dec[:, :i + 1])
    nxt = np.where(done, 0, np.asarray(logits[:, i]).argmax(-1))
    dec[:, i + 1] = nxt
    done |= nxt == 1
  np.testing.assert_array_equal(cached, dec[:, 1:])
  beam1 = np.asarray(model.predict_batch(params, {"encoder_input_tokens": enc},
                                         method="beam", num_beams=1, alpha=0.0,
                                         max_decode_length=7))
  np.testing.assert_array_equal(beam1, cached)


def test_round_trip_is_exact(pair, tmp_path):
  _, _, module, params, _ = pair
  hf.save_t5(params, module.config, str(tmp_path))
  _, again = hf.load_t5(str(tmp_path))
  flat_a, flat_b = hf._flatten(params), hf._flatten(again)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]))


def test_saved_directory_loads_in_transformers(pair, tmp_path):
  _, hf_model, module, params, _ = pair
  hf.save_t5(params, module.config, str(tmp_path))
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path))
  enc, dec = _inputs(4)
  with torch.no_grad():
    a = reloaded(input_ids=torch.tensor(enc, dtype=torch.long),
                 attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits
    b = hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                 attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits
  np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
