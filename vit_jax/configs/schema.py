"""The one declaration of every training-config field: default, type, allowed values, doc.

`common.get_config()` builds its defaults from `FIELDS`, `vit_jax.config_checks` checks types
and ranges from it, and the docs' config reference (`docs/config.md`) is printed from it:
`python -m vit_jax.configs.schema > docs/config.md` (a test keeps the page current).
Checks that relate two fields (warmup within the steps, a batch the mesh divides, ...) live
in `vit_jax.config_checks`. The input pipeline's fields are declared in pipeline_fields.py,
the `Field` record and its kinds in field.py; FIELDS here is the whole schema, in order.
"""

import sys

import ml_collections

from vit_jax.configs.field import DTYPES
from vit_jax.configs.field import Field
from vit_jax.configs.field import KINDS  # noqa: F401 (schema.KINDS names the kinds in errors)
from vit_jax.configs.pipeline_fields import PIPELINE_FIELDS

FIELDS = (
    Field(
        'seed',
        0,
        'int',
        'Seed of every random stream: init, data order, augmentation, '
        'dropout. Batch s is a function of (seed, s), so a resumed run is the same run.',
    ),
    *PIPELINE_FIELDS,
    Field(
        'objective',
        'classification',
        'choice',
        'What the run trains for: labels with '
        'cross-entropy, or masked-autoencoder pre-training (the fields of config.mae, '
        '`configs/mae.py`), or denoising diffusion with a DiT (the fields of '
        'config.diffusion, `configs/dit.py`).',
        choices=('classification', 'mae', 'diffusion'),
    ),
    # Model.
    Field(
        'model',
        {},
        'dict',
        'The model: a `configs/models.py` entry '
        "(`MODEL_CONFIGS[name]`), checked against the module's own fields.",
    ),
    Field(
        'pretrained_path',
        None,
        'str',
        'Checkpoint to fine-tune from (any format '
        '`vit_jax.checkpoint.load` reads; local, gs://, https:// or hf://).',
        optional=True,
    ),
    Field(
        'pretrained_strict',
        True,
        'bool',
        'Every parameter but the head must come from '
        'pretrained_path; False allows partial loads.',
    ),
    Field(
        'pretrained_required',
        False,
        'bool',
        'Set by fine-tuning recipes '
        '(`configs/augreg.py`): a run without pretrained_path is an error, never a silent '
        'run from scratch.',
    ),
    Field('dtype', 'float32', 'choice', 'Compute dtype of activations.', choices=DTYPES),
    Field(
        'param_dtype',
        'float32',
        'choice',
        'Dtype of the parameters and so of the ' "optimizer state; 'bfloat16' halves their memory.",
        choices=DTYPES,
    ),
    # Devices.
    Field(
        'cpu_devices',
        0,
        'int',
        'CPU devices JAX creates on a host without accelerators: '
        "0 JAX's default (or XLA_FLAGS), -1 one per core. Set before JAX starts.",
        low=-1,
        why='-1 is one device per core, 0 the default',
    ),
    Field(
        'mesh',
        {'data': -1, 'fsdp': 1, 'seq': 1},
        'dict',
        'Device mesh axis sizes; -1 '
        'takes the remaining devices. data and fsdp split the batch, fsdp also shards the '
        'parameters, seq shards the tokens (sequence-sharded attention).',
    ),
    # Optimizer and schedule.
    Field(
        'optim',
        'sgd',
        'choice',
        "Optimizer: SGD with momentum (the original's fine-tuning) " 'or AdamW.',
        choices=('sgd', 'adamw'),
    ),
    Field('momentum', 0.9, 'number', 'SGD momentum.'),
    Field('adam_b1', 0.9, 'number', 'AdamW beta1.'),
    Field('adam_b2', 0.999, 'number', 'AdamW beta2.'),
    Field('weight_decay', 0.0, 'number', 'Decoupled weight decay (AdamW) or L2 (SGD).'),
    Field(
        'base_lr',
        0.03,
        'number',
        'Peak learning rate.',
        low=0,
        low_open=True,
        why='the peak learning rate, e.g. 1e-3',
    ),
    Field('warmup_steps', 500, 'int', 'Linear warmup steps, at most total_steps.'),
    Field('total_steps', 10_000, 'int', 'Train steps.', low=1, why='the number of train steps'),
    Field(
        'decay_type',
        'cosine',
        'choice',
        'Learning-rate decay after warmup.',
        choices=('cosine', 'linear'),
    ),
    Field('linear_end', 1e-5, 'number', 'Final learning rate of the linear decay.'),
    Field(
        'grad_norm_clip',
        1.0,
        'number',
        'Global gradient-norm clip; 0 or None turns it ' 'off.',
        low=0,
        optional=True,
        why='0 or None turns clipping off',
    ),
    Field(
        'layer_decay',
        1.0,
        'number',
        'Layer-wise lr decay (BEiT, MAE fine-tuning): block '
        "i's lr times layer_decay ** (depth + 1 - i); 1 turns it off.",
    ),
    Field(
        'accum_steps',
        8,
        'int',
        'Micro-batches per step (gradient accumulation).',
        low=1,
        why='micro-batches per step; 1 means no accumulation',
    ),
    Field(
        'label_smoothing',
        0.0,
        'number',
        'Label smoothing of the cross-entropy.',
        low=0,
        high=1,
        high_open=True,
        why='0 turns it off',
    ),
    Field(
        'patch_dropout.rate',
        0.0,
        'number',
        'Patch dropout: the share of patch tokens left '
        'out of each image in the first patch_dropout.steps steps; 0 turns it off.',
        low=0,
        high=1,
        high_open=True,
        why='0 turns it off',
    ),
    Field(
        'patch_dropout.steps',
        0,
        'int',
        'Train steps that use patch dropout (from the ' 'first).',
        low=0,
        why='0 turns it off',
    ),
    Field(
        'ema_decay',
        0.0,
        'number',
        'Exponential moving average of the parameters, kept in '
        'the train state and checkpointed, used for evaluation and sampling (DiT: 0.9999); '
        '0 turns it off.',
        low=0,
        high=1,
        high_open=True,
        why='0 turns it off',
    ),
    Field(
        'eval_flip',
        False,
        'bool',
        'Eval averages the logits of each image and its mirror '
        '(flip test-time augmentation); the single-view accuracy is logged too.',
    ),
    # Loop.
    Field(
        'eval_every',
        100,
        'int',
        'Evaluate every N steps; 0: after the last step only.',
        low=0,
        why='0 evaluates after the last step only',
    ),
    Field(
        'progress_every',
        10,
        'int',
        'Log train metrics every N steps.',
        low=1,
        why='train metrics every N steps',
    ),
    Field(
        'checkpoint_every',
        1_000,
        'int',
        'Save the train state every N steps (and always ' 'at the last step).',
        low=1,
        why='a checkpoint every N steps (the last step always saves)',
    ),
    Field(
        'keep_checkpoints',
        3,
        'int',
        'Checkpoints kept on disk, newest first.',
        low=1,
        why='0 would delete every checkpoint, the final one too',
    ),
    Field(
        'profile.first_step',
        0,
        'int',
        'First step of a jax.profiler trace into '
        "WORKDIR/plugins/profile (TensorBoard's profile tab); 0 turns it off.",
        low=0,
        why='0 turns profiling off',
    ),
    Field(
        'profile.num_steps',
        5,
        'int',
        'Steps in the profiler trace.',
        low=1,
        why='steps in the trace',
    ),
)

