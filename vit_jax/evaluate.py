"""FID and Inception Score of generated samples, as ADM's evaluator and the DiT paper report
them, with the FID Inception network in JAX over every device (docs/evaluation.md).

  python -m vit_jax.evaluate --inception=inception.safetensors \
      --samples=samples.npz --ref=VIRTUAL_imagenet256_labeled.npz [--json_out=fid.json]
  python -m vit_jax.evaluate --inception=inception.safetensors \
      --ref=IMAGE_FOLDER_OR_NPZ --image_size=256 --ref_stats_out=ref_stats.npz

--samples: an npz in ADM's layout (`arr_0` uint8 [n, h, w, 3], as python -m vit_jax.sample
writes it). --ref: an npz with Inception statistics `mu` and `sigma` (ADM's reference batches,
or one this command wrote), or images to compute them from (an npz with `arr_0`, or a folder
of image files center-cropped to --image_size as ADM prepares its batches). --ref_stats_out
writes the reference statistics. Every input is checked before anything compiles.
"""

import io
import json
import sys

from absl import flags

from vit_jax import cli
from vit_jax import errors
from vit_jax import paths


def _define_flags():
  """The command's flags, defined only when it runs (importers keep their own flags)."""
  flags.DEFINE_string(
      'inception',
      None,
      'The FID Inception weights: pt_inception-2015-12-05-6726825d.pth (needs torch) or its '
      '.safetensors / .npz conversion; local, gs:// or https://.',
  )
  flags.DEFINE_string('samples', None, "Samples npz in ADM's layout (arr_0 uint8 NHWC).")
  flags.DEFINE_string('ref', None, 'Reference: npz with mu/sigma, npz with arr_0, or a folder.')
  flags.DEFINE_string('ref_stats_out', None, 'Writes the reference mu and sigma to this npz.')
  flags.DEFINE_string('json_out', None, 'Writes {fid, inception_score, ...} as JSON here.')
  flags.DEFINE_integer('image_size', 256, 'Center crop of the images of a --ref folder.')
  flags.DEFINE_integer('batch', None, 'Images per compiled call (default 8 per device).')
  flags.DEFINE_integer('splits', 10, 'Splits of the Inception Score (ADM, DiT: 10).')
  flags.mark_flags_as_required(['inception', 'ref'])


def _features(network, images, label):
  """{'pool', 'logits_unbiased'} of every image of an NpzImages / FolderImages."""
  import numpy as np

  outs, done = [], 0
  for chunk in images.batches(network.batch * 4):
    out = network(chunk)
    outs.append({k: out[k] for k in ('pool', 'logits_unbiased')})
    done += len(chunk)
    print(f'{label}: {done}/{len(images)} images', file=sys.stderr, flush=True)
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def evaluate(
    inception_path,
    ref,
    samples=None,
    ref_stats_out=None,
    json_out=None,
    image_size=256,
    batch=None,
    splits=10,
    mesh=None,
):
  """The metrics of `samples` against `ref` (see the module docstring) as a dict; the
  network runs over `mesh` (default: every device)."""
  import numpy as np

  from vit_jax.evaluation import frechet
  from vit_jax.evaluation import image_sources
  from vit_jax.evaluation import inception
  from vit_jax.evaluation import inception_features
  from vit_jax.evaluation import inception_score

  if samples is None and ref_stats_out is None:
    raise errors.UserInputError('give --samples to evaluate, or --ref_stats_out to write')
  # Every input is checked before anything is compiled.
  sample_images = image_sources.open_images(samples, 'samples', image_size) if samples else None
  if sample_images is not None and len(sample_images) < splits:
    raise errors.UserInputError(
        f'samples {samples!r} hold {len(sample_images)} images, fewer than the {splits} '
        'Inception Score splits (--splits)'
    )
  stats = image_sources.reference_statistics(ref, inception.POOL_DIM)
  ref_images = None if stats else image_sources.open_images(ref, 'reference', image_size)
  variables = inception.load_variables(inception_path)

  network = inception_features.InceptionFeatures(variables, batch=batch, mesh=mesh)
  if stats is None:
    stats = frechet.feature_statistics(_features(network, ref_images, 'reference')['pool'])
  if ref_stats_out:
    buffer = io.BytesIO()
    np.savez(buffer, mu=stats[0], sigma=stats[1])
    paths.write_bytes(ref_stats_out, buffer.getvalue())
    print(f'reference statistics written to {ref_stats_out}', file=sys.stderr)
  result = {'ref': ref, 'inception': inception_path}
  if sample_images is not None:
    features = _features(network, sample_images, 'samples')
    is_mean, is_std = inception_score.inception_score(features['logits_unbiased'], splits)
    result.update(
        samples=samples,
        num_samples=len(sample_images),
        fid=frechet.frechet_distance_to_features(*stats, features['pool']),
        inception_score=is_mean,
        inception_score_std=is_std,
        inception_score_splits=splits,
    )
  if json_out:
    paths.write_text(json_out, json.dumps(result, indent=2) + '\n')
  return result


def main(argv):
  if len(argv) > 1:
    raise errors.UserInputError(f'unexpected arguments {argv[1:]}; everything is a --flag')
  f = flags.FLAGS
  result = evaluate(
      f.inception,
      f.ref,
      samples=f.samples,
      ref_stats_out=f.ref_stats_out,
      json_out=f.json_out,
      image_size=f.image_size,
      batch=f.batch,
      splits=f.splits,
  )
  if 'fid' in result:
    print(f"FID: {result['fid']:.4f}")
    print(
        f"Inception Score: {result['inception_score']:.4f} "
        f"(std {result['inception_score_std']:.4f} over {result['inception_score_splits']} "
        'splits)'
    )


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
