"""FLOPs per train step and the share of the accelerator's peak a run achieves (MFU).

The FLOPs are counted once from the compiled step (vit_jax/perf/hlo_flops.py): every matrix
multiplication the program really runs, including rematerialisation recompute, with scanned
loops multiplied out and Pallas attention kernels at their model FLOPs. Per device, since
every device runs the same SPMD program; `flops_per_step` is that times the device count.
"""

from absl import logging

from vit_jax.perf import hardware
from vit_jax.perf import hlo_flops


class StepFlops:
  """The counted FLOPs of one compiled train step and the devices' peak."""

  def __init__(self, compiled, devices):
    devices = list(devices)
    counted = hlo_flops.count(compiled)
    self.per_device = counted.flops
    self.num_devices = len(devices)
    self.peak_per_device = hardware.peak_flops_per_device(devices)
    logging.info(
        'Train step: %.4g FLOPs (%.4g per device x %d devices, counted from the '
        'compiled program); %s',
        self.per_step,
        self.per_device,
        self.num_devices,
        f'peak {self.peak_per_device / 1e12:.4g} TFLOP/s per device '
        f'({devices[0].device_kind}): MFU is logged'
        if self.peak_per_device
        else f'no known peak for {devices[0].device_kind!r}: MFU is not logged',
    )
    missed = hlo_flops.describe(counted)
    if missed:
      logging.warning('Train step FLOPs are a lower bound: %s', missed)

  @property
  def per_step(self):
    return self.per_device * self.num_devices

  def scalars(self, steps, seconds):
    """Metrics of `steps` steps that took `seconds` of wall-clock time."""
    achieved = self.per_device * steps / seconds  # FLOP/s of one device
    scalars = {'flops_per_step': float(self.per_step), 'tflops_per_sec_per_device': achieved / 1e12}
    if self.peak_per_device:
      scalars['mfu'] = achieved / self.peak_per_device
    return scalars
