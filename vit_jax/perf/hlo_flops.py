"""FLOPs of a compiled XLA program, counted from its optimized HLO text, per device.

`compiled.cost_analysis()['flops']` counts the body of a while loop once, so a lax.scan over
layers, attention blocks or micro-batches reports a fraction of the work, and it counts
nothing for the backward Pallas attention kernels. `count(compiled)` walks
`compiled.as_text()` instead:

- dot: 2 x output elements x contracted size; convolution: 2 x output features x batch x
  input features per group x the (output, kernel) position pairs that land on real input
  (padding excluded), as XLA's cost analysis counts them;
- fusions and calls are summed through; a while loop counts its body (and condition) times
  its `known_trip_count`, or without one the N of an `i < N` condition whose counter starts
  at a constant (TPU loop transformations drop the annotation); otherwise (a data-dependent
  loop) the body is counted once and the loop is named in `Flops.loops_without_trip_count`;
  a conditional counts its costliest branch;
- cuBLAS GEMM custom-calls (XLA:GPU's dots) count like dots;
- Pallas TPU flash-attention kernels (custom-calls named by jax's flash_attention) count
  the attention's model FLOPs, no recompute: forward 2*b*h*Lq*Lk*(dk + dv), backward
  dkv 2*b*h*Lq*Lk*(dk + 2*dv) and dq 2*b*h*Lq*Lk*dk (4, 6 and 2 x b*h*Lq*Lk*d when dk = dv),
  counted as non-causal attention. Other custom-calls (splash attention, cuDNN
  convolutions and attention, other kernels) count 0 and are named in `Flops.uncounted`.

Element-wise work (softmax, normalisation, the optimizer) is not counted: FLOPs here are
matrix-unit FLOPs, the numerator of MFU. The HLO of an SPMD program is one device's
program, so the count is per device.
"""

import dataclasses
import math
import re

import numpy as np

# Custom-call targets that move or relabel data and do no arithmetic.
_NO_FLOP_TARGETS = (
    'ConcatBitcast',
    'Sharding',
    'SPMDFullToShardShape',
    'SPMDShardToFullShape',
    'AllocateBuffer',
    'LayoutConstraint',
    'annotate_device_placement',
    'MoveToHost',
    'MoveToDevice',
    'PinToDevice',
    'X64Combine',
    'X64SplitLow',
    'X64SplitHigh',
    'cu_threefry2x32',
    'xla_python_cpu_callback',
    'xla_python_gpu_callback',
    'xla_ffi_python_cpu_callback',
    'AsyncCollectiveStart',
    'AsyncCollectiveDone',
)
_COMPUTATION = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$')
_ARRAY = re.compile(r'^[a-z]\w*\[([^\]]*)\](?:\{[^}]*\})?')
_OPCODE = re.compile(r'\s*([\w\-]+)\(')


@dataclasses.dataclass(frozen=True)
class Flops:
  """FLOPs of one device's program, and what the count could not see."""

  flops: int
  uncounted: tuple[str, ...] = ()  # custom-calls counted as 0 (kernel name or target)
  loops_without_trip_count: tuple[str, ...] = ()  # while loops whose body counted once


@dataclasses.dataclass
class _Instruction:
  name: str
  shape: str
  opcode: str
  operands: list[str]
  attrs: str


def _closing(text, start):
  """Index just past the bracket group that opens at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    if text[i] in '([{':
      depth += 1
    elif text[i] in ')]}':
      depth -= 1
      if depth == 0:
        return i + 1
  raise ValueError(f'unbalanced HLO text: {text[start:start + 200]!r}')


def _split_top(text):
  """Splits at commas outside brackets."""
  parts, depth, begin = [], 0, 0
  for i, ch in enumerate(text):
    if ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      parts.append(text[begin:i])
      begin = i + 1
  parts.append(text[begin:])
  return [p.strip() for p in parts if p.strip()]


def _parse_instruction(line):
  match = _INSTRUCTION.match(line)
  if not match:
    return None
  name, rest = match.groups()
  if rest.startswith('('):
    end = _closing(rest, 0)
  else:
    array = _ARRAY.match(rest)
    if not array:
      return None
    end = array.end()
  shape, rest = rest[:end], rest[end:]
  opcode = _OPCODE.match(rest)
  if not opcode:
    return None
  open_at = opcode.end() - 1
  close_at = _closing(rest, open_at)
  operands = _split_top(re.sub(r'/\*.*?\*/', '', rest[open_at + 1 : close_at - 1]))
  return _Instruction(name, shape, opcode.group(1), operands, rest[close_at:])


def parse_module(text):
  """{computation name: [instructions]} and the entry computation's name."""
  computations, entry, current = {}, None, None
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header and current is None:
      current = computations.setdefault(header.group(2), [])
      if header.group(1):
        entry = header.group(2)
    elif line.strip() == '}':
      current = None
    elif current is not None:
      instruction = _parse_instruction(line)
      if instruction is not None:
        current.append(instruction)
  if entry is None:
    raise ValueError('no ENTRY computation in the HLO text')
  return computations, entry