BY_NAME = {f.name: f for f in FIELDS}


def defaults():
  """A ConfigDict of every field at its default (unlocked; recipes fill it in)."""
  config = ml_collections.ConfigDict()
  for field in FIELDS:
    node = config
    *parents, last = field.name.split('.')
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    default = field.default
    if isinstance(default, dict):
      default = ml_collections.ConfigDict(default)
    elif default is None and field.kind == 'str':
      default = ml_collections.config_dict.placeholder(str)
    node[last] = default
  return config


def get(config, name):
  """The value of a dotted field name."""
  value = config
  for part in name.split('.'):
    value = value[part]
  return value


def bounds(field):
  """A number's bounds as text: '[0, 1)', '> 0', '>= 1' ('' when unbounded)."""
  if field.high is not None:
    return (
        f"{'(' if field.low_open else '['}{field.low}, {field.high}"
        f"{')' if field.high_open else ']'}"
    )
  if field.low is not None:
    return f"{'>' if field.low_open else '>='} {field.low}"
  return ''


def _allowed(field):
  if field.choices:
    return 'one of ' + ', '.join(repr(c) for c in field.choices)
  if field.kind == 'range':
    return f'low <= high, both {bounds(field)}'
  return bounds(field)


def reference_markdown():
  """The config reference page: every field with its default, allowed values and doc."""
  lines = [
      '# Config reference',
      '',
      'Every field of a training config, with its default, its allowed values and what it '
      'does. Recipes (`configs/vit.py`, `configs/pit.py`, `configs/mae.py`, '
      '`configs/augreg.py`) start from these defaults; any field can be set on the command '
      'line, e.g. `--config.batch=256`. A value outside its range stops the run before '
      'anything is compiled. This page is printed by `python -m vit_jax.configs.schema`.',
      '',
      '| field | default | type | allowed | what it does |',
      '| --- | --- | --- | --- | --- |',
  ]
  for field in FIELDS:
    allowed = _allowed(field) + (' or None' if field.optional else '')
    doc = field.doc.replace('|', '\\|')
    lines.append(f'| `{field.name}` | `{field.default!r}` | {field.kind} | {allowed} | {doc} |')
  lines += [
      '',
      'Objective-specific fields: `config.mae` (mask ratio, pixel-loss '
      'normalisation, decoder) is set by `configs/mae.py` and checked with '
      "`objective='mae'`.",
      '',
  ]
  return '\n'.join(lines)


if __name__ == '__main__':
  sys.stdout.write(reference_markdown())
