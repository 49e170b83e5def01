"""What a search space must say so that every proxy, searcher, the cost model and the experiments
can use it without naming it: the contract (`SearchSpace`, `Net`, `Outputs`). The registry of
spaces is `search_spaces.registry`.

A space describes
  * its archs: `decode` (string -> arch, one-line ValueError on a bad string), `encode`,
    `sample`, `enumerate` (None for spaces too big to list), `to_array` (archs -> int32 rows
    [K, D], the form the compiled network takes), `stratum` (a label to stratify samples by);
  * its network: `net(group, input_shape, num_classes)` returns a `Net` whose `init` and
    `apply` take an arch row as a traced array, so one compile serves every arch of a `group`
    (archs whose tensors have the same shapes; `group(arch)` names it) and candidates batch
    under `vmap` / `lax.map`. A space with one shape for all archs has one group, `()`;
  * `mutate(arch, rng)`: a neighbour in the same group, for evolution (optional);
  * `train_net(arch)`: the arch's own network (same walk, unpadded) for training;
  * its lowering to the hardware layer graph: `lower(arch, input_shape, num_classes)`.

`Net.apply(params, arch_row, x, probes=None, bn='batch', stats=None, rescale=False, codes=False,
features=False, stage_features=False, stage_shifts=None) -> Outputs` (the one function every
proxy of `engine.proxies` calls):
  * layer weights (the Conv/Linear kernels the zero-cost proxies differentiate) are the leaves
    `layer_axes` names (default: the leaves named 'w'); weights an arch does not use must get
    zero gradient (mask them inside apply), so proxies see only the arch's own layers;
  * `probes` (`Net.probes`) multiply each layer's output per sample and channel (fisher reads
    d loss / d probe);
  * `bn='identity'` makes any BatchNorm the identity (synflow's BN-free net); `stats` holds BN
    statistics fixed at those a previous call returned in `Outputs.stats` (the independent NTK);
  * `rescale` may divide the features by stop-gradient factors to stay in float32 range, their
    log summed in `Outputs.log_scale` (synflow on deep nets);
  * `codes` / `features` ask for `Outputs.codes` / `features` and `bn_log_sigma` (a network may
    fill them always; NB201's computes them only when asked, so the other proxies' programs
    stay as small as they were);
  * `stage_features=True` asks for `Outputs.stage_features`, the output of every block (a
    network may fill it always); `stage_shifts` (a tuple with one array per stage feature, of
    its shape) makes each block read `stop_gradient(previous block's output) + shift`, so the
    gradient of block i's output with respect to shift i-1 is block i's own input Jacobian
    (AZ-NAS's trainability; a block the arch lacks must then pass its input on unchanged). A
    network without these options ignores them and leaves `stage_features` empty.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Outputs(NamedTuple):
  logits: jax.Array        # [B, classes]
  # per nonlinearity: (pre-activation [B, ...], unit mask: a bool scalar (the whole block) or
  # broadcastable to the pre-activation's per-sample shape: the units the arch really has); the
  # order is fixed by the network, not by the arch
  codes: tuple = ()
  piecewise_linear: Any = True  # bool: every nonlinearity is ReLU-like (linear regions exist)
  features: Any = None     # [B, ...] the features the classifier reads (zeros where padded)
  bn_log_sigma: Any = 0.0  # sum over BN layers of log sqrt(mean channel batch variance); 0 if none
  stats: Any = None        # the BN statistics used (None: no BN), for `apply(stats=...)`
  log_scale: Any = 0.0     # log of the factor `rescale` divided the output by
  # per block (stem / cell / layer / reduction block, in network order): (output map
  # [B, H, W, C], unit mask: a bool scalar (the arch has the block) or broadcastable to the map's
  # per-sample shape, as in `codes`); () where the network does not fill it (AZ-NAS needs it)
  stage_features: tuple = ()


def path_key(path) -> str:
  """'a/b/c' of a pytree path (dict keys)."""
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def _named_w(path, leaf):
  return tuple(range(jnp.ndim(leaf))) if str(getattr(path[-1], 'key', '')) == 'w' else None


@dataclasses.dataclass(frozen=True)
class Net:
  init: Callable    # (key, arch_row, kind='torch_default'|'kaiming_normal') -> params
  apply: Callable   # (params, arch_row, x, **options above) -> Outputs
  # (arch_row) -> {layer: fan-in of its weight} (traced scalars or ints); a layer is named by
  # its weight leaf's path key without a final '/w' (`path_key`)
  fan_in: Callable
  input_shape: tuple
  num_classes: int

  example_row: Any = None  # one arch row of the group (for shapes)
  # (path, leaf) -> the axes of ONE layer's weight in a layer-weight leaf (leading axes stack
  # layers, as NB201's cells x edges), None for other leaves. Default: leaves named 'w'
  layer_axes: Callable = _named_w
  # path -> whether the NTK differentiates that parameter (TE-NAS: every PyTorch 'weight')
  ntk_weight: Callable = lambda path: str(getattr(path[-1], 'key', '')) == 'w'
  # how its linear regions are counted (`engine.proxies.linear_regions`): 'patterns' (distinct
  # activation patterns over small inputs, TE-NAS; needs a thin net) or 'segments'
  regions: str = 'segments'
  # relaxed masks batch under vmap (weights independent of the arch) instead of lax.map
  vmap_masks: bool = False
  # floats per sample of the widest activation (bounds the coupled NTK's cotangent chunks);
  # 0: 16x the input's
  widest: int = 0
  label: str = ''  # how reports name it ('C=16 N=5'); '': the space's own network
  # (arch_row) -> {leaf path key: bool array}: the parameter tensors the arch's own (unpadded)
  # network has, as PyTorch's `named_parameters` lists them (conv/linear weights, BN scales and
  # shifts, biases), a layer that cannot reach the output or sees only zeros included (PyTorch
  # builds it all the same; a layer of the padded network the arch lacks is not); each array has
  # the shape of its leaf's leading axes that stack several tensors (NB201's [cells, edges]; ()
  # for a leaf that is one tensor).
  # VKDNW samples one weight of each (`engine.proxies.vkdnw`); None: the layer weights
  # `layer_axes` names whose gradient is not zero
  param_tensors: Optional[Callable] = None

  def probes(self, params, batch: int):
    """Ones [*lead, B, C_out] per layer weight (None elsewhere), the factors `apply(probes=)`
    multiplies the layer outputs by."""
    def ones(path, w):
      axes = self.layer_axes(path, w)
      if axes is None:
        return None
      lead = w.shape[:min(axes)] if axes else ()
      return jnp.ones(lead + (batch, w.shape[-1]), w.dtype)
    return jax.tree_util.tree_map_with_path(ones, params)


@dataclasses.dataclass(frozen=True)
class Relaxation:
  """A space's archs of one group as choices, and its supernet over them (what `prune` and
  `grad_prune` need; a space without one gets a one-line refusal from those searchers).

  An arch of group g is one option per decision slot: a row of option indices [S], slot s
  having `slots(g)[s]` options. A relaxed arch is a mask [S, O] (O = max(slots(g))): a one-hot
  row is one arch, a multi-hot row the supernet holding those options (their outputs summed,
  as NB201's supernet sums the ops of an edge), soft values weight the options (gradients).
  Entries past a slot's own option count are 0. Every arch has exactly one row (slots an arch
  does not use, e.g. the kernel of a block past its stage's depth, hold option 0), so rows and
  archs map one to one.
  """
  slots: Callable[[Hashable], tuple]                # group -> options per slot
  to_rows: Callable[[Sequence[Any]], np.ndarray]   # archs (one group) -> int [K, S]
  from_rows: Callable[[Hashable, np.ndarray], list]  # (group, rows [K, S]) -> archs
  # (group, input_shape, num_classes) -> a Net whose arch row is a float mask [S, O]; at the
  # one-hot mask of arch a, init and apply equal `SearchSpace.net`'s at a's row (same key)
  net: Optional[Callable[..., Net]] = None
  # (group, masks [K, S, O] (jnp), device, runtime, input_shape, num_classes) ->
  # {'sram_bytes', 'flash_bytes', 'latency_ms', 'energy_mj', 'macs', 'params': jnp [K]}:
  # differentiable in the masks and equal to the lowered arch's cost at one-hot masks (a gated
  # hardware template, `hardware.cost(template, gates, widths)`, as NB201's `graph.cost`)
  cost: Optional[Callable[..., dict]] = None
  # an option `prune` leaves out of its start supernet unless --prune_none says otherwise
  # (NB201's `none`); None: every option is in it
  optional: Optional[int] = None
  # (rows [K, S]) -> bool [K]: archs whose output depends on the input (NB201: a path through
  # non-`none` ops); None: all
  valid: Optional[Callable[[np.ndarray], np.ndarray]] = None
  # (rows [K, S]) -> rows [K, S] with choices that cannot change the network made equal (NB201:
  # edges that carry nothing to the output set to `none`): equal results are one network, so a
  # search may pick any of them when no proxy tells them apart; None: rows are networks
  same_network: Optional[Callable[[np.ndarray], np.ndarray]] = None


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  name: str
  summary: str
  decode: Callable[[str], Any]
  encode: Callable[[Any], str]
  sample: Callable[[np.random.Generator, int], list]
  enumerate: Optional[Callable[[], list]]
  to_array: Callable[[Sequence[Any]], np.ndarray]
  net: Callable[..., Net]                  # (group, input_shape, num_classes) -> Net
  lower: Callable[..., Any]                # (arch, input_shape, num_classes) -> hardware Graph
  # (arch, input_shape, num_classes) -> (init(key) -> params, apply(params, x) -> logits): the
  # arch's own network at its own shapes, for training
  train_net: Optional[Callable[..., tuple]] = None
  # (arch, rng) -> a neighbouring arch of the same group (evolution); None: no evolution
  mutate: Optional[Callable[[Any, np.random.Generator], Any]] = None
  group: Callable[[Any], Hashable] = lambda arch: ()
  stratum: Callable[[Any], str] = lambda arch: ''
  input_shape: tuple = (32, 32, 3)
  num_classes: int = 10
  # a group's input shape when groups differ in resolution; None: `input_shape`
  group_input_shape: Callable[[Hashable], Optional[tuple]] = lambda group: None
  # the archs as choices and their supernet (prune, grad_prune); None: those searchers refuse
  relax: Optional[Relaxation] = None
  # (group, settings (`engine.proxies.ScoreSettings`), relaxed) -> {'zc' | 'ntk' | 'lr': Net}:
  # the networks the proxies run on, each taking arch rows (relaxed: masks [S, O]). A space
  # whose proxies use other sizes than its own network gives them here (NB201: TE-NAS's and
  # NAS-Bench-Suite-Zero's widths, TE-NAS's thin linear-region net); None: `net` (`relax.net`)
  # at the group's shape for all three
  proxy_nets: Optional[Callable] = None
  # (group, masks [K, S, O], settings) -> {'params': [K], 'flops': [K]} (flops as
  # multiply-accumulates) of the archs or supernets; None: from the lowered graph (archs) or
  # `relax.cost` (supernets)
  size: Optional[Callable] = None
  # (arch, C, N, dataset, num_classes) -> the arch's lowered graph at width C and cells N with
  # its constants kept (`hardware.graph.prune(constants=True)`): what a space with size settings
  # trains and exports (NB201: --train_width, --train_cells; `engine.train.trainable`). None: the
  # space trains and exports `lower`'s graph at its own size
  sized_lower: Optional[Callable[..., Any]] = None
  # (op, initializer) pairs: the kernel init (`engine.quant.graph_qat.INITS`) of the space's layers
  # without BN when trained (NB201: he_normal convs, lecun_normal dense); (): PyTorch's default
  train_inits: tuple = ()
  # the trainer's peak learning rate when none is given (--lr, --finalist_lr): a network
  # without BN needs a lower one than NB201's 0.1 (tinycnn diverges there)
  train_lr: float = 0.1
  # dataset name -> (input shape, classes) the space is built for; None: `input_shape` and
  # `num_classes` only
  datasets: Optional[Mapping[str, tuple]] = None

  def shape_for(self, dataset: Optional[str] = None) -> tuple:
    """(input shape, classes) of the network for `dataset` (None: the space's own)."""
    if dataset is None or self.datasets is None:
      return tuple(self.input_shape), self.num_classes
    if dataset not in self.datasets:
      raise ValueError(f'{self.name} is not defined for --dataset={dataset}; choose '
                       f'{" or ".join(self.datasets)}')
    return tuple(self.datasets[dataset][0]), self.datasets[dataset][1]

  def shape_of(self, group) -> tuple:
    return tuple(self.group_input_shape(group) or self.input_shape)

  def parse(self, archs, seed: int = 0) -> list:
    """--archs as archs: 'all' | 'random:N' (drawn with `seed`) | a file with one arch string
    per line ('#' starts a comment line) | 'a,b,c' | a list of archs or strings. Bad input
    raises a one-line ValueError (a file's names its line)."""
    if not isinstance(archs, str):
      return [self.decode(a) if isinstance(a, str) else a for a in archs]
    spec = archs.strip()
    if spec in ('', 'all'):
      if self.enumerate is None:
        raise ValueError(f'{self.name} is too large to enumerate; use --archs=random:N')
      return self.enumerate()
    count = random_count(spec)
    if count is not None:
      return self.sample(np.random.default_rng(seed), count)
    path = pathlib.Path(spec)
    if path.is_file():
      return self._parse_file(path)
    if '/' in spec or path.suffix in ('.txt', '.csv'):
      raise ValueError(f'--archs={spec}: no such file; give all, random:N, {self.name} arch '
                       f'strings (comma-separated) or a file with one per line')
    return [self.decode(a) for a in spec.split(',') if a.strip()]

  def _parse_file(self, path: pathlib.Path) -> list:
    try:
      text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
      raise ValueError(f'--archs={path}: cannot read it ({getattr(err, "strerror", None) or err})'
                       f'; give a text file with one {self.name} arch string per line') from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.strip().startswith('#')]
    if not lines:
      raise ValueError(f'{path} lists no archs; put one {self.name} arch string per line')
    archs = []
    for n, line in lines:
      try:
        archs.append(self.decode(line))
      except ValueError as err:
        raise ValueError(f'{path}:{n}: {err}') from None
    return archs


def random_count(spec: str) -> int | None:
  """N of an --archs 'random:N' (None for another kind of spec); ValueError unless N >= 1."""
  if not spec.startswith('random:'):
    return None
  count = spec.split(':', 1)[1]
  if not count.isdecimal() or int(count) < 1:
    raise ValueError(f'bad --archs={spec!r}; use random:N with N a positive integer')
  return int(count)


INITS = ('torch_default', 'kaiming_normal')


def init_weight(key, shape, fan_in, kind='torch_default'):
  """A layer weight for a plug-in space's padded network, `fan_in` possibly traced (it depends
  on the arch row): U(+-1/sqrt(fan_in)) (PyTorch's default) or N(0, 2/fan_in) (kaiming_normal)."""
  fan = jnp.asarray(fan_in, jnp.float32)
  if kind == 'torch_default':
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) / jnp.sqrt(fan)
  if kind == 'kaiming_normal':
    return jax.random.normal(key, shape, jnp.float32) * jnp.sqrt(2.0 / fan)
  raise ValueError(f'unknown init {kind!r}; choose {" or ".join(INITS)}')