def operand_name(operand):
  """The instruction an operand names: 'f32[2]{0} %x' or '%x' -> 'x'."""
  return operand.split()[-1].lstrip('%')


def dims(shape):
  """The dimensions of an array shape string such as 'bf16[2,4]{1,0:T(8,128)}'."""
  match = _ARRAY.match(shape.strip())
  if not match:
    raise ValueError(f'not an array shape: {shape!r}')
  return tuple(int(d.replace('<=', '')) for d in match.group(1).split(',') if d.strip())


def _attr(attrs, key, pattern=r'([^,\s]+)'):
  match = re.search(r'(?:^|[\s,])' + key + '=' + pattern, attrs)
  return match.group(1) if match else None


def _int_list(text):
  return [int(x) for x in text.split(',') if x.strip()] if text else []


def _operand_shape(operand, shapes):
  """An operand's array shape: printed inline ('f32[2,3]{1,0} %x') or from its definition."""
  if _ARRAY.match(operand):
    return dims(operand)
  return dims(shapes[operand_name(operand)])


def _dot_flops(inst, shapes):
  lhs = _operand_shape(inst.operands[0], shapes)
  contracted = math.prod(
      lhs[d] for d in _int_list(_attr(inst.attrs, 'lhs_contracting_dims', r'\{([\d,]*)\}'))
  )
  return 2 * math.prod(dims(inst.shape)) * contracted


def _valid_positions(size_in, size_out, kernel, stride, pad_low, lhs_dilate, rhs_dilate):
  """(output, kernel) index pairs of one spatial dimension that read a real input element."""
  if (
      size_in == size_out == kernel == lhs_dilate
      and rhs_dilate == 1
      and pad_low == 0
      and stride == max(1, size_in - 1)
  ):
    return size_in  # a batch dimension carried as a dilated spatial one: one pair per output
  out = np.arange(size_out, dtype=np.int64)[:, None]
  k = np.arange(kernel, dtype=np.int64)[None, :]
  at = out * stride - pad_low + k * rhs_dilate  # index into the dilated, padded input
  ok = (at >= 0) & (at <= (size_in - 1) * lhs_dilate) & (at % lhs_dilate == 0)
  return int(ok.sum())


def _window(attrs):
  """Per spatial dimension: (stride, pad_low, lhs_dilate, rhs_dilate)."""
  window = _attr(attrs, 'window', r'\{([^}]*)\}') or ''
  fields = dict(f.split('=') for f in window.split() if '=' in f)
  n = len(fields['size'].split('x')) if 'size' in fields else 0
  get = lambda key: [int(x) for x in fields[key].split('x')] if key in fields else [1] * n
  pads = [int(p.split('_')[0]) for p in fields['pad'].split('x')] if 'pad' in fields else [0] * n
  return list(zip(get('stride'), pads, get('lhs_dilate'), get('rhs_dilate')))


