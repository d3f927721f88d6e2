"""The hypernetworks' slot-query attention: chunked over query rows, queries
projected once per step, the same outputs, and less temporary memory."""
import jax
import jax.numpy as jnp
import numpy as np

from hyper_tasks.models.hypernets import common


def _attention(row_chunk, num_heads=4, head_dim=8, out=16):
  return common.Attention(num_heads, head_dim, out, row_chunk=row_chunk)


def _inputs(b=3, n=37, l=11, d=16, seed=0):
  r = np.random.RandomState(seed)
  queries = jnp.asarray(r.randn(n, d), jnp.float32)
  h = jnp.asarray(r.randn(b, l, d), jnp.float32)
  mask = jnp.asarray(r.rand(b, l) > 0.3).at[:, 0].set(True)
  return queries, h, mask


def test_chunked_equals_unchunked_for_shared_and_per_example_queries():
  queries, h, mask = _inputs()
  params = _attention(None).init(jax.random.PRNGKey(0), queries, h, mask)
  whole = _attention(None).apply(params, queries, h, mask)
  assert whole.shape == (3, 37, 16)
  for chunk in (1, 5, 36, 37, 1000):
    np.testing.assert_allclose(
        _attention(chunk).apply(params, queries, h, mask), whole,
        rtol=1e-5, atol=1e-6)
  # Per-example queries [B, Q, D] give the same as the shared ones broadcast.
  batched = jnp.broadcast_to(queries[None], (3,) + queries.shape)
  np.testing.assert_allclose(_attention(5).apply(params, batched, h, mask), whole,
                             rtol=1e-5, atol=1e-6)
  # The mask is honoured: a masked-out key changes nothing.
  h2 = h.at[:, 1].set(jnp.where(mask[:, 1:2], h[:, 1], 100.0))
  np.testing.assert_allclose(_attention(5).apply(params, queries, h2, mask), whole,
                             rtol=1e-5, atol=1e-6)


def test_chunking_reduces_compiled_temporary_memory():
  # HINT-like proportions: many slot rows, a long instruction.
  queries, h, mask = _inputs(b=4, n=4096, l=256, d=32)
  params = _attention(None, num_heads=8, head_dim=16, out=32).init(
      jax.random.PRNGKey(0), queries, h, mask)

  def temp_bytes(chunk):
    fn = jax.jit(lambda p, q, x, m: _attention(
        chunk, num_heads=8, head_dim=16, out=32).apply(p, q, x, m))
    return fn.lower(params, queries, h, mask).compile().memory_analysis(
    ).temp_size_in_bytes

  whole, chunked = temp_bytes(None), temp_bytes(512)
  # Unchunked scores alone are 4 x 8 x 4096 x 256 x 4 bytes = 128 MiB; chunked,
  # everything together stays under a third of that.
  scores = 4 * 8 * 4096 * 256 * 4
  assert whole >= scores
  assert chunked * 3 < scores, (chunked, whole)


def test_chunked_gradients_equal_and_training_memory_is_bounded():
  queries, h, mask = _inputs(b=2, n=2048, l=128, d=32)
  make = lambda chunk: _attention(chunk, num_heads=8, head_dim=16, out=32)
  params = make(None).init(jax.random.PRNGKey(0), queries, h, mask)

  def loss(chunk):
    return lambda p, q, x: jnp.sum(make(chunk).apply(p, q, x, mask) ** 2)

  grads = [jax.grad(loss(c), argnums=(0, 1, 2))(params, queries, h)
           for c in (None, 300)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-4),
               *grads)

  def temp_bytes(chunk):
    fn = jax.jit(jax.grad(loss(chunk)))
    return fn.lower(params, queries, h).compile().memory_analysis(
    ).temp_size_in_bytes

  whole, chunked = temp_bytes(None), temp_bytes(256)
  assert chunked * 3 < whole, (chunked, whole)
