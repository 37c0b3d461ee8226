"""Hugging Face ViT checkpoints, offline: random weights in transformers' published layout.

`_hf_forward` re-implements ViTModel / ViTForImageClassification in numpy (float64) from the
transformers semantics, independently of vit_jax; the key layout and shapes are written out
here from that source, not taken from vit_jax.checkpoints.hf_format.
"""

import hashlib
import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import param_trees  # tests/param_trees.py
from PIL import Image
import pytest
from safetensors import numpy as st
import scipy.special

from vit_jax import checkpoint
from vit_jax import errors
from vit_jax import inference
from vit_jax.checkpoints import hf_format
from vit_jax.models import VisionTransformer

WIDTH, DEPTH, HEADS, MLP, PATCH, IMAGE, CLASSES = 32, 2, 2, 64, 4, 8, 5
LINEARS = (
    'attention.attention.query',
    'attention.attention.key',
    'attention.attention.value',
    'attention.output.dense',
    'intermediate.dense',
    'output.dense',
)


def _config(**overrides):
  names = [f'class_{i}' for i in range(CLASSES)]
  config = {
      'architectures': ['ViTForImageClassification'],
      'model_type': 'vit',
      'hidden_size': WIDTH,
      'num_hidden_layers': DEPTH,
      'num_attention_heads': HEADS,
      'intermediate_size': MLP,
      'hidden_act': 'gelu',
      'layer_norm_eps': 1e-12,
      'hidden_dropout_prob': 0.0,
      'attention_probs_dropout_prob': 0.0,
      'image_size': IMAGE,
      'patch_size': PATCH,
      'num_channels': 3,
      'qkv_bias': True,
      'id2label': {str(i): n for i, n in enumerate(names)},
      'label2id': {n: i for i, n in enumerate(names)},
  }
  config.update(overrides)
  return config


def _published_keys(prefix='vit.', head=True, pooler=False):
  """The state-dict names transformers' ViT modules create."""
  keys = {prefix + 'embeddings.cls_token', prefix + 'embeddings.position_embeddings'}
  modules = [prefix + 'embeddings.patch_embeddings.projection', prefix + 'layernorm']
  for i in range(DEPTH):
    modules += [
        f'{prefix}encoder.layer.{i}.{m}' for m in LINEARS + ('layernorm_before', 'layernorm_after')
    ]
  modules += [prefix + 'pooler.dense'] * pooler + ['classifier'] * head
  return keys | {f'{m}.{leaf}' for m in modules for leaf in ('weight', 'bias')}