def _conv_flops(inst, shapes):
  lhs = _operand_shape(inst.operands[0], shapes)
  rhs = _operand_shape(inst.operands[1], shapes)
  out = dims(inst.shape)
  labels = _attr(inst.attrs, 'dim_labels')
  lhs_labels, rest = labels.split('_', 1)
  rhs_labels, out_labels = rest.split('->')
  groups = int(_attr(inst.attrs, 'feature_group_count') or 1)
  batch_groups = int(_attr(inst.attrs, 'batch_group_count') or 1)
  pairs = 1
  for d, (stride, pad, lhs_dilate, rhs_dilate) in enumerate(_window(inst.attrs)):
    spatial = str(d)
    pairs *= _valid_positions(
        lhs[lhs_labels.index(spatial)],
        out[out_labels.index(spatial)],
        rhs[rhs_labels.index(spatial)],
        stride,
        pad,
        lhs_dilate,
        rhs_dilate,
    )
  fmas = (
      lhs[lhs_labels.index('f')]
      // groups
      * out[out_labels.index('f')]
      * (lhs[lhs_labels.index('b')] // batch_groups)
      * pairs
  )
  return 2 * fmas


# Pallas flash attention (jax.experimental.pallas.ops.tpu.flash_attention): kernel name ->
# model FLOPs as multiples of b*h*Lq*Lk, from head dims (dk of q/k, dv of v).
_ATTENTION_KERNELS = (
    ('flash_mha_bwd_dkv', lambda dk, dv: 2 * (dk + 2 * dv)),
    ('flash_mha_bwd_dq', lambda dk, dv: 2 * dk),
    ('flash_attention', lambda dk, dv: 2 * (dk + dv)),
)


def _kernel_flops(inst, shapes):
  """Model FLOPs of a known Pallas attention kernel, or None."""
  base = re.sub(r'\.\d+$', '', inst.name)
  for prefix, per_pair in _ATTENTION_KERNELS:
    if base.startswith(prefix) and len(inst.operands) >= 3:
      q, k, v = (_operand_shape(o, shapes) for o in inst.operands[:3])
      if len(q) != 4 or len(k) != 4 or q[:2] != k[:2]:
        return None
      b, h, q_len, dk = q
      return b * h * q_len * k[2] * per_pair(dk, v[3])
  return None


def _gemm_flops(inst, shapes):
  """A cuBLAS GEMM custom-call (XLA:GPU's dots), or None without its dot numbers: they are
  in its gemm_backend_config; its result is the first element of (result, workspace)."""
  contracting = re.search(r'lhs_contracting_dimensions\W+\[([^\]]*)\]', inst.attrs)
  if contracting is None:
    return None
  result = inst.shape[1:] if inst.shape.startswith('(') else inst.shape
  lhs = _operand_shape(inst.operands[0], shapes)
  contracted = math.prod(lhs[int(d)] for d in re.findall(r'\d+', contracting.group(1)))
  return 2 * math.prod(dims(result)) * contracted


def _constant(name, instructions):
  """The integer an instruction named `name` holds, through copies; None if not constant."""
  by_name = {i.name: i for i in instructions}
  inst = by_name.get(name)
  while inst is not None and inst.opcode == 'copy':
    inst = by_name.get(operand_name(inst.operands[0]))
  if inst is None or inst.opcode != 'constant':
    return None
  try:
    return int(inst.operands[0])
  except ValueError:
    return None


def trip_count(inst, computations, caller):
  """Iterations of a while instruction: XLA's known_trip_count, else read from a loop
  `i < N` whose counter starts at a constant (the form lax.scan lowers to, which TPU loop
  transformations leave without the annotation); None when neither applies."""
  known = re.search(r'known_trip_count\W+n\W+(\d+)', inst.attrs)
  if known:
    return int(known.group(1))
  condition = computations.get((callees(inst.attrs, 'condition') or [''])[0])
  if not condition or not inst.operands:
    return None
  root, names = condition[-1], [operand_name(o) for o in condition[-1].operands]
  if root.opcode == 'fusion':  # XLA:CPU wraps the compare in a fusion: map its parameters
    fused = computations.get((callees(root.attrs, 'calls') or [''])[0]) or [None]
    params = {i.name: int(i.operands[0]) for i in fused if i and i.opcode == 'parameter'}
    root = fused[-1]
    if root is None or root.opcode != 'compare':
      return None
    inner = [operand_name(o) for o in root.operands]
    if not all(n in params for n in inner):
      return None
    names = [names[params[n]] for n in inner]
  if root.opcode != 'compare':
    return None
  direction = _attr(root.attrs, 'direction')
  if direction == 'GT':
    names, direction = names[::-1], 'LT'
  if direction != 'LT':
    return None
  by_name = {i.name: i for i in condition}
  counter, bound = by_name.get(names[0]), _constant(names[1], condition)
  if counter is None or counter.opcode != 'get-tuple-element' or bound is None:
    return None
  index = int(_attr(counter.attrs, 'index'))
  init = {i.name: i for i in caller}.get(operand_name(inst.operands[0]))
  if init is None or init.opcode != 'tuple' or index >= len(init.operands):
    return None
  start = _constant(operand_name(init.operands[index]), caller)
  return None if start is None else max(bound - start, 0)


def callees(attrs, key):
  value = _attr(attrs, key, r'(\{[^}]*\}|%?[\w.\-]+)')
  if value is None:
    return []
  return [c.strip().lstrip('%') for c in value.strip('{}').split(',') if c.strip()]


class ComputationSum:
  """A memoized sum over each HLO computation's instructions of `_instruction(inst, shapes)`
  (subclasses say what an instruction costs); `_current` is the computation being summed,
  where a while loop's trip count is read."""

  def __init__(self, computations):
    self._computations = computations
    self._memo: dict[str, float] = {}
    self._current = []

  def computation(self, name):
    if name not in self._memo:
      instructions = self._computations[name]
      shapes = {i.name: i.shape for i in instructions}
      total = 0
      for inst in instructions:
        self._current = instructions
        total += self._instruction(inst, shapes)
      self._memo[name] = total
    return self._memo[name]

  def _instruction(self, inst, shapes):
    raise NotImplementedError


class _Counter(ComputationSum):
  """Memoized FLOPs per computation, with what it could not count."""

  def __init__(self, computations):
    super().__init__(computations)
    self.uncounted: list[str] = []
    self.loops_without_trip_count: list[str] = []

  def _instruction(self, inst, shapes):
    op = inst.opcode
    if op == 'dot':
      return _dot_flops(inst, shapes)
    if op == 'convolution':
      return _conv_flops(inst, shapes)
    if op in ('fusion', 'async-start'):
      return sum(self.computation(c) for c in callees(inst.attrs, 'calls'))
    if op == 'call':
      return sum(self.computation(c) for c in callees(inst.attrs, 'to_apply'))
    if op == 'while':
      return self._while(inst)
    if op == 'conditional':
      branches = callees(inst.attrs, 'branch_computations') or callees(
          inst.attrs, 'true_computation'
      ) + callees(inst.attrs, 'false_computation')
      return max((self.computation(c) for c in branches), default=0)
    if op == 'custom-call':
      return self._custom_call(inst, shapes)
    return 0

  def _while(self, inst):
    trips = trip_count(inst, self._computations, self._current)  # before recursing
    per_trip = sum(
        self.computation(c) for c in callees(inst.attrs, 'body') + callees(inst.attrs, 'condition')
    )
    if trips is None:
      self.loops_without_trip_count.append(inst.name)
      return per_trip
    return trips * per_trip

  def _custom_call(self, inst, shapes):
    target = _attr(inst.attrs, 'custom_call_target', r'"([^"]*)"') or '?'
    if target.startswith('__cublas$'):
      flops = _gemm_flops(inst, shapes)
    elif target == 'tpu_custom_call':
      flops = _kernel_flops(inst, shapes)
      target = re.sub(r'\.\d+$', '', inst.name)  # a Pallas kernel is known by its name
    else:
      flops = 0 if target in _NO_FLOP_TARGETS else None
    if flops is None:
      self.uncounted.append(target)
    return flops or 0


def count_text(hlo_text):
  """Flops of the optimized HLO module text of one program (see the module docstring)."""
  computations, entry = parse_module(hlo_text)
  counter = _Counter(computations)
  flops = counter.computation(entry)
  return Flops(
      flops, tuple(sorted(set(counter.uncounted))), tuple(counter.loops_without_trip_count)
  )


def count(compiled):
  """Flops of a jax.stages.Compiled (per device)."""
  return count_text(compiled.as_text())


def describe(result: Flops) -> str | None:
  """A warning line for what the count missed, or None when it saw everything."""
  notes = []
  if result.uncounted:
    notes.append('custom-calls counted as 0 FLOPs: ' + ', '.join(result.uncounted))
  if result.loops_without_trip_count:
    notes.append(
        'while loops without a known trip count, body counted once: '
        + ', '.join(result.loops_without_trip_count)
    )
  return '; '.join(notes) or None
