"""The top-level network: a T5 backbone plus, optionally, a hypernetwork or learned PEFT.

One flax module so that the parameter tree is the t5x one (``token_embedder``,
``encoder``, ``decoder``) with the hypernetwork under ``hypernet/`` and learned PEFT
under ``peft/``. Methods mirror the stages of HINT:

  ``encode_instruction``  instruction tokens -> ``Adaptation``   (once per task)
  ``encode``              instance tokens (+ Adaptation) -> encoder states
  ``decode``              decoder tokens -> logits, optionally one cached step at a time
  ``__call__``            all three, for training and scoring

With no hypernetwork and an empty spec this is plain T5, and
``apply({"params": p}, encoder_input_tokens, decoder_input_tokens)`` returns logits.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyper_tasks.models.adaptation import Adaptation
from hyper_tasks.models.config import T5Config
from hyper_tasks.models.layers import Embed
from hyper_tasks.models.peft.prompt import prepend_prompt
from hyper_tasks.models.peft.static import StaticPeft
from hyper_tasks.models.peft_spec import PeftSpec
from hyper_tasks.models.t5 import Decoder, Encoder


def expand_groups(adaptation: Optional[Adaptation], batch: int
                  ) -> Optional[Adaptation]:
  """A batched adaptation of ``n`` rows for ``batch`` examples: row ``i`` serves
  examples ``i * g .. i * g + g - 1`` (``g = batch / n``)."""
  if adaptation is None or not adaptation.batched:
    return adaptation
  leaves = jax.tree.leaves(adaptation)
  if not leaves:
    return adaptation
  n = leaves[0].shape[0]
  if n == batch:
    return adaptation
  if batch % n:
    raise ValueError(f"An adaptation (or instruction batch) of {n} rows cannot "
                     f"serve {batch} examples: the batch must be a multiple of it.")
  return adaptation.repeat(batch // n)


class Transformer(nn.Module):
  """T5 encoder-decoder with hook points for generated or learned adaptations.

  Attributes:
    config: backbone architecture.
    peft_spec: which adaptation slots exist (empty = none).
    hypernet: a hypernetwork module (see ``hyper_tasks.models.hypernets``) that maps
      the encoded instruction to the spec's slot tree; None for no hypernetwork.
    static_peft: learn the slots directly under ``peft/`` instead (static baseline).
    instruction_fusion: the decoder cross-attends to ``[instruction; input]`` (HINT);
      the instruction's keys/values are computed once per task by
      ``encode_instruction`` (``Adaptation.cross_kv``).
    no_instruction: the no-instruction control: the hypernetwork always reads a
      fixed one-token instruction (EOS) whatever the batch holds, in training and
      evaluation alike.
  """
  config: T5Config
  peft_spec: PeftSpec = PeftSpec()
  hypernet: Optional[nn.Module] = None
  static_peft: bool = False
  instruction_fusion: bool = False
  no_instruction: bool = False

  def setup(self):
    cfg = self.config
    if self.static_peft and self.hypernet is not None:
      raise ValueError("Choose either a hypernetwork or static (learned) PEFT.")
    scales = self.peft_spec.lora_scales()
    self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, cfg.dtype)
    act = self.peft_spec.adapter_activation
    self.encoder = Encoder(cfg, scales, act)
    self.decoder = Decoder(cfg, scales, act)
    if self.static_peft and not self.peft_spec.is_empty:
      self.peft = StaticPeft(cfg, self.peft_spec)

  @property
  def uses_instruction(self) -> bool:
    return self.hypernet is not None

  # -- stage 1: the instruction ---------------------------------------------------
  def encode_instruction(self, hyper_encoder_input_tokens, enable_dropout=False):
    """Instruction tokens ``[B, Lh]`` -> batched ``Adaptation``.

    The instruction encoder is the backbone's own encoder with every adaptation off
    (shared weights), unless the hypernetwork brings its own (``hypernet/encoder``).
    """
    if self.hypernet is None:
      raise ValueError("This model has no hypernetwork; it takes no instruction.")
    det = not enable_dropout
    if self.no_instruction:
      b = hyper_encoder_input_tokens.shape[0]
      hyper_encoder_input_tokens = jnp.full((b, 1), self.config.eos_id, jnp.int32)
    mask = hyper_encoder_input_tokens > 0
    x = self.token_embedder(hyper_encoder_input_tokens)
    if getattr(self.hypernet, "has_encoder", False):
      h = self.hypernet.encode(x, mask, deterministic=det)
    else:
      h = self.encoder(x, mask, adaptation=None, deterministic=det)
    params = self.hypernet(h, mask, deterministic=det)
    if self.instruction_fusion:
      # The instruction's cross-attention keys/values depend only on the task:
      # project them here, once, with the generated k/v LoRA/IA3 of the cross sites.
      return self.cache_instruction_kv(Adaptation(params, h, mask, batched=True))
    return Adaptation(params, batched=True)

  def cache_instruction_kv(self, adaptation: Adaptation) -> Adaptation:
    """``adaptation`` with ``cross_kv`` computed from its fused ``instruction``.

    Per task (``[Lh, D]``) or per example (``[B, Lh, D]``); keys/values come out
    ``[B?, Lh, H*K]`` per decoder layer. Use it on an adaptation that carries the
    instruction but not its keys/values (e.g. reloaded from an export) to skip
    re-projecting the instruction for every instance. Unchanged without an
    instruction.
    """
    if adaptation is None or adaptation.instruction is None:
      return adaptation
    instr = adaptation.instruction.astype(self.config.dtype)
    if adaptation.batched:
      return adaptation.replace(cross_kv=self.decoder.instruction_kv(instr,
                                                                     adaptation))
    kv = self.decoder.instruction_kv(instr[None], adaptation)
    return adaptation.replace(cross_kv=jax.tree.map(lambda x: x[0], kv))

  def static_adaptation(self) -> Optional[Adaptation]:
    if not (self.static_peft and not self.peft_spec.is_empty):
      return None
    return Adaptation(self.peft(), batched=False)

  def resolve_adaptation(self, hyper_encoder_input_tokens=None, adaptation=None,
                         enable_dropout=False) -> Optional[Adaptation]:
    """The adaptation to run with: given > generated from the instruction > learned."""
    if adaptation is not None:
      return adaptation
    if self.hypernet is not None:
      if hyper_encoder_input_tokens is None:
        raise ValueError("This model needs `hyper_encoder_input_tokens` (the "
                         "instruction) or a precomputed `adaptation`.")
      return self.encode_instruction(hyper_encoder_input_tokens, enable_dropout)
    return self.static_adaptation()

  # -- stage 2: the instance ------------------------------------------------------
  def encode(self, encoder_input_tokens, adaptation=None, encoder_segment_ids=None,
             encoder_positions=None, enable_dropout=False):
    """Instance tokens ``[B, Li]`` -> (states ``[B, Le, D]``, mask ``[B, Le]``).

    ``Le = P + Li`` with a prompt. With instruction fusion the decoder also attends
    to the instruction: through its cached keys/values (``adaptation.cross_kv``,
    prepended in each cross-attention), or, for an adaptation without them, by
    concatenating the instruction states here (``Le`` grows by ``Lh``).
    """
    mask = encoder_input_tokens > 0
    x = self.token_embedder(encoder_input_tokens)
    n = x.shape[1]
    x, mask = prepend_prompt(x, mask, adaptation)
    if x.shape[1] != n and encoder_segment_ids is not None:
      raise ValueError("Packed inputs cannot be combined with prompt tuning.")
    encoded = self.encoder(x, mask, encoder_positions, encoder_segment_ids,
                           adaptation, deterministic=not enable_dropout)
    if adaptation is not None and (adaptation.instruction is not None or
                                   adaptation.cross_kv is not None):
      if encoder_segment_ids is not None:
        raise ValueError("Packed inputs cannot be combined with instruction fusion.")
      if adaptation.cross_kv is not None:
        return encoded, mask  # the decoder prepends the cached keys/values
      instr, imask = adaptation.instruction, adaptation.instruction_mask
      if instr.ndim == 2:
        b = encoded.shape[0]
        instr = jnp.broadcast_to(instr[None], (b,) + instr.shape)
        imask = jnp.broadcast_to(imask[None], (b,) + imask.shape)
      encoded = jnp.concatenate([instr.astype(encoded.dtype), encoded], axis=1)
      mask = jnp.concatenate([imask, mask], axis=1)
    return encoded, mask

  def decode(self, encoded, encoder_mask, decoder_input_tokens, adaptation=None,
             decoder_positions=None, decoder_segment_ids=None,
             encoder_segment_ids=None, enable_dropout=False, decode=False,
             max_decode_length=None):
    """Decoder tokens ``[B, Lt]`` -> logits ``[B, Lt, vocab]`` (``Lt = 1`` cached)."""
    y = self.token_embedder(decoder_input_tokens)
    return self.decoder(y, encoded, encoder_mask, self.token_embedder,
                        decoder_positions, decoder_segment_ids, encoder_segment_ids,
                        adaptation, deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens, decoder_input_tokens,
               hyper_encoder_input_tokens=None, adaptation=None,
               enable_dropout=False, encoder_segment_ids=None,
               decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None):
    """Teacher-forced logits ``[B, Lt, vocab]``.

    ``hyper_encoder_input_tokens`` is ``[B, Lh]`` (an instruction per example) or
    ``[B / g, Lh]``: one instruction per group of ``g`` consecutive examples
    (``pipeline.get_dataset(instruction_group_size=g)``), encoded once and repeated,
    so the hypernetwork runs ``B / g`` times per batch. Likewise a batched
    ``adaptation`` of ``B / g`` rows.
    """
    adaptation = self.resolve_adaptation(hyper_encoder_input_tokens, adaptation,
                                         enable_dropout)
    adaptation = expand_groups(adaptation, encoder_input_tokens.shape[0])
    encoded, mask = self.encode(encoder_input_tokens, adaptation,
                                encoder_segment_ids, encoder_positions, enable_dropout)
    return self.decode(encoded, mask, decoder_input_tokens, adaptation,
                       decoder_positions, decoder_segment_ids, encoder_segment_ids,
                       enable_dropout)
