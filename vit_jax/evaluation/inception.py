"""The FID Inception-V3 in Flax: pytorch-fid's port of the 2015 TensorFlow graph that FID and
the Inception Score are defined with, and its released weights.

  python -m vit_jax.evaluation.inception convert pt_inception-2015-12-05-6726825d.pth \
      inception.safetensors          # needs torch; the result loads without it

Which network: torchvision's Inception-V3 with 1008 classes and the FID graph's four
differences (pytorch-fid's FIDInceptionA/C/E_1/E_2): the pool branch of the A, C and E_1
blocks averages without counting the zero padding (TensorFlow's rule), and the last block
(E_2) max-pools. Images NHWC in [0, 1] are resized to 299x299 as torch's
`F.interpolate(bilinear, align_corners=False)` does (two taps, no antialiasing), scaled
to [-1, 1], and run in float32 at full matmul precision (a reduced-precision conv moves
FID). The parameter tree carries pytorch-fid's state-dict names (`Conv2d_1a_3x3/conv`,
`Mixed_5b/branch1x1/bn`, `fc`), so loading the released file is renaming and transposing.

`load_inception(path)` returns an `InceptionFeatures` (vit_jax/evaluation/inception_features.py):
images -> {'pool': [n, 2048], 'logits': [n, 1008], 'logits_unbiased': [n, 1008]}.
"""

import functools
import importlib.util
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import errors
from vit_jax import paths

WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'
WEIGHTS_URL = (
    'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/' + WEIGHTS_NAME
)
CONVERT = f'python -m vit_jax.evaluation.inception convert {WEIGHTS_NAME} inception.safetensors'
SIZE = 299
POOL_DIM = 2048
NUM_CLASSES = 1008
_HIGHEST = jax.lax.Precision.HIGHEST


