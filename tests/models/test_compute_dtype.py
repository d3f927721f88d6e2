"""Accelerator runs compute in bfloat16 by default (the model's dtype 'auto');
parameters stay float32."""
import jax.numpy as jnp

from hyper_tasks.models import builders


def test_auto_compute_dtype_is_bfloat16_on_accelerators_only():
  assert builders.resolve_compute_dtype("auto", backend="gpu") == "bfloat16"
  assert builders.resolve_compute_dtype("auto", backend="tpu") == "bfloat16"
  assert builders.resolve_compute_dtype("auto", backend="cpu") is None
  assert builders.resolve_compute_dtype(None, backend="gpu") is None
  assert builders.resolve_compute_dtype("float32", backend="tpu") == "float32"


def test_compute_dtype_changes_the_computation_not_the_parameters():
  model = builders.make_model(size="tiny", hypernet="none")
  bf16 = builders.make_model(size="tiny", hypernet="none",
                             dtype=builders.resolve_compute_dtype("auto",
                                                                  backend="tpu"))
  assert bf16.config.dtype == jnp.bfloat16 and model.config.dtype == jnp.float32
  import jax  # pylint: disable=g-import-not-at-top
  shapes = {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4),
            "hyper_encoder_input_tokens": (1, 4)}
  params = jax.eval_shape(lambda k: bf16.get_initial_variables(k, shapes)["params"],
                          jax.random.PRNGKey(0))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
