"""Reading one checkpoint file into {name: numpy array}, with an error that names the file.

The format comes from the file's first bytes, not only its name: a zip is an npz, an 8-byte
length followed by `{` is safetensors. Anything else (a text file, an HTML error page, a Git
LFS pointer) is named as such instead of reaching numpy, whose advice for it ("allow_pickle")
is wrong. Truncated and damaged files name the path, and for safetensors the first entry whose
byte range does not fit its shape. Nothing is ever unpickled; PyTorch files need torch and
are read with `weights_only=True`.
"""

import argparse
import contextlib
import json
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

from vit_jax import errors
from vit_jax import paths

TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt')
_SAFETENSORS_ITEMSIZE = {
    'F64': 8,
    'F32': 4,
    'F16': 2,
    'BF16': 2,
    'I64': 8,
    'I32': 4,
    'I16': 2,
    'I8': 1,
    'U8': 1,
    'BOOL': 1,
    'F8_E4M3': 1,
    'F8_E5M2': 1,
}


def _head(path, size=64):
  with paths.open_binary(path) as f:
    return f.read(size)


def _looks_like_safetensors(head):
  return len(head) >= 9 and head[8:9] == b'{'


def _describe_text(head):
  """A hint for files that are text, or '' when the bytes are binary."""
  try:
    text = head.decode('utf-8')
  except UnicodeDecodeError:
    return ''
  if not all(c.isprintable() or c.isspace() for c in text):
    return ''
  if text.startswith('version https://git-lfs'):
    return ' It is a Git LFS pointer, not the weights: run `git lfs pull` in its repository.'
  if text.lstrip().lower().startswith(('<!doctype', '<html')):
    return ' It is an HTML page (a login or error page saved instead of the file?).'
  return f' It is a text file (it starts with {text[:40]!r}).'


def read(path):
  """{name: numpy array} of an npz, safetensors or (with torch) PyTorch file, local or remote."""
  path = os.fspath(path)
  if not paths.exists(path):
    raise errors.MissingInputError(f'checkpoint {path!r} does not exist')
  head = _head(path)
  if not head:
    raise errors.UserInputError(
        f'checkpoint {path!r} is empty (0 bytes): the download or '
        'copy did not finish; fetch it again.'
    )
  if path.endswith(TORCH_SUFFIXES):
    return _read_torch(path)
  if _looks_like_safetensors(head):
    return _read_safetensors(path)
  if head.startswith(b'PK'):
    return _read_npz(path)
  raise errors.UserInputError(
      f'{path!r} is not a checkpoint file: neither an npz (zip) nor a safetensors file.'
      f'{_describe_text(head)} Give an .npz (original / big_vision), .safetensors (timm, '
      'Hugging Face), flax_model.msgpack or a Hugging Face model folder.'
  )


def _read_npz(path):
  try:
    with paths.open_binary(path) as f, np.load(f, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except (zipfile.BadZipFile, EOFError, zlib.error, struct.error, OSError) as e:
    raise errors.UserInputError(
        f'checkpoint {path!r} is truncated or damaged (npz: {e}); download or copy it ' 'again.'
    ) from e
  except ValueError as e:
    if 'pickle' in str(e):
      raise errors.UserInputError(
          f'checkpoint {path!r} holds pickled Python objects, which vit_jax never loads (they '
          'can run code); save the arrays with numpy.savez instead.'
      ) from e
    raise errors.UserInputError(f'checkpoint {path!r} cannot be read as an npz ({e})') from e


def _safetensors_problem(data):
  """Names what is wrong with a safetensors file's header, or '' if the header is sound."""
  if len(data) < 8:
    return f'the file is {len(data)} bytes, shorter than the 8-byte header length'
  (size,) = struct.unpack('<Q', data[:8])
  if 8 + size > len(data):
    return f'the header says {size} bytes of metadata, the file has {len(data) - 8}'
  try:
    header = json.loads(data[8 : 8 + size])
  except ValueError:
    return 'the metadata is not valid JSON'
  body = len(data) - 8 - size
  for key, info in header.items():
    if key == '__metadata__':
      continue
    begin, end = info['data_offsets']
    want = int(np.prod(info['shape'])) * _SAFETENSORS_ITEMSIZE.get(info['dtype'], 0)
    if end - begin != want:
      return (
          f'entry {key!r} is declared {info["dtype"]} of shape {info["shape"]} '
          f'({want} bytes) but spans {end - begin} bytes'
      )
    if end > body:
      return (
          f'entry {key!r} ends at byte {end} of the data, which has only {body} bytes '
          '(the file is truncated)'
      )
  return ''


def _read_safetensors(path):
  from safetensors import numpy as safetensors_numpy

  data = paths.read_bytes(path)
  problem = _safetensors_problem(data)
  if problem:
    raise errors.UserInputError(
        f'checkpoint {path!r} is not a sound safetensors file: '
        f'{problem}. Download or export it again.'
    )
  try:
    return dict(safetensors_numpy.load(data))
  except Exception as e:  # safetensors' own error class is not importable in every version
    raise errors.UserInputError(
        f'checkpoint {path!r} cannot be read as safetensors ({e}); download or export it ' 'again.'
    ) from e


def _read_torch(path):
  try:
    import torch
  except ImportError as e:
    raise errors.UserInputError(
        f'{path!r} is a PyTorch pickle; reading it needs torch, which is not installed. '
        'Convert it to .safetensors (safetensors.torch.save_file(state_dict, ...)) where '
        'torch is available, or `pip install torch`.'
    ) from e
  # DiT's training checkpoints also hold their argparse.Namespace of arguments.
  safe = getattr(torch.serialization, 'safe_globals', None)  # torch >= 2.5
  with (
      paths.open_binary(path) as f,
      safe([argparse.Namespace]) if safe else contextlib.nullcontext(),
  ):
    try:
      sd = torch.load(f, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
      raise errors.UserInputError(
          f'{path!r} holds objects other than tensors, which are never unpickled; save its '
          f'state dict alone (torch.save(model.state_dict(), ...)). ({e})'
      ) from e
  if isinstance(sd, dict):
    # A training checkpoint: its EMA weights (DiT's train.py), or its model state dict.
    for key in ('ema', 'state_dict', 'model'):
      if isinstance(sd.get(key), dict):
        sd = sd[key]
        break
  return {k: v.float().numpy() for k, v in sd.items()}
