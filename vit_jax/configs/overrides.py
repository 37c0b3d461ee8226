"""Command-line overrides that would do nothing: `--config.momentum=0.5` with AdamW is an
error, not a silent no-op.

`check(config, fields)` runs on the fields given on the command line (a default that does
not act is no mistake). Light on purpose: `vit_jax.main` calls it before JAX or TensorFlow
start, so the mistake is one line in a second.
"""

from vit_jax import errors
from vit_jax.configs import schema

# field -> (whether it acts in this config, what it acts with).
ACTS_ONLY_WITH = {
    'momentum': (lambda c: c.optim == 'sgd', "config.optim='sgd'"),
    'adam_b1': (lambda c: c.optim == 'adamw', "config.optim='adamw'"),
    'adam_b2': (lambda c: c.optim == 'adamw', "config.optim='adamw'"),
    'linear_end': (lambda c: c.decay_type == 'linear', "config.decay_type='linear'"),
    'profile.num_steps': (lambda c: c.profile.first_step > 0, 'config.profile.first_step > 0'),
    'fashion_mnist_dir': (lambda c: c.dataset == 'fashion_mnist', "config.dataset='fashion_mnist'"),
    'pretrained_strict': (lambda c: bool(c.pretrained_path), 'config.pretrained_path'),
    'pp.inception_crop_area': (lambda c: c.pp.inception_crop, 'config.pp.inception_crop=True'),
    'pp.blur_sigma': (lambda c: c.pp.blur_prob > 0, 'config.pp.blur_prob > 0'),
    'pp.color_jitter.prob': (
        lambda c: any(
            c.pp.color_jitter[k] for k in ('brightness', 'contrast', 'saturation', 'hue')
        ),
        'a config.pp.color_jitter strength > 0',
    ),
}


def check(config, fields):
  """UserInputError for the first of `fields` (dotted names given on the command line) that
  does not act in `config`."""
  for field in fields:
    if field in ACTS_ONLY_WITH:
      acts, partner = ACTS_ONLY_WITH[field]
      if not acts(config):
        raise errors.UserInputError(
            f'config.{field}={schema.get(config, field)!r} has no effect here: it acts only '
            f'with {partner}; drop --config.{field} or set that too'
        )