def _published_shape(key):
  """nn.Linear weights are [out, in]; the patch conv is OIHW."""
  tokens = (IMAGE // PATCH) ** 2 + 1
  out_in = {'intermediate.dense': (MLP, WIDTH), 'classifier': (CLASSES, WIDTH)}
  if key.endswith('cls_token'):
    return (1, 1, WIDTH)
  if key.endswith('position_embeddings'):
    return (1, tokens, WIDTH)
  if key.endswith('projection.weight'):
    return (WIDTH, 3, PATCH, PATCH)
  if 'layernorm' in key or key.endswith('projection.bias'):
    return (WIDTH,)
  module, leaf = key.rsplit('.', 1)
  shape = next((s for m, s in out_in.items() if module.endswith(m)), None)
  if module.endswith('.output.dense') and not module.endswith('attention.output.dense'):
    shape = (WIDTH, MLP)
  shape = shape or (WIDTH, WIDTH)
  return shape if leaf == 'weight' else shape[:1]


def _random_state_dict(seed=0, **keys):
  rng = np.random.default_rng(seed)
  sd = {}
  for key in sorted(_published_keys(**keys)):
    shape = _published_shape(key)
    scale, offset = (0.1, 1.0) if 'layernorm' in key and key.endswith('weight') else (0.3, 0.0)
    sd[key] = (offset + scale * rng.standard_normal(shape)).astype(np.float32)
  return sd


def _layer_norm(x, w, b, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * w + b


def _hf_forward(sd, config, images_nchw, prefix='vit.'):
  """transformers' ViT forward pass in numpy: {'logits': ..., 'pooled': ...} as present."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  eps, heads = config['layer_norm_eps'], config['num_attention_heads']
  linear = lambda x, m: x @ sd[m + '.weight'].T + sd.get(m + '.bias', 0.0)
  if config['hidden_act'] == 'gelu':
    act = lambda x: 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))
  else:  # gelu_pytorch_tanh
    act = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
  n, c, h, w = images_nchw.shape
  p, d = config['patch_size'], config['hidden_size']
  patches = images_nchw.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
  conv = sd[prefix + 'embeddings.patch_embeddings.projection.weight'].reshape(d, c * p * p)
  x = (
      patches.reshape(n, -1, c * p * p) @ conv.T
      + sd[prefix + 'embeddings.patch_embeddings.projection.bias']
  )
  cls = np.broadcast_to(sd[prefix + 'embeddings.cls_token'], (n, 1, d))
  x = np.concatenate([cls, x], axis=1) + sd[prefix + 'embeddings.position_embeddings']
  tokens, hd = x.shape[1], d // heads
  for i in range(config['num_hidden_layers']):
    layer = f'{prefix}encoder.layer.{i}.'
    y = _layer_norm(
        x, sd[layer + 'layernorm_before.weight'], sd[layer + 'layernorm_before.bias'], eps
    )
    q, k, v = (
        linear(y, layer + 'attention.attention.' + name)
        .reshape(n, tokens, heads, hd)
        .transpose(0, 2, 1, 3)
        for name in ('query', 'key', 'value')
    )
    probs = scipy.special.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd), axis=-1)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(n, tokens, d)
    x = x + linear(context, layer + 'attention.output.dense')
    y = _layer_norm(
        x, sd[layer + 'layernorm_after.weight'], sd[layer + 'layernorm_after.bias'], eps
    )
    x = x + linear(act(linear(y, layer + 'intermediate.dense')), layer + 'output.dense')
  x = _layer_norm(x, sd[prefix + 'layernorm.weight'], sd[prefix + 'layernorm.bias'], eps)
  out = {}
  if 'classifier.weight' in sd:
    out['logits'] = linear(x[:, 0], 'classifier')
  if prefix + 'pooler.dense.weight' in sd:
    out['pooled'] = np.tanh(linear(x[:, 0], prefix + 'pooler.dense'))
  return out


def _flax_layout(sd):
  """The same weights as transformers' Flax ViT stores them (kernels (in, out), HWIO, scale)."""
  flat = {}
  for key, w in sd.items():
    parts = key.split('.')
    if parts[-1] == 'weight':
      if 'layernorm' in parts[-2]:
        parts[-1] = 'scale'
      else:
        parts[-1], w = 'kernel', w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
    flat['/'.join(parts)] = np.ascontiguousarray(w)
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def _save(folder, sd, config, weights='safetensors'):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / 'config.json').write_text(json.dumps(config))
  if weights == 'safetensors':
    (folder / 'model.safetensors').write_bytes(st.save(sd, metadata={'format': 'pt'}))
  else:
    (folder / 'flax_model.msgpack').write_bytes(
        flax.serialization.msgpack_serialize(_flax_layout(sd))
    )
  return folder


def _images(seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, (2, IMAGE, IMAGE, 3)).astype(np.float32)


def _apply(params, hf):
  model = VisionTransformer(num_classes=hf.num_classes, **hf.model_config)
  return np.asarray(model.apply({'params': params}, _images(), train=False))


def _reference(sd, config, key='logits', prefix='vit.'):
  return _hf_forward(sd, config, _images().transpose(0, 3, 1, 2), prefix)[key]


def test_safetensors_folder_gives_transformers_logits(tmp_path):
  sd, config = _random_state_dict(), _config()
  with_mask = dict(sd, **{'vit.embeddings.mask_token': np.ones((1, 1, WIDTH), np.float32)})
  params = checkpoint.load(_save(tmp_path / 'hf', with_mask, config))
  hf = hf_format.model_config_from_hf(config, params)
  assert hf == hf_format.model_config_from_hf(config)
  assert (hf.num_classes, hf.image_size, hf.num_channels) == (CLASSES, (IMAGE, IMAGE), 3)
  assert hf.class_names == [f'class_{i}' for i in range(CLASSES)]
  assert hf.model_config['transformer']['gelu_approximate'] is False
  assert hf.model_config['transformer']['layer_norm_epsilon'] == 1e-12
  assert hf.model_config['representation_size'] is None
  # Linear [out, in] -> (in, heads, head_dim): the exact reshape, by value.
  query = params['Transformer']['encoderblock_1']['MultiHeadDotProductAttention_0']['query']
  np.testing.assert_array_equal(
      query['kernel'],
      sd['vit.encoder.layer.1.attention.attention.query.weight'].T.reshape(
          WIDTH, HEADS, WIDTH // HEADS
      ),
  )
  np.testing.assert_allclose(_apply(params, hf), _reference(sd, config), atol=1e-5, rtol=1e-5)


def test_flax_msgpack_and_other_files_give_bitwise_same_params(tmp_path):
  sd, config = _random_state_dict(), _config()
  params = checkpoint.load(_save(tmp_path / 'pt', sd, config))
  flax_folder = _save(tmp_path / 'flax', sd, config, weights='msgpack')
  param_trees.assert_same_params(params, checkpoint.load(flax_folder))
  param_trees.assert_same_params(params, checkpoint.load(flax_folder / 'flax_model.msgpack'))
  # Sharded safetensors: an index naming the shard of each tensor.
  sharded = tmp_path / 'sharded'
  sharded.mkdir()
  (sharded / 'config.json').write_text(json.dumps(config))
  names = sorted(sd)
  weight_map = {}
  for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
    shard = f'model-0000{i + 1}-of-00002.safetensors'
    (sharded / shard).write_bytes(st.save({k: sd[k] for k in part}, metadata={'format': 'pt'}))
    weight_map.update(dict.fromkeys(part, shard))
  (sharded / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
  param_trees.assert_same_params(params, checkpoint.load(sharded))
  # A lone file with Hugging Face names and no config.json beside it: heads from num_heads.
  (tmp_path / 'lone.safetensors').write_bytes(st.save(sd))
  np.savez(tmp_path / 'lone.npz', **sd)
  for lone in ('lone.safetensors', 'lone.npz'):
    param_trees.assert_same_params(params, checkpoint.load(tmp_path / lone, num_heads=HEADS))


def _hub_cache(tmp_path, sd, config):
  """huggingface_hub's cache layout (refs, blobs, snapshot symlinks) holding org/vit."""
  repo = tmp_path / 'hub' / 'models--org--vit'
  commit = 'c' * 40
  (repo / 'refs').mkdir(parents=True)
  (repo / 'refs' / 'main').write_text(commit)
  (repo / 'blobs').mkdir()
  (repo / 'snapshots' / commit).mkdir(parents=True)
  for name, data in {
      'config.json': json.dumps(config).encode(),
      'model.safetensors': st.save(sd, metadata={'format': 'pt'}),
  }.items():
    blob = repo / 'blobs' / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    os.symlink(
        os.path.relpath(blob, repo / 'snapshots' / commit), repo / 'snapshots' / commit / name
    )
  return tmp_path / 'hub'


def test_hub_paths_load_offline(tmp_path, monkeypatch):
  """hf://ORG/NAME (the path layer's snapshot folder) and one file of it, from the Hub cache."""
  from huggingface_hub import constants

  sd, config = _random_state_dict(), _config()
  monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(_hub_cache(tmp_path, sd, config)))
  monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
  params = checkpoint.load(_save(tmp_path / 'local', sd, config))
  param_trees.assert_same_params(params, checkpoint.load('hf://org/vit'))
  param_trees.assert_same_params(params, checkpoint.load('hf://org/vit/model.safetensors'))
  assert hf_format.config_for('hf://org/vit') == config
  assert hf_format.config_for('hf://org/vit/model.safetensors') == config


def test_qkv_bias_false_gives_zero_biases(tmp_path):
  config = _config(qkv_bias=False)
  sd = {
      k: v
      for k, v in _random_state_dict().items()
      if not (k.endswith('.bias') and '.attention.attention.' in k)
  }
  params = checkpoint.load(_save(tmp_path / 'hf', sd, config))
  key_bias = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']['key']
  np.testing.assert_array_equal(key_bias['bias'], np.zeros((HEADS, WIDTH // HEADS)))
  hf = hf_format.model_config_from_hf(config, params)
  np.testing.assert_allclose(_apply(params, hf), _reference(sd, config), atol=1e-5, rtol=1e-5)


def test_vit_model_pooler_is_pre_logits(tmp_path):
  config = _config(architectures=['ViTModel'])
  del config['id2label'], config['label2id']
  sd = _random_state_dict(prefix='', head=False, pooler=True)
  params = checkpoint.load(_save(tmp_path / 'hf', sd, config))
  assert 'pre_logits' in params and 'head' not in params
  hf = hf_format.model_config_from_hf(config, params)
  assert hf == hf_format.model_config_from_hf(config)
  assert (hf.num_classes, hf.class_names) == (0, None)
  assert hf.model_config['representation_size'] == WIDTH
  np.testing.assert_allclose(
      _apply(params, hf), _reference(sd, config, 'pooled', prefix=''), atol=1e-5, rtol=1e-5
  )
  # Next to a classifier the pooler is unused by transformers, so it is not loaded.
  sd = _random_state_dict(pooler=True)
  params = checkpoint.load(_save(tmp_path / 'both', sd, _config()))
  assert 'pre_logits' not in params
  hf = hf_format.model_config_from_hf(_config(), params)
  np.testing.assert_allclose(_apply(params, hf), _reference(sd, _config()), atol=1e-5, rtol=1e-5)


def test_export_writes_the_published_layout(tmp_path):
  sd, config = _random_state_dict(), _config()
  params = checkpoint.load(_save(tmp_path / 'hf', sd, config))
  hf = hf_format.model_config_from_hf(config, params)
  out = tmp_path / 'export'
  names = [f'label {i}' for i in range(CLASSES)]
  checkpoint.export_hf(params, hf.model_config, out, class_names=names)
  exported = st.load((out / 'model.safetensors').read_bytes())
  assert set(exported) == _published_keys()
  for key, value in exported.items():
    assert value.shape == _published_shape(key), key
    np.testing.assert_array_equal(value, sd[key], err_msg=key)  # bitwise round trip
  from safetensors import safe_open

  with safe_open(str(out / 'model.safetensors'), framework='np') as f:
    assert f.metadata() == {'format': 'pt'}
  written = json.loads((out / 'config.json').read_text())
  assert written['architectures'] == ['ViTForImageClassification']
  for field in (
      'model_type',
      'hidden_size',
      'num_hidden_layers',
      'num_attention_heads',
      'intermediate_size',
      'hidden_act',
      'layer_norm_eps',
      'image_size',
      'patch_size',
      'num_channels',
      'qkv_bias',
  ):
    assert written[field] == config[field], field
  assert written['id2label'] == {str(i): n for i, n in enumerate(names)}
  assert written['label2id'] == {n: i for i, n in enumerate(names)}
  np.testing.assert_allclose(
      _reference(exported, written), _apply(params, hf), atol=1e-5, rtol=1e-5
  )
  param_trees.assert_same_params(params, checkpoint.load(out))


def test_export_tanh_gelu_and_default_epsilon(tmp_path):
  model_config = {
      'patches': {'size': (PATCH, PATCH)},
      'hidden_size': WIDTH,
      'transformer': {'num_layers': DEPTH, 'mlp_dim': MLP, 'num_heads': HEADS},
      'classifier': 'token',
      'representation_size': None,
  }
  model = VisionTransformer(num_classes=CLASSES, **model_config)
  images = _images()
  shapes = param_trees.flat(model.init(jax.random.PRNGKey(0), images, train=False)['params'])
  rng = np.random.default_rng(3)
  params = flax.traverse_util.unflatten_dict(
      {
          tuple(k.split('/')): (0.3 * rng.standard_normal(v.shape)).astype(np.float32)
          for k, v in shapes.items()
      }
  )
  config = hf_format.export(params, model_config, tmp_path / 'export')
  assert (config['hidden_act'], config['layer_norm_eps']) == ('gelu_pytorch_tanh', 1e-6)
  assert config['id2label'] == {str(i): f'LABEL_{i}' for i in range(CLASSES)}
  logits = np.asarray(model.apply({'params': params}, images, train=False))
  exported = st.load((tmp_path / 'export' / 'model.safetensors').read_bytes())
  np.testing.assert_allclose(_reference(exported, config), logits, atol=1e-5, rtol=1e-5)
  hf = hf_format.model_config_from_hf(config)
  assert hf.model_config['transformer']['gelu_approximate'] is True
  assert hf.model_config['transformer']['layer_norm_epsilon'] == 1e-6
  np.testing.assert_allclose(_apply(checkpoint.load(tmp_path / 'export'), hf), logits, atol=1e-6)


@pytest.mark.parametrize('model_type', ['deit', 'swin'])
def test_other_architectures_are_clear_errors(tmp_path, model_type):
  config = _config(model_type=model_type)
  with pytest.raises(errors.UserInputError, match=f"model_type '{model_type}'"):
    hf_format.model_config_from_hf(config)
  with pytest.raises(errors.UserInputError, match=f"model_type '{model_type}'"):
    checkpoint.load(_save(tmp_path / 'hf', _random_state_dict(), config))


def test_bad_checkpoints_are_clear_errors(tmp_path):
  sd = _random_state_dict()
  bad = dict(sd, **{'decoder.0.weight': np.zeros((48, WIDTH, 1, 1), np.float32)})
  with pytest.raises(errors.UserInputError, match=r"unknown Hugging Face ViT key 'decoder"):
    checkpoint.load(_save(tmp_path / 'unknown', bad, _config()))
  incomplete = {k: v for k, v in sd.items() if k != 'vit.encoder.layer.1.output.dense.bias'}
  with pytest.raises(errors.UserInputError, match=r'vit\.encoder\.layer\.1\.output\.dense\.bias'):
    checkpoint.load(_save(tmp_path / 'incomplete', incomplete, _config()))
  with pytest.raises(errors.UserInputError, match="hidden_act='relu'"):
    hf_format.model_config_from_hf(_config(hidden_act='relu'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(errors.MissingInputError, match='no config.json'):
    checkpoint.load(tmp_path / 'empty')
  (tmp_path / 'empty' / 'config.json').write_text(json.dumps(_config()))
  with pytest.raises(errors.MissingInputError, match='no weights'):
    checkpoint.load(tmp_path / 'empty')


@pytest.mark.parametrize(
    'change,match',
    [
        ({'representation_size': WIDTH}, 'pre_logits'),
        ({'classifier': 'gap'}, "classifier='gap'"),
        ({'posemb': 'sincos2d'}, 'posemb'),
        ({'resnet': {'num_layers': (1,), 'width_factor': 1}}, 'ResNet'),
        (None, 'no classification head'),
    ],
)
def test_export_refuses_what_vit_for_image_classification_lacks(tmp_path, change, match):
  params = checkpoint.load(_save(tmp_path / 'hf', _random_state_dict(), _config()))
  model_config = dict(hf_format.model_config_from_hf(_config(), params).model_config)
  if change is None:
    del params['head']
  else:
    model_config.update(change)
  if 'representation_size' in (change or {}):
    params['pre_logits'] = {'kernel': np.zeros((WIDTH, WIDTH)), 'bias': np.zeros(WIDTH)}
  with pytest.raises(errors.UserInputError, match=match):
    checkpoint.export_hf(params, model_config, tmp_path / 'out')
  assert not (tmp_path / 'out').exists()


def test_inference_builds_the_model_from_config_json_and_prints_its_labels(tmp_path):
  """`vit_jax.inference --checkpoint=hf://org/vit IMAGE`, no --model: erf GELU, eps 1e-12,
  the checkpoint's image size and id2label names, the reference's top class."""
  names = [f'{w} label' for w in ('first', 'second', 'third', 'fourth', 'fifth')]
  config = _config(
      id2label={str(i): n for i, n in enumerate(names)},
      label2id={n: i for i, n in enumerate(names)},
  )
  sd = _random_state_dict()
  model, params, size, channels, class_names = inference.build(_save(tmp_path / 'f', sd, config))
  assert (size, channels, class_names) == (IMAGE, 3, names)
  assert model.transformer['layer_norm_epsilon'] == 1e-12
  assert model.transformer['gelu_approximate'] is False
  logits = np.asarray(model.apply({'params': params}, _images(), train=False))
  np.testing.assert_allclose(logits, _reference(sd, config), atol=1e-5, rtol=1e-5)
  image = tmp_path / 'image.png'
  Image.fromarray(((_images()[0] + 1) * 127.5).round().astype(np.uint8)).save(image)
  env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      HF_HUB_OFFLINE='1',
      HF_HUB_CACHE=str(_hub_cache(tmp_path, sd, config)),
  )
  cli = subprocess.run(
      [
          sys.executable,
          '-m',
          'vit_jax.inference',
          '--checkpoint=hf://org/vit',
          '--top_k=3',
          str(image),
      ],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert cli.returncode == 0, cli.stderr[-3000:]
  pixels = np.asarray(Image.open(image), np.float32)[None] / 127.5 - 1
  expected = _hf_forward(sd, config, pixels.transpose(0, 3, 1, 2))['logits'][0]
  lines = cli.stdout.splitlines()
  assert lines[0] == str(image) and len(lines) == 4
  assert lines[1].split(maxsplit=1)[1] == names[int(np.argmax(expected))]