class BasicConv2d(nn.Module):
  """Conv (no bias) + batch norm (running statistics, eps 1e-3) + ReLU."""

  features: int
  kernel: tuple
  strides: tuple = (1, 1)
  padding: tuple = (0, 0)

  @nn.compact
  def __call__(self, x):
    pad = [(p, p) for p in self.padding]
    x = nn.Conv(
        self.features,
        self.kernel,
        self.strides,
        padding=pad,
        use_bias=False,
        precision=_HIGHEST,
        name='conv',
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _conv(features, kernel, strides=1, padding=0, name=None):
  pair = lambda v: v if isinstance(v, tuple) else (v, v)
  return BasicConv2d(features, pair(kernel), pair(strides), pair(padding), name=name)


def _avg_pool_same(x):
  """3x3 stride-1 average over the pixels inside the image (TensorFlow's SAME average)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride=2, pad=0):
  return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class FIDInceptionA(nn.Module):
  """Mixed_5b..5d: 1x1, 5x5, double 3x3 and pooled branches."""

  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = _conv(64, 1, name='branch1x1')(x)
    b5 = _conv(48, 1, name='branch5x5_1')(x)
    b5 = _conv(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = _conv(64, 1, name='branch3x3dbl_1')(x)
    b3 = _conv(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = _conv(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = _conv(self.pool_features, 1, name='branch_pool')(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: the grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv(384, 3, strides=2, name='branch3x3')(x)
    bd = _conv(64, 1, name='branch3x3dbl_1')(x)
    bd = _conv(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = _conv(96, 3, strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b..6e: factorised 7x7 branches."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = _conv(192, 1, name='branch1x1')(x)
    b7 = _conv(c, 1, name='branch7x7_1')(x)
    b7 = _conv(c, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = _conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = _conv(c, 1, name='branch7x7dbl_1')(x)
    bd = _conv(c, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = _conv(c, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = _conv(c, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = _conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = _conv(192, 1, name='branch_pool')(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: the grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv(192, 1, name='branch3x3_1')(x)
    b3 = _conv(320, 3, strides=2, name='branch3x3_2')(b3)
    b7 = _conv(192, 1, name='branch7x7x3_1')(x)
    b7 = _conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = _conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = _conv(192, 3, strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (average pool, E_1) and Mixed_7c (max pool, E_2: the FID graph's quirk)."""

  max_pool: bool

  @nn.compact
  def __call__(self, x):
    b1 = _conv(320, 1, name='branch1x1')(x)
    b3 = _conv(384, 1, name='branch3x3_1')(x)
    b3 = [
        _conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        _conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3),
    ]
    bd = _conv(448, 1, name='branch3x3dbl_1')(x)
    bd = _conv(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = [
        _conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        _conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd),
    ]
    pooled = _max_pool(x, stride=1, pad=1) if self.max_pool else _avg_pool_same(x)
    bp = _conv(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """[n, 299, 299, 3] in [-1, 1] -> {'pool': [n, 2048], 'logits', 'logits_unbiased'}.

  `logits` is the fc layer (1008 classes); `logits_unbiased` drops its bias, as the Inception
  Score of improved-gan and of ADM's evaluator is computed (pool_3 times the softmax matrix).
  """

  @nn.compact
  def __call__(self, x):
    x = _conv(32, 3, strides=2, name='Conv2d_1a_3x3')(x)
    x = _conv(32, 3, name='Conv2d_2a_3x3')(x)
    x = _conv(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool(x)
    x = _conv(80, 1, name='Conv2d_3b_1x1')(x)
    x = _conv(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool(x)
    for name, pool_features in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
      x = FIDInceptionA(pool_features, name=name)(x)
    x = InceptionB(name='Mixed_6a')(x)
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = FIDInceptionC(c7, name=name)(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = FIDInceptionE(max_pool=False, name='Mixed_7b')(x)
    x = FIDInceptionE(max_pool=True, name='Mixed_7c')(x)
    pool = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, precision=_HIGHEST, name='fc')
    logits = fc(pool)
    unbiased = jnp.dot(pool, fc.variables['params']['kernel'], precision=_HIGHEST)
    return {'pool': pool, 'logits': logits, 'logits_unbiased': unbiased}


def resize_matrix(n_in, n_out=SIZE):
  """[n_out, n_in] weights of torch's 1-D bilinear resize with align_corners=False: source
  coordinate (i + 0.5) * n_in / n_out - 0.5 clamped at 0, two taps, the edge repeated.

  Bit for bit as torch's CPU kernel computes them: a float32 scale and one fused
  multiply-add rounded to float32 (exact here in float64, then rounded once); plain float64
  coordinates put the weights up to 3e-5 off at 320 px.
  """
  f32 = np.float32
  scale = np.float64(f32(n_in) / f32(n_out))
  src = np.maximum((scale * (np.arange(n_out) + 0.5) - 0.5).astype(f32), f32(0))
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = np.clip(src - lo.astype(f32), f32(0), f32(1))
  m = np.zeros((n_out, n_in), f32)
  np.add.at(m, (np.arange(n_out), lo), f32(1) - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m


def preprocess(images):
  """NHWC images in [0, 1] of any size -> [n, 299, 299, 3] in [-1, 1] (resize, then scale,
  as pytorch-fid does)."""
  _, h, w, _ = images.shape
  x = images.astype(jnp.float32)
  if (h, w) != (SIZE, SIZE):
    x = jnp.einsum('oh,nhwc,pw->nopc', resize_matrix(h), x, resize_matrix(w), precision=_HIGHEST)
  return 2 * x - 1


@functools.cache
def abstract_variables():
  """The shapes of {'params', 'batch_stats'} (nothing computed)."""
  model = FIDInceptionV3()
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)))


def _torch_key(collection, path):
  """pytorch-fid's state-dict key and layout of one Flax leaf: (key, transpose or None)."""
  *modules, leaf = path
  prefix = '.'.join(modules)
  if modules[-1] == 'fc':
    return (f'{prefix}.weight', (1, 0)) if leaf == 'kernel' else (f'{prefix}.bias', None)
  if modules[-1] == 'conv':
    return f'{prefix}.weight', (2, 3, 1, 0)  # torch OIHW -> Flax HWIO
  names = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
  return f'{prefix}.{names[leaf]}', None


def _leaves(abstract):
  for collection, tree in abstract.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      yield collection, tuple(p.key for p in path), leaf.shape


def state_dict_shapes():
  """{pytorch-fid state-dict key: torch shape} of every tensor the network needs."""
  out = {}
  for collection, path, shape in _leaves(abstract_variables()):
    key, perm = _torch_key(collection, path)
    out[key] = tuple(shape[i] for i in np.argsort(perm)) if perm else tuple(shape)
  return out


def variables_from_state_dict(state_dict, source='the state dict'):
  """Flax {'params', 'batch_stats'} from pytorch-fid's state dict {key: numpy array}; the
  first missing, unexpected or misshapen key is an error naming it."""
  state_dict = {k: v for k, v in state_dict.items() if not k.endswith('num_batches_tracked')}
  out = {'params': {}, 'batch_stats': {}}
  used = set()
  for collection, path, shape in _leaves(abstract_variables()):
    key, perm = _torch_key(collection, path)
    if key not in state_dict:
      raise errors.UserInputError(
          f'{source} has no {key!r}: it is not the FID Inception ({WEIGHTS_NAME}) state dict'
      )
    value = np.asarray(state_dict[key], np.float32)
    value = value.transpose(perm) if perm and value.ndim == len(perm) else value
    if value.shape != tuple(shape):
      want = tuple(shape[i] for i in np.argsort(perm)) if perm else tuple(shape)
      raise errors.UserInputError(
          f'{source}: {key!r} has shape {tuple(np.shape(state_dict[key]))}, the FID '
          f'Inception needs {want}'
      )
    node = out[collection]
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
    used.add(key)
  extra = sorted(set(state_dict) - used)
  if extra:
    raise errors.UserInputError(
        f'{source} has {len(extra)} keys the FID Inception does not have, first {extra[0]!r}: '
        f'is it the FID weights ({WEIGHTS_NAME})?'
    )
  return out


def check_weights_path(path):
  """One clear error, before anything compiles, when the weights file is missing."""
  if not paths.exists(path):
    raise errors.MissingInputError(
        f'Inception weights {path!r} do not exist; download {WEIGHTS_URL} and give its path '
        f'(reading a .pth needs torch; without torch convert it once where torch is '
        f'installed: {CONVERT})'
    )


def _check_torch(path, converting=False):
  """A .pth without torch: one error with the way out (converting where torch is)."""
  from vit_jax.checkpoints import file_readers

  if path.endswith(file_readers.TORCH_SUFFIXES) and importlib.util.find_spec('torch') is None:
    raise errors.UserInputError(
        f'{path!r} is a PyTorch file and torch is not installed: '
        + (
            'converting it needs torch (pip install torch, or convert where torch is)'
            if converting
            else f'convert it once where torch is installed ({CONVERT}); the result loads '
            'without torch'
        )
    )


def load_variables(path):
  """Flax variables from the released .pth (needs torch), or its .safetensors / .npz."""
  from vit_jax.checkpoints import file_readers

  check_weights_path(path)
  _check_torch(path)
  return variables_from_state_dict(file_readers.read(path), source=f'Inception weights {path!r}')


def load_inception(path, batch=None, mesh=None):
  """The FID Inception with the weights at `path` (local, gs:// or https://), as a callable
  images [n, h, w, 3] in [0, 1] -> {'pool': [n, 2048], 'logits': [n, 1008],
  'logits_unbiased': [n, 1008]} numpy float32, sharded over every device (see
  vit_jax/evaluation/inception_features.py)."""
  from vit_jax.evaluation import inception_features

  return inception_features.InceptionFeatures(load_variables(path), batch=batch, mesh=mesh)


def convert(src, dst):
  """Writes the state dict of `src` (the released .pth; needs torch) as .safetensors or .npz,
  checked against the network first."""
  from vit_jax.checkpoints import file_readers

  check_weights_path(src)
  _check_torch(src, converting=True)
  state_dict = file_readers.read(src)
  variables_from_state_dict(state_dict, source=src)
  state_dict = {
      k: np.ascontiguousarray(v, np.float32)
      for k, v in state_dict.items()
      if not k.endswith('num_batches_tracked')
  }
  if dst.endswith('.npz'):
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **state_dict)
    paths.write_bytes(dst, buffer.getvalue())
  else:
    from safetensors.numpy import save as save_safetensors

    paths.write_bytes(dst, save_safetensors(state_dict))
  return f'{src} -> {dst} ({len(state_dict)} tensors)'


def main(argv):
  if len(argv) != 4 or argv[1] != 'convert':
    raise errors.UserInputError(f'usage: {CONVERT}  (.safetensors or .npz; got {argv[1:]})')
  print(convert(argv[2], argv[3]))


if __name__ == '__main__':
  errors.reporting_user_errors(main)(sys.argv)
