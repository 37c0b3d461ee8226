"""Classify images with a checkpoint, or time the forward pass.

  python -m vit_jax.inference --checkpoint=ViT-B_16.npz cat.jpg dog.png
  python -m vit_jax.inference --checkpoint=hf://google/vit-base-patch16-224 cat.jpg
  python -m vit_jax.inference --checkpoint=ViT-B_16.npz --model=ViT-B_16 --benchmark
  python -m vit_jax.inference --checkpoint=/tmp/vit shoe.png   # a training workdir

A training workdir (local or gs://) classifies with its newest checkpoint (or --step), the
model and class names of its config.json (vit_jax/trained_run.py), at its crop size.

Resolution follows the checkpoint (its position-embedding grid times the patch size) unless
--image_size is given; images are resized to it and scaled to [-1, 1] as in training.
"""

import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vit_jax import checkpoint
from vit_jax import cli
from vit_jax import errors
from vit_jax import paths
from vit_jax.checkpoints import architecture
from vit_jax.checkpoints import hf_format
from vit_jax.checkpoints import trained_run
from vit_jax.configs import models as model_configs
from vit_jax.datasets import class_names as labels_lib
from vit_jax.models import layer_stack
from vit_jax.models import resnet
from vit_jax.models import VisionTransformer

flags.DEFINE_string(
    'checkpoint',
    None,
    'npz / safetensors / msgpack file, Hugging Face '
    'folder or training workdir: local, gs://, https:// or hf://ORG/NAME.',
)
flags.DEFINE_integer(
    'step', None, 'The checkpoint step of a training workdir; default: its ' 'newest.'
)
flags.DEFINE_string(
    'model',
    None,
    'A configs/models.py name; default: the model the '
    'checkpoint implies (its config.json, or its parameter shapes).',
)
flags.DEFINE_integer('image_size', 0, 'Input resolution; 0 = from the checkpoint.')
flags.DEFINE_string(
    'labels',
    None,
    "'imagenet1k', 'fashion_mnist' or a file; default: the "
    "checkpoint's own names, else ImageNet's for 1000 classes.",
)
flags.DEFINE_bool(
    'exact_gelu',
    None,
    'erf GELU instead of tanh; default: erf for timm and '
    'Hugging Face files (as trained), tanh for Google ones.',
)
flags.DEFINE_bool(
    'scan_layers',
    False,
    'Run the encoder blocks under nn.scan (one block '
    'compiled, whatever the depth); the same numbers.',
)
flags.DEFINE_integer('top_k', 5, 'How many classes to print per image.')
flags.DEFINE_bool('benchmark', False, 'Time the jitted forward pass instead.')
flags.DEFINE_integer('steps', 10, 'Timed steps for --benchmark (after one warm-up step).')
flags.DEFINE_integer('batch', 8, 'Batch size for --benchmark.')
FLAGS = flags.FLAGS


def _model_config(params, fmt, hf, model_name, exact_gelu):
  """The model config: the registry's for `model_name`, else the one the checkpoint implies.

  A Hugging Face config.json (`hf`) also sets GELU and LayerNorm epsilon; timm trains with
  erf GELU, Google's code with tanh.
  """
  if model_name:
    if model_name not in model_configs.MODEL_CONFIGS:
      raise errors.UserInputError(
          f'--model={model_name!r} is not in vit_jax/configs/models.py; '
          'omit --model to build the model the checkpoint implies'
      )
    config = model_configs.MODEL_CONFIGS[model_name].to_dict()
  elif hf is not None:
    config = hf.model_config
  else:
    config, _ = architecture.model_config_from_params(params)
  transformer = dict(config['transformer'])
  if hf is not None:
    transformer['layer_norm_epsilon'] = hf.model_config['transformer']['layer_norm_epsilon']
    approximate = hf.model_config['transformer']['gelu_approximate']
  else:
    approximate = fmt != 'timm'
  transformer['gelu_approximate'] = approximate if exact_gelu is None else not exact_gelu
  return dict(config, transformer=transformer)


def checkpoint_description(checkpoint_path, model_name=None):
  """(format, params, Hugging Face HfConfig or None) of a checkpoint."""
  heads = None
  if model_name in model_configs.MODEL_CONFIGS:
    heads = model_configs.MODEL_CONFIGS[model_name].transformer.num_heads
  local = paths.local_copy(checkpoint_path)  # https:// and hf:// fetched once for both reads
  fmt, params = checkpoint.load_with_format(local, num_heads=heads)
  if fmt == 'DiT':
    raise errors.UserInputError(
        f'{checkpoint_path} is a DiT (diffusion transformer) checkpoint, not a classifier: '
        'generate images from it with python -m vit_jax.sample --checkpoint=...'
    )
  hf = None
  if fmt == 'Hugging Face':
    hf_json = hf_format.config_for(local)
    hf = hf_format.model_config_from_hf(hf_json, params) if hf_json else None
  return fmt, params, hf


