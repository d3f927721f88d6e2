"""Autoregressive decoding over a key/value cache: greedy, temperature sampling, beam.

All three drive a ``step_fn(tokens [N, 1], cache, step) -> (logits [N, V], cache)``
(``N = batch * beams`` for beam search) inside ``lax.while_loop``, so one compiled
program decodes the whole batch. Finished rows emit padding (0) after EOS, like HF.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

NEG_INF = -1.0e7


def sample_decode(step_fn: Callable, cache, batch_size: int, max_len: int,
                  eos_id: int = 1, start_id: int = 0, temperature: float = 0.0,
                  rng=None, topk: int = 0):
  """Greedy (``temperature == 0``) or temperature sampling.

  Returns:
    tokens ``[B, max_len]`` (without the start token), zeros after EOS.
  """
  if temperature > 0 and rng is None:
    raise ValueError("Temperature sampling needs an rng.")
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def cond(state):
    i, _, _, done, _, _ = state
    return (i < max_len) & ~jnp.all(done)

  def body(state):
    i, cur, out, done, cache, rng = state
    logits, cache = step_fn(cur[:, None], cache, i)
    logits = logits.astype(jnp.float32)
    if temperature > 0:
      rng, sub = jax.random.split(rng)
      if topk:
        kth = jax.lax.top_k(logits, topk)[0][:, -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
      nxt = jax.random.categorical(sub, logits / temperature, axis=-1)
    else:
      nxt = jnp.argmax(logits, axis=-1)
    nxt = jnp.where(done, 0, nxt).astype(jnp.int32)
    out = out.at[:, i].set(nxt)
    done = done | (nxt == eos_id)
    return i + 1, nxt, out, done, cache, rng

  state = (jnp.array(0), jnp.full((batch_size,), start_id, jnp.int32),
           jnp.zeros((batch_size, max_len), jnp.int32),
           jnp.zeros((batch_size,), bool), cache, rng)
  return jax.lax.while_loop(cond, body, state)[2]


def brevity_penalty(alpha: float, length):
  """t5x/GNMT length penalty ``((5 + len) / 6) ** alpha``."""
  return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree, beam_idx, batch_size: int, beams: int):
  """Reorder ``[B * beams, ...]`` leaves by ``beam_idx`` ``[B, beams]``."""
  flat_idx = (jnp.arange(batch_size)[:, None] * beams + beam_idx).reshape(-1)

  def g(x):
    if x.ndim == 0:
      return x
    return jnp.take(x, flat_idx, axis=0)
  return jax.tree.map(g, tree)


def beam_search(step_fn: Callable, cache, batch_size: int, beams: int, max_len: int,
                eos_id: int = 1, start_id: int = 0, alpha: float = 0.6):
  """Beam search with a GNMT length penalty; ``cache`` rows are ``[B * beams, ...]``.

  Finished hypotheses are scored ``logprob / brevity_penalty(alpha, length)``. The
  search stops early once no live beam can beat the worst finished one (exact for
  ``alpha = 0``, where beam 1 equals greedy).

  Returns:
    (tokens ``[B, beams, max_len]`` best first, scores ``[B, beams]``).
  """
  b, k = batch_size, beams
  live_seqs = jnp.zeros((b, k, max_len), jnp.int32)
  # Only the first beam is alive at the start, so the first step does not pick k
  # copies of the same token.
  live_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (b, 1))
  fin_seqs = jnp.zeros((b, k, max_len), jnp.int32)
  fin_scores = jnp.full((b, k), NEG_INF)
  cur = jnp.full((b * k,), start_id, jnp.int32)

  def cond(state):
    i, _, live_lp, _, fin_scores, _, _ = state
    best_possible = live_lp[:, 0] / brevity_penalty(alpha, max_len if alpha > 0 else 1)
    worst_fin = jnp.min(fin_scores, axis=1)
    can_improve = jnp.any(best_possible > worst_fin) | jnp.any(fin_scores <= NEG_INF)
    return (i < max_len) & can_improve

  def body(state):
    i, live_seqs, live_lp, fin_seqs, fin_scores, cur, cache = state
    logits, cache = step_fn(cur[:, None], cache, i)
    v = logits.shape[-1]
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, v)
    cand = (live_lp[:, :, None] + lp).reshape(b, k * v)
    top_lp, top_idx = jax.lax.top_k(cand, 2 * k)
    beam_idx, token = top_idx // v, (top_idx % v).astype(jnp.int32)
    seqs = jnp.take_along_axis(live_seqs, beam_idx[:, :, None], axis=1)
    seqs = seqs.at[:, :, i].set(token)
    is_eos = token == eos_id
    # Alive: the best k candidates that did not end.
    alive_lp = jnp.where(is_eos, NEG_INF, top_lp)
    a_lp, a_pos = jax.lax.top_k(alive_lp, k)
    new_live_seqs = jnp.take_along_axis(seqs, a_pos[:, :, None], axis=1)
    new_beam_idx = jnp.take_along_axis(beam_idx, a_pos, axis=1)
    new_cur = jnp.take_along_axis(token, a_pos, axis=1).reshape(-1)
    cache = _gather_beams(cache, new_beam_idx, b, k)
    # Finished: merge candidates that ended with the previous finished set.
    f_scores = jnp.where(is_eos, top_lp / brevity_penalty(alpha, i + 1), NEG_INF)
    all_scores = jnp.concatenate([fin_scores, f_scores], axis=1)
    all_seqs = jnp.concatenate([fin_seqs, seqs], axis=1)
    fin_scores, f_pos = jax.lax.top_k(all_scores, k)
    fin_seqs = jnp.take_along_axis(all_seqs, f_pos[:, :, None], axis=1)
    return i + 1, new_live_seqs, a_lp, fin_seqs, fin_scores, new_cur, cache

  state = (jnp.array(0), live_seqs, live_lp, fin_seqs, fin_scores, cur, cache)
  _, live_seqs, live_lp, fin_seqs, fin_scores, _, _ = jax.lax.while_loop(
      cond, body, state)
  # Rows with no finished hypothesis fall back to their live beams.
  none_fin = jnp.all(fin_scores <= NEG_INF, axis=1)
  live_scores = live_lp / brevity_penalty(alpha, max_len)
  seqs = jnp.where(none_fin[:, None, None], live_seqs, fin_seqs)
  scores = jnp.where(none_fin[:, None], live_scores, fin_scores)
  return seqs, scores
