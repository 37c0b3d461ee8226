"""vit_jax.aot: a config's real train step compiled for a TPU topology on this CPU machine
(libtpu's compile-only devices), with the Pallas kernel, its FLOPs and HBM report."""

import os
import subprocess
import sys

import jax
import pytest

from vit_jax import aot
from vit_jax.configs import pit
from vit_jax.perf import hlo_flops
from vit_jax.perf import model_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = 'v5e:2x2'


def _small_pit():
  """The main job's PiT at 16x16 pixels: 256 tokens (gap head), a whole number of the
  kernel's 128-token blocks, so the counted kernel FLOPs are the model's; ring attention
  over a 'seq' axis of 2, each device's work on the Pallas kernel (impl 'auto' on TPU)."""
  config = pit.get_config('fashion_mnist')
  with config.unlocked():
    config.pp.crop = 16
    config.batch = config.batch_eval = 32
    config.mesh.update(data=2, seq=2)
    config.model.transformer.attention = {'impl': 'auto', 'block_size': 128}
    # The recipe's backward for XLA:CPU is off on TPU: its matrix-vector parameter gradients
    # would count as matrix-unit FLOPs beside the model's.
    config.model.transformer.grads_as_dots = False
  return config


@pytest.mark.slow
def test_train_step_compiles_for_tpu_with_ring_attention_on_the_pallas_kernel():
  config = _small_pit()
  devices = aot.topology_devices(TOPOLOGY)
  assert len(devices) == 4 and devices[0].platform == 'tpu'
  assert jax.default_backend() == 'cpu'
  compiled_train, compiled_eval, mesh = aot.compile_steps(config, devices, num_classes=10)
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 1, 'seq': 2}
  text = compiled_train.as_text()
  assert 'collective-permute' in text and 'tpu_custom_call' in text
  assert 'flash_attention' in text
  assert 'flash_mha_bwd_dkv' in text and 'flash_mha_bwd_dq' in text
  forward = model_flops.vit_forward_flops(config.model, 16, 1, 10)
  per_chip_images = config.batch // 4
  counted = hlo_flops.count(compiled_train).flops
  assert counted == pytest.approx(3 * forward * per_chip_images, rel=0.05)
  views = 2 if config.eval_flip else 1  # the run's own eval step: flip TTA is two passes
  assert hlo_flops.count(compiled_eval).flops == pytest.approx(
      views * forward * config.batch_eval // 4, rel=0.05
  )
  result = aot.summarize(TOPOLOGY, 1, devices, mesh, config.batch, compiled_train, compiled_eval)
  train = result['train_step']
  assert train['flops'] == counted and 0 < train['hbm_bytes'] < 16 * 2**30
  assert train['hbm_traffic_bytes'] > train['argument_bytes']  # params read at least once
  assert train['compute_seconds'] == pytest.approx(counted / 197e12)  # v5e's peak
  assert train['memory_seconds'] == pytest.approx(train['hbm_traffic_bytes'] / 819e9)
  assert train['roofline_seconds'] == max(train['compute_seconds'], train['memory_seconds'])
  text = aot.format_report(result)
  assert 'train_step: HBM' in text and 'MFU <=' in text and 'TPU v5e' in text


@pytest.mark.slow
def test_command_exits_with_xla_out_of_memory_message_when_a_step_does_not_fit():
  too_big = subprocess.run(
      [
          sys.executable,
          '-m',
          'vit_jax.aot',
          '--config=configs/pit.py:fashion_mnist',
          f'--topology={TOPOLOGY}',
          f'--config.batch={2**20}',
          f'--config.batch_eval={2**20}',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert too_big.returncode == 1, too_big.stderr[-3000:]
  assert f'Does not fit on {TOPOLOGY}' in too_big.stderr
  assert 'memory' in too_big.stderr.lower() and 'hbm' in too_big.stderr.lower()


@pytest.mark.slow
def test_vae_encode_and_decode_compile_for_tpu_with_the_flops_xla_counts():
  """A small VAE of the same blocks as Stable Diffusion's. Its per-chip FLOPs, counted from
  the TPU program, are at least XLA's own count of the same function compiled for this CPU
  and at most 30 % more: the TPU compiler pads the 3-channel input conv and rewrites the
  strided ones, so it executes somewhat more than the model's FLOPs (here 15 % more)."""
  import jax.numpy as jnp

  from vit_jax.models import vae

  small = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
  devices = aot.topology_devices(TOPOLOGY)
  compiled, mesh = aot.compile_vae(devices, 32, 8, 'float32', small)
  assert dict(mesh.shape)['data'] == 4
  result = aot.summarize_programs(TOPOLOGY, 1, devices, mesh, 8, compiled)
  assert result['steps'] == ['vae_encode', 'vae_decode']
  module = vae.AutoencoderKL(**small)
  images = jnp.zeros((2, 32, 32, 3))  # one chip's share of the batch of 8
  params = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), images)['params']
  latents = jnp.zeros((2, 16, 16, 4))
  for name, method, x in (
      ('vae_encode', module.encode, images),
      ('vae_decode', module.decode, latents),
  ):
    fn = jax.jit(lambda p, x, m=method: module.apply({'params': p}, x, method=m))
    xla = fn.lower(params, x).compile().cost_analysis()['flops']
    assert xla <= result[name]['flops'] <= 1.3 * xla, (name, result[name]['flops'], xla)
    assert 0 < result[name]['hbm_bytes'] < 16 * 2**30
  assert 'vae_decode: HBM' in aot.format_report(result)
  with pytest.raises(ValueError, match='--vae_image_size=33 must be a positive multiple of 2'):
    aot.compile_vae(devices, 33, 8, 'float32', small)
