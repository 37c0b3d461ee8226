"""Adds array_record files to a TFDS dataset prepared as tfrecord, in place.

  python -m vit_jax.datasets.to_array_record ~/tensorflow_datasets/imagenet2012/5.1.0

vit_jax reads TFDS datasets by index, which needs array_record files. A dataset prepared in
the older tfrecord format (by earlier vit_jax or other code) is converted shard by shard:
each `<name>-<split>.tfrecord-0000k-of-0000n` is copied record by record, in order, into
`<name>-<split>.array_record-0000k-of-0000n` beside it; then `dataset_info.json` names
array_record as the dataset's format. Shard lengths and record order stay the same, so the
converted dataset reads exactly like one prepared as array_record. The tfrecord files stay,
unused (delete them to save the space). The folder must be local (ArrayRecordWriter writes local
files). tfds's own `tfds convert_format` does the same but needs
apache_beam installed; this needs only TensorFlow and array_record.
"""

import concurrent.futures
import json
import os
import sys

from array_record.python import array_record_module
import tensorflow as tf

from vit_jax import errors
from vit_jax import paths

INFO_FILE = 'dataset_info.json'
_OPTIONS = 'group_size:1'  # one record per chunk: the option tfds writes for random access


def _shard_pairs(version_dir, info):
  """[(tfrecord shard, array_record shard)] of every split, from dataset_info.json."""
  name = info['name']
  pairs = []
  for split in info['splits']:
    shards = len(split.get('shardLengths', [])) or 1
    for k in range(shards):
      suffix = f'{k:05d}-of-{shards:05d}'
      pairs.append(
          tuple(
              paths.join(version_dir, f'{name}-{split["name"]}.{fmt}-{suffix}')
              for fmt in ('tfrecord', 'array_record')
          )
      )
  return pairs


def _convert_shard(tfrecord, array_record):
  partial = array_record + '.incomplete'
  writer = array_record_module.ArrayRecordWriter(partial, _OPTIONS)
  count = 0
  for record in tf.data.TFRecordDataset(tfrecord).as_numpy_iterator():
    writer.write(record)
    count += 1
  writer.close()
  paths.move(partial, array_record)  # complete shards only, so a rerun redoes the rest
  return count


def convert(version_dir, workers=None):
  """Converts the dataset in `version_dir` (the folder holding dataset_info.json)."""
  info_path = paths.join(version_dir, INFO_FILE)
  if not paths.exists(info_path):
    raise errors.MissingInputError(
        f'{version_dir!r} has no {INFO_FILE}: pass the folder of one prepared TFDS dataset '
        'version, e.g. ~/tensorflow_datasets/imagenet2012/5.1.0.'
    )
  info = json.loads(paths.read_text(info_path))
  formats = [info.get('fileFormat') or 'tfrecord'] + info.get('alternativeFileFormats', [])
  if 'array_record' in formats:
    return 0
  pairs = _shard_pairs(version_dir, info)
  missing = [src for src, _ in pairs if not paths.exists(src)]
  if missing:
    raise errors.MissingInputError(
        f'{version_dir!r}: {len(missing)} tfrecord shard(s) listed by {INFO_FILE} are missing, '
        f'e.g. {missing[0]}; prepare the dataset again.'
    )
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
    counts = list(pool.map(lambda pair: _convert_shard(*pair), pairs))
  # The primary format: tfds restores it from this file (alternativeFileFormats it does not,
  # for datasets whose builder is registered code).
  info['fileFormat'] = 'array_record'
  paths.write_text(info_path, json.dumps(info, indent=2))
  return sum(counts)


def main(argv):
  if len(argv) != 2:
    print(__doc__)
    return 2
  count = convert(os.path.expanduser(argv[1]))
  print(f'{argv[1]}: {count} records written as array_record.')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
