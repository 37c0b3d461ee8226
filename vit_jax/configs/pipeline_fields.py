"""The input pipeline's fields of the config schema (configs/schema.py): the dataset, the
preprocessing and augmentation (`pp.*`), the batches."""

from vit_jax.configs.field import Field

PIPELINE_FIELDS = (
    # Data.
    Field(
        'dataset',
        '',
        'str',
        'TFDS name (`cifar10`, `imagenet2012`, ...), an image '
        'folder path `root/<split>/<class>/*.jpg`, or `latents:<root>`: VAE latents written by '
        '`python -m vit_jax.encode_latents` into `root/<split>/` (pp.crop and pp.channels '
        'must equal their size and channels).',
    ),
    Field(
        'tfds_data_dir',
        None,
        'str',
        'TFDS data_dir (local or gs://); None: TFDS default.',
        optional=True,
    ),
    Field(
        'tfds_manual_dir',
        None,
        'str',
        'TFDS manual_dir for datasets that need manual ' 'downloads (ImageNet).',
        optional=True,
    ),
    Field(
        'tfds_download',
        True,
        'bool',
        'Download and prepare a TFDS dataset missing from '
        'tfds_data_dir (offline: a clear error within seconds); False: prepared data only.',
    ),
    Field(
        'fashion_mnist_dir',
        '/usr/share/datasets/fashion-mnist',
        'str',
        'Local idx files '
        '(Debian `dataset-fashion-mnist`) that fashion_mnist is prepared from, offline.',
    ),
    Field('pp.train', 'train', 'str', 'Train split, TFDS slicing allowed (`train[:98%]`).'),
    Field('pp.test', 'test', 'str', 'Eval split; every example is evaluated, the tail too.'),
    Field(
        'pp.crop',
        224,
        'int',
        'Image side the model sees, in pixels.',
        low=1,
        why='the image side the model sees',
    ),
    Field(
        'pp.resize',
        0,
        'int',
        'Eval: resize the shorter side to this, then central crop; ' '0 turns it off.',
        low=0,
        why='0 turns the eval resize off',
    ),
    Field(
        'pp.inception_crop',
        True,
        'bool',
        'Train: Inception-style random resized crop; ' 'False: resize to pp.crop.',
    ),
    Field(
        'pp.inception_crop_area',
        (0.05, 1.0),
        'range',
        'Train: (min, max) share of the image area the inception crop keeps (MoCo v3 and '
        'PiT: (0.2, 1)).',
        low=0,
        high=1,
        low_open=True,
        why='shares of the image area',
    ),
    Field(
        'pp.pad_crop',
        0,
        'int',
        'Train: zero-pad this many pixels, then a random crop '
        'back (CIFAR style); 0 turns it off.',
        low=0,
        why='0 turns pad-and-crop off',
    ),
    Field('pp.flip', True, 'bool', 'Train: random horizontal flips.'),
    Field(
        'pp.color_jitter.brightness',
        0.0,
        'number',
        'Train, colour jitter: pixels scaled by a factor uniform in [max(0, 1 - b), 1 + b]; 0 '
        'leaves it out.',
        low=0,
        why='0 leaves it out',
    ),
    Field(
        'pp.color_jitter.contrast',
        0.0,
        'number',
        'Train, colour jitter: blend with the mean luma by a factor uniform in [max(0, 1 - c), '
        '1 + c]; 0 leaves it out.',
        low=0,
        why='0 leaves it out',
    ),
    Field(
        'pp.color_jitter.saturation',
        0.0,
        'number',
        "Train, colour jitter: blend with each pixel's luma by a factor uniform in [max(0, "
        '1 - s), 1 + s]; 0 leaves it out.',
        low=0,
        why='0 leaves it out',
    ),
    Field(
        'pp.color_jitter.hue',
        0.0,
        'number',
        'Train, colour jitter: hue rotated by a share of the colour circle uniform in [-h, h]; '
        '0 leaves it out.',
        low=0,
        high=0.5,
        why='0 leaves it out',
    ),
    Field(
        'pp.color_jitter.prob',
        1.0,
        'number',
        'Train: probability that an image is colour-jittered (MoCo v3: 0.8); the four ops '
        "run in a random order, as torchvision's ColorJitter.",
        low=0,
        high=1,
        why='a probability',
    ),
    Field(
        'pp.grayscale_prob',
        0.0,
        'number',
        'Train: probability of turning an RGB image grayscale (ITU-R 601 luma in all '
        'channels); MoCo v3: 0.2.',
        low=0,
        high=1,
        why='a probability',
    ),
    Field(
        'pp.blur_prob',
        0.0,
        'number',
        'Train: probability of a Gaussian blur with sigma uniform in pp.blur_sigma; 0 turns '
        'it off.',
        low=0,
        high=1,
        why='a probability',
    ),
    Field(
        'pp.blur_sigma',
        (0.1, 2.0),
        'range',
        'Train: (min, max) standard deviation of the Gaussian blur in pixels (MoCo v3: '
        '(0.1, 2)).',
        low=0,
        low_open=True,
        why='standard deviations in pixels',
    ),
    Field(
        'pp.solarize_prob',
        0.0,
        'number',
        'Train: probability of solarizing (pixels >= 128 inverted, as PIL); 0 turns it off.',
        low=0,
        high=1,
        why='a probability',
    ),
    Field(
        'pp.mixup',
        0.0,
        'number',
        'Mixup with Beta(alpha, alpha) weights; 0 turns it off.',
        low=0,
        why='0 turns mixup off',
    ),
    Field(
        'pp.randaugment.num_layers',
        0,
        'int',
        'RandAugment ops per image; 0 turns ' 'RandAugment off.',
        low=0,
        why='0 turns RandAugment off',
    ),
    Field(
        'pp.randaugment.magnitude',
        0,
        'number',
        'RandAugment magnitude, 0 to 10 (the ' "original's scale).",
        low=0,
        high=10,
        why='RandAugment magnitudes run from 0 to 10',
    ),
    Field(
        'pp.channels',
        3,
        'choice',
        'Image channels: 3 (RGB) or 1 (grayscale); 4 for the VAE latents a diffusion run '
        'trains on.',
        choices=(1, 3, 4),
    ),
    Field(
        'pp.train_labelled_fraction',
        1.0,
        'number',
        'Train on a fixed, class-balanced share of the train split: round(fraction * n / '
        'classes) examples of each class, the first ones of each class in split order (the same '
        'for every seed; read by index, so resume is exact). For few-label fine-tuning '
        '(`bench/mae_few_labels.py`); 1 keeps the whole split.',
        low=0,
        high=1,
        low_open=True,
        why='a share of the train split; 1 keeps all of it',
    ),
    Field(
        'pp.skip_undecodable',
        False,
        'bool',
        'Image folders: an image that cannot be '
        'decoded becomes a zero image of weight 0, logged with its path (False: an error '
        'naming the file).',
    ),
    Field(
        'pp.on_device',
        False,
        'bool',
        'Keep a small TFDS train split on the devices and '
        'gather each batch inside the train step (only pp.flip augments there). A CPU-host '
        'speed-up; see `vit_jax/datasets/device_input.py`.',
    ),
    Field(
        'batch',
        512,
        'int',
        'Global train batch (all processes together).',
        low=1,
        why='examples per train step',
    ),
    Field('batch_eval', 512, 'int', 'Global eval batch.', low=1, why='examples per eval step'),
    Field(
        'prefetch',
        2,
        'int',
        'Batches prepared ahead by the input pipeline.',
        low=0,
        why='batches prepared ahead',
    ),
)