def build(
    checkpoint_path, model_name=None, image_size=0, exact_gelu=None, scan_layers=False, step=None
):
  """(model, params, image_size, channels, class names or None) for a checkpoint.

  Class names come from a Hugging Face checkpoint's id2label, or a training workdir's
  config.json (`step`: its checkpoint step, default the newest). Clear errors if it does not
  fit. `scan_layers=True` builds the scanned model and stacks the blocks after the checks.
  """
  if trained_run.is_run(checkpoint_path):
    return _build_from_workdir(
        checkpoint_path, model_name, image_size, exact_gelu, scan_layers, step
    )
  if step is not None:
    raise errors.UserInputError(
        f'--step={step} is for a training workdir; '
        f'{checkpoint_path} is a checkpoint file or folder'
    )
  if image_size < 0:
    raise errors.UserInputError(
        f'--image_size={image_size} must be > 0, or 0 for the ' "checkpoint's own"
    )
  fmt, params, hf = checkpoint_description(checkpoint_path, model_name)
  config = _model_config(params, fmt, hf, model_name, exact_gelu)
  config['transformer']['scan_layers'] = scan_layers
  if 'head' not in params:
    raise errors.UserInputError(f'{checkpoint_path}: no classification head to predict with')
  num_classes = params['head']['bias'].shape[0]
  model = VisionTransformer(num_classes=num_classes, **config)
  first = params.get('conv_root', params.get('embedding', {})).get('kernel')
  channels = first.shape[2] if first is not None else 3
  if not image_size:
    image_size = hf.image_size[0] if hf else _size_from_posemb(model, params)
  step = model.patches['size'][0] * resnet.stem_downsampling(model.resnet)
  if image_size % step:
    raise errors.UserInputError(
        f"--image_size={image_size} is not a multiple of the model's {step}-pixel patches; "
        f'pick e.g. {max(step, image_size // step * step)}'
    )
  abstract = jax.eval_shape(
      lambda: layer_stack.unstack(
          model.init(  # the file's layout
              jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, channels)), train=False
          )['params']
      )
  )
  name = model_name or 'the model it implies'
  missing, extra = checkpoint.check_shapes(
      params, abstract, context=f'{checkpoint_path} vs {name}: '
  )
  if missing or extra:
    raise errors.UserInputError(
        f'{checkpoint_path} does not fit {name}: missing ' f'{missing[:5]}, unexpected {extra[:5]}'
    )
  params = layer_stack.to_layout(params, scan_layers)
  return model, params, image_size, channels, (hf.class_names if hf else None)


def _build_from_workdir(workdir, model_name, image_size, exact_gelu, scan_layers, step):
  given = [
      f'--{flag}={value}'
      for flag, value in (('model', model_name), ('exact_gelu', exact_gelu))
      if value
  ]
  if given:
    raise errors.UserInputError(
        f'{" and ".join(given)}: {workdir} is a training workdir, '
        'whose config.json sets the model; omit them'
    )
  run = trained_run.load(workdir, step)
  model, params, size, channels = trained_run.classifier(run, scan_layers)
  if image_size and image_size != size:
    raise errors.UserInputError(
        f'--image_size={image_size}: the run in {workdir} trained at '
        f'{size}x{size} (config.pp.crop); omit --image_size'
    )
  logging.info('%s: step %d of a training run', workdir, run.step)
  return model, params, size, channels, run.class_names


def _size_from_posemb(model, params):
  pe = params.get('Transformer', {}).get('posembed_input', {}).get('pos_embedding')
  if pe is None:
    return 224
  tokens = pe.shape[1] - (1 if 'cls' in params else 0)
  side = int(round(np.sqrt(tokens)))
  patch = model.patches['size'][0]
  return side * patch * resnet.stem_downsampling(model.resnet)


def load_images(image_paths, image_size, channels, patch):
  """Reads (local or gs://), resizes and scales images to [-1, 1]; clear errors for bad files."""
  images = []
  for path in image_paths:
    try:
      with paths.open_binary(path) as f, Image.open(f) as img:
        img = img.convert('RGB' if channels == 3 else 'L')
        img.load()
    except FileNotFoundError as e:
      raise errors.MissingInputError(f'image {path!r} does not exist') from e
    except OSError as e:
      raise errors.UserInputError(f'image {path!r} cannot be read as an image ({e})') from e
    if min(img.size) < patch:
      raise errors.UserInputError(
          f'image {path!r} is {img.size[0]}x{img.size[1]}, smaller than one '
          f'{patch}x{patch} patch of the model'
      )
    img = img.resize((image_size, image_size), Image.BILINEAR)
    array = np.asarray(img, np.float32).reshape(image_size, image_size, channels)
    images.append((array - 127.5) / 127.5)
  return np.stack(images)


