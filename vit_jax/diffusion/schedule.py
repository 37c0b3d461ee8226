"""Noise schedules and timestep respacing of DiT's Gaussian diffusion (from ADM / IDDPM).

Everything here is float64 numpy, as the original computes its constants; the diffusion
casts to float32 only where it indexes them.
"""

import math

import numpy as np

from vit_jax import errors

NOISE_SCHEDULES = ('linear', 'squaredcos_cap_v2')


def get_named_beta_schedule(name, num_steps):
  """betas [num_steps] (float64): 'linear' (Ho et al.'s 1e-4..0.02 for 1000 steps, scaled by
  1000 / num_steps so other lengths keep its shape) or 'squaredcos_cap_v2' (IDDPM's cosine)."""
  if not isinstance(num_steps, int) or num_steps < 1:
    raise errors.UserInputError(
        f'diffusion_steps={num_steps!r} must be a positive integer (DiT trains with 1000)'
    )
  if name == 'linear':
    scale = 1000 / num_steps
    return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
  if name == 'squaredcos_cap_v2':
    alpha_bar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array(
        [
            min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
            for i in range(num_steps)
        ],
        dtype=np.float64,
    )
  raise errors.UserInputError(
      f'noise_schedule={name!r} is not one of {NOISE_SCHEDULES} ' "(DiT uses 'linear')"
  )


def _parse_counts(spacing):
  try:
    counts = [int(part) for part in spacing.split(',')]
  except ValueError:
    counts = None
  if not counts or any(c < 1 for c in counts):
    raise errors.UserInputError(
        f'timestep_respacing={spacing!r} is not a step count ("250"), comma-separated counts '
        'per equal section ("10,10,10"), "ddimN" or "" (all steps); e.g. "250" as DiT '
        'samples.'
    )
  return counts


def space_timesteps(num_timesteps, spacing):
  """The sorted original timesteps a respaced process keeps.

  `spacing`: '' / None (all), an int or 'N' (N steps over the whole process), 'a,b,c' (the
  process cut in len equal sections, the first num_timesteps % len one step longer, with a, b,
  c steps spread over each, first and last step of a section included), a list of such counts,
  or 'ddimN' (the integer stride that gives exactly N steps from 0, as in the DDIM paper).
  """
  if spacing is None or spacing == '':
    return list(range(num_timesteps))
  if isinstance(spacing, int):
    spacing = str(spacing)
  if isinstance(spacing, str) and spacing.startswith('ddim'):
    try:
      want = int(spacing[len('ddim') :])
    except ValueError:
      want = 0
    for stride in range(1, num_timesteps):
      if want > 0 and len(range(0, num_timesteps, stride)) == want:
        return list(range(0, num_timesteps, stride))
    raise errors.UserInputError(
        f'timestep_respacing={spacing!r}: no integer stride gives exactly {want} of '
        f'{num_timesteps} steps; pick a count some stride gives (e.g. ddim{num_timesteps // 4},'
        f' ddim{num_timesteps // 20}) or the plain count "{want}".'
    )
  counts = _parse_counts(spacing) if isinstance(spacing, str) else list(spacing)
  size_per, extra = divmod(num_timesteps, len(counts))
  start, steps = 0, []
  for i, count in enumerate(counts):
    size = size_per + (1 if i < extra else 0)
    if not isinstance(count, int) or count < 1 or count > size:
      raise errors.UserInputError(
          f'timestep_respacing={spacing!r}: section {i} has {size} of the {num_timesteps} steps '
          f'and cannot take {count}; use at most {size} per section (or fewer sections).'
      )
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    position = 0.0
    for _ in range(count):  # accumulated, not stride * j: the original's rounding exactly
      steps.append(start + round(position))
      position += stride
    start += size
  return sorted(set(steps))


def respace_betas(betas, timesteps):
  """(betas, timestep_map) of the process that keeps only `timesteps` (sorted) of `betas`:
  each kept step's beta spans the alphas_cumprod ratio to the previous kept step."""
  alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, np.float64))
  keep = set(timesteps)
  new_betas, timestep_map, last = [], [], 1.0
  for i, alpha_cumprod in enumerate(alphas_cumprod):
    if i in keep:
      new_betas.append(1 - alpha_cumprod / last)
      last = alpha_cumprod
      timestep_map.append(i)
  return np.array(new_betas, np.float64), np.array(timestep_map, np.int64)
