"""Downloads and prepares a TFDS dataset, as the original does, or fails within seconds offline.

Why a probe. tfds's downloader (tensorflow_datasets/core/download/downloader.py) fetches each
URL with `requests` and urllib3's `Retry(total=10, backoff_factor=0.2)`: a host that cannot be
reached is retried with growing pauses for about 200 s before anything fails. Lowering that
module constant would change a library global for the whole process and make real downloads
more fragile, so instead, before `download_and_prepare`, every host in the builder's
registered URLs (`url_infos`, its checksums file) gets one TCP connection attempt of a few
seconds, all at once (`downloads.unreachable`, which also goes through an https_proxy). Any
host that does not answer is a clear error: the download would need it. tfds may first try
its prepared-data mirror `gs://tfds-data` (storage.googleapis.com; tfds 4.9.10 has it turned
off); when that host does not answer, `try_download_gcs=False` keeps TensorFlow's own GCS
client, which retries too, away from it. A builder without registered URLs cannot be probed:
it downloads as tfds does, with a warning that offline it may take minutes to fail.
"""

import concurrent.futures
import urllib.parse

from absl import logging
import tensorflow_datasets as tfds

from vit_jax import errors
from vit_jax.datasets import fashion_mnist_local
from vit_jax.paths import downloads

PROBE_TIMEOUT_S = 5.0
GCS_MIRROR = 'https://storage.googleapis.com'


def hosts(builder):
  """`scheme://host[:port]` of every URL the builder may download from (sorted), or None."""
  url_infos = type(builder).url_infos
  if not url_infos:
    return None
  return sorted(
      {
          '{0.scheme}://{0.netloc}'.format(urllib.parse.urlsplit(url))
          for url in url_infos
          if url.startswith(('http://', 'https://'))
      }
  )


def _probe(urls):
  """{url: why it cannot be reached, or None}, probed in parallel."""
  with concurrent.futures.ThreadPoolExecutor(max(len(urls), 1)) as pool:
    reasons = pool.map(lambda u: downloads.unreachable(u, PROBE_TIMEOUT_S), urls)
    return dict(zip(urls, reasons))


def download_and_prepare(builder, config, data_dir):
  """Downloads and prepares `builder` into `data_dir`, or UserInputError within seconds."""
  needed = hosts(builder)
  if needed is None:
    logging.warning(
        '%s has no registered download URLs, so vit_jax cannot check that they '
        'are reachable; offline, tfds may retry for minutes before failing.',
        builder.name,
    )
    needed = []
  reasons = _probe(needed + [GCS_MIRROR])
  down = [f'{host} ({reasons[host]})' for host in needed if reasons[host]]
  if down:
    raise errors.UserInputError(
        f'config.dataset={config.dataset!r} is not prepared in config.tfds_data_dir='
        f'{data_dir!r} and cannot be downloaded here: {"; ".join(down)} cannot be reached '
        f'(probed for up to {PROBE_TIMEOUT_S:g} s; this machine looks offline). Ways out: '
        f'{_prepare_elsewhere(config, data_dir)}; '
        'or set config.tfds_download=False to use only prepared data and never try to '
        f'download.{fashion_mnist_hint(config)}'
    )
  logging.info('Downloading and preparing %s into %s', builder.name, data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=not reasons[GCS_MIRROR])
  )
  return builder


def _prepare_elsewhere(config, data_dir):
  return (
      'prepare it on a machine with network access, `python -c "import '
      f'tensorflow_datasets as tfds; tfds.builder({config.dataset!r}, '
      "data_dir='/tmp/tfds', file_format='array_record').download_and_prepare()\"`, and "
      'copy the folder '
      f'/tmp/tfds/{config.dataset} into config.tfds_data_dir ({data_dir!r})'
  )


def not_prepared_error(config, data_dir):
  """The error for an unprepared dataset when config.tfds_download is False."""
  return errors.UserInputError(
      f'config.dataset={config.dataset!r} is not prepared in config.tfds_data_dir='
      f'{data_dir!r} and config.tfds_download=False. Either '
      f'{_prepare_elsewhere(config, data_dir)}; or set config.tfds_download=True (the '
      'default) to download it in this run; or set config.tfds_manual_dir for datasets with '
      f'manual downloads (imagenet2012).{fashion_mnist_hint(config)}'
  )


def manual_dir_error(builder, config, data_dir):
  """The error for a dataset that tfds cannot download (imagenet2012) without a manual dir."""
  how = ' '.join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
  return errors.UserInputError(
      f'config.dataset={config.dataset!r} is not prepared in config.tfds_data_dir='
      f'{data_dir!r} and tfds cannot download it: download its files by hand and set '
      f'config.tfds_manual_dir to their folder. TFDS says: {how}'
  )


def fashion_mnist_hint(config):
  if config.dataset != 'fashion_mnist':
    return ''
  return (
      " For fashion_mnist there is an offline way: Debian's package (`apt-get install "
      f'dataset-fashion-mnist`) puts its four idx .gz files in '
      f'{fashion_mnist_local.DEFAULT_SOURCE_DIR}; with them in config.fashion_mnist_dir '
      f'(now {config.fashion_mnist_dir!r}) the dataset is prepared from them without '
      'network.'
  )
