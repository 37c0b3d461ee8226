"""Gaussian diffusion of DiT (facebookresearch/DiT's `diffusion/`, from OpenAI's ADM), in JAX.

`create_diffusion('250')` builds the respaced process DiT samples with; `create_diffusion('')`
the 1000-step one it trains with. Methods keep the original's names (q_sample,
q_posterior_mean_variance, p_mean_variance, training_losses, p_sample_loop,
ddim_sample_loop); arrays are NHWC. guidance.py samples a DiT with classifier-free guidance.
"""

from vit_jax.diffusion.gaussian import GaussianDiffusion
from vit_jax.diffusion.gaussian import LossType
from vit_jax.diffusion.gaussian import MeanType
from vit_jax.diffusion.gaussian import VarType
from vit_jax.diffusion.schedule import get_named_beta_schedule
from vit_jax.diffusion.schedule import respace_betas
from vit_jax.diffusion.schedule import space_timesteps


def create_diffusion(
    timestep_respacing,
    noise_schedule='linear',
    use_kl=False,
    sigma_small=False,
    predict_xstart=False,
    learn_sigma=True,
    rescale_learned_sigmas=False,
    diffusion_steps=1000,
):
  """DiT's `create_diffusion`: the same arguments, defaults and choices.

  Loss: RESCALED_KL with use_kl, else RESCALED_MSE with rescale_learned_sigmas, else MSE
  (DiT's training: mse + the unscaled VB term). Variance: learned range with learn_sigma,
  else fixed small (sigma_small) or fixed large. Mean: x_0 with predict_xstart, else noise.
  """
  betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
  if use_kl:
    loss_type = LossType.RESCALED_KL
  elif rescale_learned_sigmas:
    loss_type = LossType.RESCALED_MSE
  else:
    loss_type = LossType.MSE
  if learn_sigma:
    var_type = VarType.LEARNED_RANGE
  else:
    var_type = VarType.FIXED_SMALL if sigma_small else VarType.FIXED_LARGE
  betas, timestep_map = respace_betas(betas, space_timesteps(diffusion_steps, timestep_respacing))
  return GaussianDiffusion(
      betas,
      mean_type=MeanType.START_X if predict_xstart else MeanType.EPSILON,
      var_type=var_type,
      loss_type=loss_type,
      timestep_map=timestep_map,
  )
