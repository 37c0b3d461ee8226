"""Makes the feature network shipped for the generation presets' FID (14x14 Fashion-MNIST).

  python bench/make_fid_classifier.py --workdir=/tmp/fid_classifier

Trains `configs/dit.py:fid_classifier` (a ViT/2 classifier, a few minutes on 2 CPU cores),
exports it with `python -m vit_jax.export`, and writes vit_jax/data/
fashion_mnist14_classifier.npz (float16, about 0.4 MB) and the .json beside it: the model
config, its input shape, its test accuracy and this command. Run it again only to replace
the shipped network; FIDs measured with another network are not comparable.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_string('workdir', '/tmp/fid_classifier', 'Training workdir (resumes).')
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEM = os.path.join(ROOT, 'vit_jax', 'data', 'fashion_mnist14_classifier')
CONFIG = 'configs/dit.py:fid_classifier'


def main(argv):
  del argv
  run = lambda *args: subprocess.run([sys.executable, '-m', *args], cwd=ROOT, check=True)
  run('vit_jax.main', f'--config={CONFIG}', f'--workdir={FLAGS.workdir}')
  with tempfile.TemporaryDirectory() as tmp:
    exported = os.path.join(tmp, 'classifier.npz')
    run('vit_jax.export', FLAGS.workdir, '--format=npz', exported)
    with np.load(exported) as data:
      np.savez(STEM + '.npz', **{k: v.astype(np.float16) for k, v in data.items()})
  saved = json.load(open(os.path.join(FLAGS.workdir, 'config.json')))
  final = [
      json.loads(l)
      for l in open(os.path.join(FLAGS.workdir, 'metrics.jsonl'))
      if 'eval_accuracy' in l
  ][-1]
  model = saved['model']
  model['transformer']['grads_as_dots'] = False  # the CPU backward is for training only
  info = {
      'model_config': model,
      'image_shape': [saved['pp']['crop'], saved['pp']['crop'], saved['pp']['channels']],
      'num_classes': 10,
      'test_accuracy': final['eval_accuracy'],
      'command': f'python bench/make_fid_classifier.py (trains {CONFIG})',
  }
  with open(STEM + '.json', 'w') as f:
    json.dump(info, f, indent=2)
    f.write('\n')
  print(f'wrote {STEM}.npz and .json (test accuracy {info["test_accuracy"]:.4f})')


if __name__ == '__main__':
  app.run(main)
