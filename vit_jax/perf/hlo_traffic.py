"""Memory traffic of a compiled XLA program, estimated from its optimized HLO, per device.

The memory side of the roofline in vit_jax/aot.py. Like XLA's cost analysis 'bytes accessed'
it charges every top-level instruction (a fusion counts as one: what happens inside stays
on-chip) the bytes of its operands and results; unlike it, a while loop is charged its body
times its known trip count (cost analysis charges the body once, so a scan over layers or
micro-batches would look 12x or 8x cheaper than it is). Instructions that only rename buffers
(parameters, tuples, bitcasts, constants) are free; an operand that is only sliced (the layer
a scan step reads from stacked weights) is charged the slice, and an in-place update
(dynamic-update-slice) the update. An estimate, not a measurement: it does not see buffers a
kernel keeps in VMEM across iterations, or caches.
"""

import math
import re

from vit_jax.perf import hlo_flops

_ELEMENT_BYTES = {
    'pred': 1,
    's4': 0.5,
    'u4': 0.5,
    's8': 1,
    'u8': 1,
    'f8e4m3fn': 1,
    'f8e5m2': 1,
    's16': 2,
    'u16': 2,
    'f16': 2,
    'bf16': 2,
    's32': 4,
    'u32': 4,
    'f32': 4,
    's64': 8,
    'u64': 8,
    'f64': 8,
    'c64': 8,
    'c128': 16,
}
_ARRAYS = re.compile(r'\b([a-z]\w*)\[([^\]]*)\]')
_SLICES = ('dynamic-slice', 'slice')
_FREE = (
    'parameter',
    'tuple',
    'get-tuple-element',
    'bitcast',
    'constant',
    'after-all',
    'partition-id',
    'replica-id',
    'iota',
    'opt-barrier',
    'add-dependency',
)


def shape_bytes(shape):
  """Bytes of an array or tuple shape string ('bf16[2,4]{1,0}', '(f32[3], s32[])')."""
  total = 0.0
  for dtype, dimensions in _ARRAYS.findall(shape):
    if dtype in _ELEMENT_BYTES:
      sizes = [int(d.replace('<=', '')) for d in dimensions.split(',') if d.strip()]
      total += _ELEMENT_BYTES[dtype] * math.prod(sizes)
  return total


class _Traffic(hlo_flops.ComputationSum):
  """Memoized bytes per computation."""

  def _operand_bytes(self, operand, shapes):
    if _ARRAYS.match(operand) or operand.startswith('('):
      return shape_bytes(operand)
    return shape_bytes(shapes.get(hlo_flops.operand_name(operand), ''))

  def _fusion_bytes(self, inst, shapes):
    """Operands only sliced inside the fusion cost the slices; a buffer updated in place
    (an output that is a dynamic-update-slice of an operand: a scan writing one layer's
    activations into the stacked ones) costs the update, not the buffer."""
    body = self._computations[hlo_flops.callees(inst.attrs, 'calls')[0]]
    by_name = {i.name: i for i in body}
    params = {int(i.operands[0]): i.name for i in body if i.opcode == 'parameter'}

    def origin(name):  # through layout-only ops
      while name in by_name and by_name[name].opcode in ('bitcast', 'copy', 'reshape'):
        name = hlo_flops.operand_name(by_name[name].operands[0])
      return name

    root = body[-1]
    outputs = (
        [hlo_flops.operand_name(o) for o in root.operands]
        if root.opcode == 'tuple'
        else [root.name]
    )
    in_place, total = set(), 0.0
    for output in outputs:
      update = by_name.get(origin(output))
      if update is not None and update.opcode == 'dynamic-update-slice':
        in_place.add(origin(hlo_flops.operand_name(update.operands[0])))
        total += self._operand_bytes(update.operands[1], {i.name: i.shape for i in body})
      else:
        total += shape_bytes(by_name[output].shape if output in by_name else '')
    for index, operand in enumerate(inst.operands):
      param = params.get(index)
      if param is not None and param in in_place:
        continue
      sliced = self._sliced_bytes(body, param)
      total += self._operand_bytes(operand, shapes) if sliced is None else sliced
    return total

  def _sliced_bytes(self, body, param):
    """Bytes a fusion reads of its parameter `param` when every use slices it (directly or
    in a nested fusion), else None (the whole operand is read)."""
    total = 0.0
    users = [(i, [hlo_flops.operand_name(o) for o in i.operands]) for i in body]
    users = [(i, names) for i, names in users if param in names]
    for user, names in users:
      if user.opcode in _SLICES and names[0] == param and param not in names[1:]:
        total += shape_bytes(user.shape)
        continue
      if user.opcode in _SLICES:  # a slice's start index: read whole (it is a scalar)
        return None
      if user.opcode != 'fusion':
        return None
      nested = self._computations[hlo_flops.callees(user.attrs, 'calls')[0]]
      inner = {int(i.operands[0]): i.name for i in nested if i.opcode == 'parameter'}
      for index in (k for k, name in enumerate(names) if name == param):
        part = self._sliced_bytes(nested, inner.get(index))
        if part is None:
          return None
        total += part
    return total if users else None

  def _instruction(self, inst, shapes):
    op = inst.opcode
    callees = lambda key: hlo_flops.callees(inst.attrs, key)
    if op in _FREE:
      return 0.0
    if op == 'while':
      trips = hlo_flops.trip_count(inst, self._computations, self._current)  # before recursing
      per_trip = sum(self.computation(c) for c in callees('body') + callees('condition'))
      return per_trip * (trips or 1)
    if op == 'call':
      return sum(self.computation(c) for c in callees('to_apply'))
    if op == 'conditional':
      branches = callees('branch_computations') or callees('true_computation') + callees(
          'false_computation'
      )
      return max((self.computation(c) for c in branches), default=0.0)
    if op == 'fusion':
      return self._fusion_bytes(inst, shapes)
    if op in _SLICES:
      return 2 * shape_bytes(inst.shape)
    if op == 'dynamic-update-slice':
      return 2 * self._operand_bytes(inst.operands[1], shapes)
    return shape_bytes(inst.shape) + sum(self._operand_bytes(o, shapes) for o in inst.operands)


def count_text(hlo_text):
  """Estimated bytes moved to and from memory by one run of the HLO module text."""
  computations, entry = hlo_flops.parse_module(hlo_text)
  return _Traffic(computations).computation(entry)


def count(compiled):
  """Estimated bytes moved by one run of a jax.stages.Compiled (per device)."""
  return count_text(compiled.as_text())
