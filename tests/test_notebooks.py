"""The notebooks run top to bottom, offline on CPU, with small settings."""

import pathlib

import nbclient
import nbformat
import pytest
from xla_test_flags import xla_flags

ROOT = pathlib.Path(__file__).parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'


def _run(name, env, tmp_path, monkeypatch):
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  monkeypatch.setenv('XLA_FLAGS', xla_flags(8))
  book = nbformat.read(ROOT / 'notebooks' / name, as_version=4)
  assert any('parameters' in c.metadata.get('tags', []) for c in book.cells)
  assert all(not c.get('outputs') for c in book.cells if c.cell_type == 'code')
  client = nbclient.NotebookClient(
      book, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}
  )
  client.execute()  # raises CellExecutionError on any failing cell
  return book


def _text(book):
  return '\n'.join(
      o.get('text', '') for c in book.cells if c.cell_type == 'code' for o in c.get('outputs', [])
  )


@pytest.mark.slow
@pytest.mark.long
def test_vit_notebook(fashion_mnist_data_dir, tmp_path, monkeypatch):
  book = _run(
      'vit_jax.ipynb',
      {
          'VIT_NB_CHECKPOINT': str(FIXTURES / 'gap.npz'),
          'VIT_NB_MODEL_CONFIG_JSON': str(FIXTURES / 'gap_config.json'),
          'VIT_NB_IMAGE_SIZE': '32',
          'VIT_NB_STEPS': '10',
          'VIT_NB_BATCH': '32',
          'VIT_NB_WORKDIR': str(tmp_path / 'work'),
          'VIT_NB_TFDS_DATA_DIR': fashion_mnist_data_dir,
      },
      tmp_path,
      monkeypatch,
  )
  text = _text(book)
  assert 'CPU: 8 devices' in text and 'over 10000 test images' in text
  assert 'truth' in text


@pytest.mark.slow
@pytest.mark.long
def test_pit_notebook(fashion_mnist_data_dir, tmp_path, monkeypatch):
  book = _run(
      'pit.ipynb',
      {
          'PIT_NB_IMAGE_SIZE': '8',
          'PIT_NB_STEPS': '6',
          'PIT_NB_MAE_STEPS': '4',
          'PIT_NB_MEMORY_LENGTHS': '256,512',
          'PIT_NB_TRAIN_SPLIT': 'train[:4096]',
          'PIT_NB_TEST_SPLIT': 'test[:1000]',
          'PIT_NB_WORKDIR': str(tmp_path / 'work'),
          'PIT_NB_TFDS_DATA_DIR': fashion_mnist_data_dir,
      },
      tmp_path,
      monkeypatch,
  )
  text = _text(book)
  assert 'ring      over 8 devices' in text and 'PiT tokens: 64' in text
  assert 'hidden pixels per image: 48 of 64' in text  # 75 % of the 8x8 pixel tokens


@pytest.mark.slow
@pytest.mark.long
def test_generation_notebook(fashion_mnist_data_dir, tmp_path, monkeypatch):
  book = _run(
      'generation.ipynb',
      {
          'GEN_NB_STEPS': '4',
          'GEN_NB_WIDTH': '16',
          'GEN_NB_DEPTH': '1',
          'GEN_NB_SAMPLE_STEPS': '3',
          'GEN_NB_WORKDIR': str(tmp_path / 'work'),
          'GEN_NB_TRAIN_SPLIT': 'train[:2000]',
          'GEN_NB_TEST_SPLIT': 'test[:1000]',
          'GEN_NB_TFDS_DATA_DIR': fashion_mnist_data_dir,
      },
      tmp_path,
      monkeypatch,
  )
  text = _text(book)
  assert 'conditional accuracy' in text and 'FID (classifier features)' in text
  assert '3 DDIM steps' in text and 'guidance 4.0: conditional accuracy' in text
