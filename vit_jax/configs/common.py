"""Fields shared by every training config; `vit.py`, `pit.py` and `augreg.py` fill them in.

Every field is read: data fields by vit_jax/input_pipeline.py, optimizer fields by
vit_jax/optim.py, the rest by vit_jax/train.py.
"""
import difflib

import ml_collections


def get_config():
  """Defaults of the original's fine-tuning setup (SGD + momentum, warmup then cosine)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Data.
  config.dataset = ''
  config.tfds_data_dir = ml_collections.config_dict.placeholder(str)
  config.tfds_manual_dir = ml_collections.config_dict.placeholder(str)
  # A TFDS dataset not prepared in tfds_data_dir is downloaded and prepared, as in the
  # original (offline: a clear error within seconds); False: only prepared data, never a
  # download (vit_jax/datasets/tfds_download.py).
  config.tfds_download = True
  config.fashion_mnist_dir = '/usr/share/datasets/fashion-mnist'
  config.pp = ml_collections.ConfigDict()
  config.pp.train = 'train'
  config.pp.test = 'test'
  config.pp.crop = 224
  config.pp.resize = 0  # eval: resize the shorter side to this, then central crop (0: off)
  config.pp.inception_crop = True
  config.pp.pad_crop = 0  # train: zero-pad this many pixels, random crop back (0: off)
  config.pp.flip = True
  config.pp.mixup = 0.0  # Beta(alpha, alpha) mixing; 0 disables
  config.pp.randaugment = ml_collections.ConfigDict({'num_layers': 0, 'magnitude': 0})
  config.pp.channels = 3
  # Image folders: an image that cannot be decoded stops the run with an error naming the
  # file (False), or becomes a zero image with weight 0 in its batch, logged with its path.
  config.pp.skip_undecodable = False
  # Small TFDS train splits (Fashion-MNIST, CIFAR): kept on the devices, each batch gathered
  # in the train step; only pp.flip is supported there (vit_jax/device_input.py).
  config.pp.on_device = False
  config.batch = 512
  config.batch_eval = 512
  config.prefetch = 2
  # 'classification' (labels, cross-entropy) or 'mae' (masked-autoencoder pre-training, with
  # the fields of config.mae: configs/mae.py); see vit_jax/objectives.py.
  config.objective = 'classification'
  # Model (a configs/models.py entry) and pretrained weights.
  config.model = ml_collections.ConfigDict()
  config.pretrained_path = ml_collections.config_dict.placeholder(str)
  # Fine-tuning recipes (configs/augreg.py) set this: a run without pretrained_path is then
  # an error, not a silent run from scratch.
  config.pretrained_required = False
  # Every parameter but the head must come from pretrained_path (False: partial loads).
  config.pretrained_strict = True
  config.dtype = 'float32'  # compute dtype of activations
  # Dtype of the parameters (and so of the optimizer state); 'bfloat16' halves their memory.
  config.param_dtype = 'float32'
  # Devices. cpu_devices: CPU devices JAX creates on a host without accelerators (0: JAX's
  # default or XLA_FLAGS, -1: one per core); set by main.py before JAX starts.
  config.cpu_devices = 0
  config.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'seq': 1})
  # Optimizer and schedule.
  config.optim = 'sgd'
  config.momentum = 0.9
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.weight_decay = 0.0
  config.base_lr = 0.03
  config.warmup_steps = 500
  config.total_steps = 10_000
  config.decay_type = 'cosine'
  config.linear_end = 1e-5
  config.grad_norm_clip = 1.0
  # Layer-wise lr decay (BEiT, MAE fine-tuning): block i's lr times layer_decay ** (depth + 1
  # - i), the embedding's the smallest, the head's the full lr. 1 turns it off.
  config.layer_decay = 1.0
  config.accum_steps = 8
  config.label_smoothing = 0.0
  # Patch dropout: the first `steps` train steps classify each image from a random subset of
  # its patch tokens, a fraction `rate` left out (vit_jax/objectives.py); rate 0 turns it off.
  config.patch_dropout = ml_collections.ConfigDict({'rate': 0.0, 'steps': 0})
  # Eval: average the logits of each test image and its mirror image (flip test-time
  # augmentation, for models trained with pp.flip); the single-view accuracy is logged too.
  config.eval_flip = False
  # Loop.
  config.eval_every = 100
  config.progress_every = 10
  config.checkpoint_every = 1_000
  config.keep_checkpoints = 3
  # A jax.profiler trace of steps first_step .. first_step + num_steps - 1 into
  # WORKDIR/plugins/profile (TensorBoard's profile tab); first_step 0: off.
  config.profile = ml_collections.ConfigDict({'first_step': 0, 'num_steps': 5})
  return config


def unknown_choice(kind, value, choices, usage=''):
  """A ValueError for an unknown name in a config string, naming the closest choice."""
  close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
  hint = f"did you mean '{close[0]}'? " if close else ''
  return ValueError(f'unknown {kind} {value!r}; {hint}one of {sorted(choices)}' +
                    (f'. {usage}' if usage else ''))