def classify(model, params, images, class_names, top_k=5):
  """Top-k (name, probability) lists per image (all classes when top_k exceeds them).

  `class_names`: one per class of the head, or None for 'class <i>'.
  """
  if top_k < 1:
    raise errors.UserInputError(f'--top_k={top_k} must be >= 1 (classes printed per image)')
  num_classes = model.num_classes
  if class_names is None:
    class_names = [f'class {i}' for i in range(num_classes)]
  if len(class_names) != num_classes:
    raise errors.UserInputError(
        f'{len(class_names)} class names for a head of {num_classes} classes; give --labels '
        f'with {num_classes} names (a file: one per line) or omit it'
    )
  logits = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, images)
  probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32)))
  top = np.argsort(-probs, axis=1)[:, :top_k]
  return [[(class_names[i], float(p[i])) for i in row] for row, p in zip(top, probs)]


def benchmark(model, params, batch, image_size, channels, steps):
  """(images/s, compile seconds) timing exactly `steps` forward passes after a warm-up."""
  for flag, value in (('batch', batch), ('steps', steps)):
    if value < 1:
      raise errors.UserInputError(f'--{flag}={value} must be >= 1 for --benchmark')
  x = jnp.zeros((batch, image_size, image_size, channels))
  start = time.perf_counter()
  forward = (
      jax.jit(lambda p, x: model.apply({'params': p}, x, train=False)).lower(params, x).compile()
  )
  compile_s = time.perf_counter() - start
  forward(params, x).block_until_ready()
  start = time.perf_counter()
  for _ in range(steps):
    out = forward(params, x)
  out.block_until_ready()
  return steps * batch / (time.perf_counter() - start), compile_s


def _check_flags(image_paths):
  """The flags' own errors, before a checkpoint is read."""
  if FLAGS.top_k < 1:
    raise errors.UserInputError(
        f'--top_k={FLAGS.top_k} must be >= 1 (classes printed per ' 'image)'
    )
  if FLAGS.benchmark:
    for flag in ('batch', 'steps'):
      if FLAGS[flag].value < 1:
        raise errors.UserInputError(f'--{flag}={FLAGS[flag].value} must be >= 1 for ' '--benchmark')
    ignored = [f for f in ('top_k', 'labels') if FLAGS[f].present] + (
        ['image paths'] if image_paths else []
    )
    if ignored:
      raise errors.UserInputError(
          f'--benchmark times the model and classifies nothing: '
          f'{", ".join(ignored)} would be ignored; drop them or '
          '--benchmark'
      )
  else:
    given = [f'--{f}' for f in ('batch', 'steps') if FLAGS[f].present]
    if given:
      raise errors.UserInputError(
          f'{" and ".join(given)} only act with --benchmark; add it ' 'or drop them'
      )
    if not image_paths:
      raise app.UsageError('give image paths, or --benchmark')


def main(argv):
  image_paths = argv[1:]
  if not FLAGS.checkpoint:
    raise app.UsageError('--checkpoint is required')
  _check_flags(image_paths)
  model, params, size, channels, own_names = build(
      FLAGS.checkpoint,
      FLAGS.model,
      FLAGS.image_size,
      FLAGS.exact_gelu,
      FLAGS.scan_layers,
      FLAGS.step,
  )
  if FLAGS.benchmark:
    rate, compile_s = benchmark(model, params, FLAGS.batch, size, channels, FLAGS.steps)
    name = FLAGS.model or paths.basename(FLAGS.checkpoint)
    print(
        f'{name} {size}x{size} batch {FLAGS.batch}: {rate:.2f} images/s over '
        f'{FLAGS.steps} timed steps (compile {compile_s:.1f} s)'
    )
    return
  images = load_images(image_paths, size, channels, model.patches['size'][0])
  if FLAGS.labels:
    names = labels_lib.get_labels(FLAGS.labels)
  elif own_names:
    names = own_names
  elif model.num_classes == 1000:
    names = labels_lib.get_labels('imagenet1k')
  else:
    names = None  # 'class <i>'
  for path, top in zip(image_paths, classify(model, params, images, names, FLAGS.top_k)):
    print(path)
    for name, prob in top:
      print(f'  {prob:7.2%}  {name}')


if __name__ == '__main__':
  cli.run(main)
