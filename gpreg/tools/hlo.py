"""Matmul and convolution FLOPs, and the live-buffer peak, of an XLA program read from its
HLO text (framework-free).

TensorFlow gives a ``tf.function(jit_compile=True)``'s HLO through
``experimental_get_compiler_ir``; JAX through ``jax.jit(f).lower(...).as_text("hlo")`` (and
the compiled, scheduled program through ``.compile().as_text()``).

:func:`count` follows XLA's own cost analysis (``HloCostAnalysis``) for the two instructions
that carry a network's arithmetic: a ``dot`` costs 2 · (result elements) · (contracted
elements), a ``convolution`` 2 · (output batch and features) · (input features per group) ·
the number of (output, kernel) position pairs that fall on a real input element (padding and
the holes of a dilated input are not counted), per spatial dimension. Other instructions
(elementwise, reductions) are not counted, as in PyTorch's ``torch.utils.flop_counter``.

:func:`peak_bytes` walks the entry computation of a scheduled program in its order and keeps
every instruction's result alive from its definition to its last use: the largest sum of
live bytes estimates the temporary and output memory of XLA's buffer assignment, for
TensorFlow, which does not expose that assignment.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SHAPE = re.compile(r"^[a-z]+\d*\[([\d,]*)\]")
_ARRAYS = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")
_HEAD = re.compile(
    r"^\s*(?P<root>ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>\([^=]*?\)|[a-z]+\d*\[[\d,]*\]"
    r"(?:\{[^}]*\})?)\s+(?P<op>[\w\-]+)\("
)
_PARAM = re.compile(r"(?P<name>[\w.\-]+):\s*(?P<shape>[a-z]+\d*\[[\d,]*\])")

#: bytes per element of the HLO element types
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}

#: instructions whose result takes no new buffer
_NO_BUFFER = ("parameter", "constant", "get-tuple-element", "bitcast", "tuple")


@dataclass(frozen=True)
class _Instr:
    name: str
    shape: str
    op: str
    operands: list[str]  # each as printed: ``%x`` or ``f32[2,3]{1,0} %x``
    attrs: str
    root: bool


def _instruction(line: str) -> _Instr | None:
    """One HLO instruction line, with its operand list found by matching parentheses."""
    m = _HEAD.match(line)
    if m is None:
        return None
    depth, start = 1, m.end()
    for i in range(start, len(line)):
        if line[i] == "(":
            depth += 1
        elif line[i] == ")":
            depth -= 1
            if depth == 0:
                return _Instr(m["name"], m["shape"], m["op"], _split_top(line[start:i]),
                              line[i + 1:], bool(m["root"]))
    return None


def _operand_name(item: str) -> str:
    return item.split()[-1].lstrip("%")


@dataclass(frozen=True)
class HloFlops:
    """FLOPs of the dots and convolutions of one HLO module, and how many of each."""

    dot: int
    convolution: int
    dots: int
    convolutions: int

    @property
    def total(self) -> int:
        """Dot and convolution FLOPs together."""
        return self.dot + self.convolution


def _dims(shape: str) -> tuple[int, ...] | None:
    m = _SHAPE.match(shape.strip())
    if m is None:
        return None
    return tuple(int(d) for d in m.group(1).split(",") if d)


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and braces."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return [t for t in items if t]


def _operands(items: list[str], shapes: dict[str, tuple[int, ...]]
              ) -> list[tuple[int, ...] | None]:
    """Shapes of the operands: printed inline (``f32[2,3]{1,0} %x``) or looked up by name."""
    out: list[tuple[int, ...] | None] = []
    for item in items:
        inline = _dims(item)
        out.append(inline if inline is not None else shapes.get(_operand_name(item)))
    return out


def _ints(attrs: str, key: str) -> list[int]:
    m = re.search(rf"\b{key}=\{{([\d,]*)\}}", attrs)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _dot_flops(out: tuple[int, ...], lhs: tuple[int, ...], attrs: str) -> int:
    contracted = math.prod(lhs[d] for d in _ints(attrs, "lhs_contracting_dims"))
    return 2 * math.prod(out) * contracted


def _window(attrs: str, n: int) -> list[dict[str, tuple[int, ...] | int]]:
    """Per spatial dimension: size, stride, padding low, base (lhs) and window (rhs) dilation."""
    m = re.search(r"window=\{([^}]*)\}", attrs)
    fields: dict[str, str] = {}
    if m:
        for part in m.group(1).split():
            key, _, value = part.partition("=")
            fields[key] = value

    def per_dim(key: str, default: int) -> list[int]:
        if key not in fields:
            return [default] * n
        return [int(x) for x in fields[key].split("x")]

    size, stride = per_dim("size", 1), per_dim("stride", 1)
    lhs_dilate, rhs_dilate = per_dim("lhs_dilate", 1), per_dim("rhs_dilate", 1)
    pads = [int(p.split("_")[0]) for p in fields["pad"].split("x")] if "pad" in fields else [0] * n
    return [{"size": size[i], "stride": stride[i], "pad_low": pads[i],
             "base_dilation": lhs_dilate[i], "window_dilation": rhs_dilate[i]}
            for i in range(n)]


def _valid_positions(input_size: int, output_size: int, w: dict[str, int]) -> int:
    """Pairs (output index, kernel index) that read a real (not padding, not hole) input."""
    count = 0
    for k in range(w["size"]):
        for o in range(output_size):
            undilated = o * w["stride"] - w["pad_low"] + k * w["window_dilation"]
            if undilated % w["base_dilation"]:
                continue
            if 0 <= undilated // w["base_dilation"] < input_size:
                count += 1
    return count


def _conv_flops(out: tuple[int, ...], lhs: tuple[int, ...], attrs: str) -> int:
    m = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", attrs)
    if m is None:
        raise ValueError(f"convolution without dim_labels: {attrs[:120]!r}")
    lhs_l, _, out_l = m.groups()
    spatial = sorted(c for c in lhs_l if c.isdigit())
    fgc = re.search(r"feature_group_count=(\d+)", attrs)
    bgc = re.search(r"batch_group_count=(\d+)", attrs)
    feature_groups = int(fgc.group(1)) if fgc else 1
    batch_groups = int(bgc.group(1)) if bgc else 1
    window = _window(attrs, len(spatial))
    positions = 1
    for i, s in enumerate(spatial):
        positions *= _valid_positions(lhs[lhs_l.index(s)], out[out_l.index(s)], window[i])
    in_features = lhs[lhs_l.index("f")] // feature_groups
    out_features = out[out_l.index("f")]
    batch = lhs[lhs_l.index("b")] // batch_groups
    return 2 * in_features * out_features * batch * positions


def count(text: str) -> HloFlops:
    """Dot and convolution FLOPs of an HLO module given as text (every computation in it)."""
    shapes: dict[str, tuple[int, ...]] = {}
    dot = conv = n_dot = n_conv = 0
    for line in text.splitlines():
        if line and not line[0].isspace():  # a computation's header: its parameters' shapes
            shapes = {m["name"]: d for m in _PARAM.finditer(line)
                      if (d := _dims(m["shape"])) is not None}
            continue
        ins = _instruction(line)
        if ins is None:
            continue
        out = _dims(ins.shape)
        if out is not None:
            shapes[ins.name] = out
        if ins.op not in ("dot", "convolution") or out is None:
            continue
        ops = _operands(ins.operands, shapes)
        if len(ops) < 2 or ops[0] is None or ops[1] is None:
            raise ValueError(f"HLO {ins.op} {ins.name!r}: operand shapes not found")
        if ins.op == "dot":
            dot += _dot_flops(out, ops[0], ins.attrs)
            n_dot += 1
        else:
            conv += _conv_flops(out, ops[0], ins.attrs)
            n_conv += 1
    return HloFlops(dot=dot, convolution=conv, dots=n_dot, convolutions=n_conv)


def _nbytes(shape: str) -> int:
    """Bytes of an array or tuple shape (the sum over a tuple's arrays)."""
    return sum(_BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims in _ARRAYS.findall(shape))


def peak_bytes(text: str) -> int:
    """The largest sum of live result bytes over the entry computation of a scheduled HLO
    module (its instructions in the order printed): every result lives from its definition
    to its last use, the outputs to the end; parameters, constants, tuples and bitcasts take
    no buffer. The buffers of fused and called computations are not counted, nor any sharing
    XLA's buffer assignment finds, so this is an estimate of its temporary and output bytes.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("ENTRY")), None)
    if start is None:
        raise ValueError("no ENTRY computation in this HLO text")
    body: list[_Instr] = []
    for line in lines[start + 1:]:
        if line.startswith("}"):
            break
        ins = _instruction(line)
        if ins is not None:
            body.append(ins)
    last = {}
    for i, ins in enumerate(body):
        for item in ins.operands:
            last[_operand_name(item)] = i
    live: dict[str, int] = {}
    now = peak = 0
    for i, ins in enumerate(body):
        if ins.op not in _NO_BUFFER:
            live[ins.name] = _nbytes(ins.shape)
            now += live[ins.name]
        peak = max(peak, now)
        for name in {_operand_name(item) for item in ins.operands}:
            if last.get(name) == i and name in live:
                now -= live.pop(name)
    return peak
