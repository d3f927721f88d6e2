"""Mixed-task batches (per-example adaptations gathered from the task cache) give
the outputs of batching task by task (one broadcast adaptation per task)."""
import numpy as np
import pytest

from hyper_tasks.data import features as F
from hyper_tasks.evaluation import batching
from hyper_tasks.evaluation import mixed_batches
from hyper_tasks.models import config as config_lib
from hyper_tasks.models.cache import AdaptationCache
from hyper_tasks.models.hypernets import make_hypernet
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.peft_spec import AdapterSpec, LoraSpec, PeftSpec
from hyper_tasks.models.transformer import Transformer
from tests.evaluation import evallib

LENGTHS = {"hyper_inputs": 16, "inputs": 8, "targets": 4}
INSTRUCTIONS = ["Write aa.", "Count the words.", "Say no.", "Repeat it twice."]
BATCH = 4


@pytest.fixture(scope="module")
def setup():
  cfg = config_lib.preset("t5_1_1", "tiny", vocab_size=260, dropout_rate=0.0,
                          num_encoder_layers=1, num_decoder_layers=1)
  spec = PeftSpec(adapter=AdapterSpec(size=4), lora=LoraSpec(ranks=(("q", 2),)))
  hypernet = make_hypernet("hint", cfg, spec, dropout_rate=0.0, small_init=1.0)
  model = EncoderDecoderModel(Transformer(cfg, spec, hypernet,
                                          instruction_fusion=True))
  params = evallib.random_params(model)
  rng = np.random.default_rng(0)
  records = [{F.HYPER_INPUTS: INSTRUCTIONS[t], F.TASK_NAMES: f"task{t}",
              F.INPUTS: " ".join(rng.choice(["x", "yz", "wq"], 3)),
              F.TARGETS: "ab"}
             for t in range(len(INSTRUCTIONS)) for _ in range(2 + t % 2)]
  stream = mixed_batches.interleave(records, seed=0)
  arrays = batching.encode_records(stream, "byte", LENGTHS).arrays
  return model, params, arrays


@pytest.mark.parametrize("method", ["score", "greedy"])
def test_mixed_equals_task_by_task(setup, method):
  model, params, arrays = setup
  hyper = arrays[F.HYPER_ENCODER_INPUT_TOKENS]
  batches = batching.make_batches(np.arange(len(hyper)), BATCH, hyper)
  assert sum(not b.homogeneous for b in batches) >= 3  # tasks really mixed
  cache = AdaptationCache(model, params)
  kwargs = {"method": method, "max_decode_length": 4}
  mixed = mixed_batches.run_mixed(model, params, arrays, cache, BATCH, **kwargs)
  grouped = mixed_batches.run_task_by_task(model, params, arrays, cache, BATCH,
                                           **kwargs)
  assert cache.hypernet_runs == len(INSTRUCTIONS)  # one run per task, ever
  assert mixed.shape[0] == len(hyper)
  if method == "greedy":
    np.testing.assert_array_equal(mixed, grouped)
  else:  # shared vs per-example matmuls: another float summation order
    np.testing.assert_allclose(mixed, grouped, rtol=1e-5, atol=1e-5)
  # The same per-task adaptations in per-example form: bitwise the same.
  exact = mixed_batches.run_task_by_task(model, params, arrays, cache, BATCH,
                                         broadcast=False, **kwargs)
  np.testing.assert_array_equal(mixed, exact)
  if method == "score":
    # Not trivially equal: each task's adaptation changes its rows' scores.
    first = batches[0].indices
    assert len({hyper[i].tobytes() for i in first}) > 1
    fn = mixed_batches._fn(model, "score", 4)  # pylint: disable=protected-access
    one_adapter = np.asarray(fn(params, {k: arrays[k][first] for k in
                                         mixed_batches.MODEL_KEYS},
                                cache.get_task(hyper[first[0]])))
    assert np.max(np.abs(one_adapter - mixed[first])) > 1e-3


def test_benchmark_reports_both_throughputs(setup):
  model, params, arrays = setup
  out = mixed_batches.benchmark(model, params, arrays, BATCH, repeats=1)
  assert out["outputs_equal"] and out["instructions"] == len(INSTRUCTIONS)
  assert out["mixed_examples_per_s"] > 0 and out["task_by_task_examples_per_s"] > 0


def test_needs_instructions(setup):
  model, params, arrays = setup
  with pytest.raises(ValueError, match="hyper_encoder_input_tokens"):
    mixed_batches.run_mixed(model, params, {F.ENCODER_INPUT_TOKENS: arrays[
        F.ENCODER_INPUT_TOKENS]}, AdaptationCache(model, params), BATCH)
