"""Compares the value types qforge wrote into a model with ONNX's own shape inference.

Usage:
  shape_check.py strip IN.onnx OUT.onnx
      Writes IN without value_info (graph inputs and outputs keep their
      declarations), so qforge has to infer every intermediate type itself.
  shape_check.py compare QFORGE.onnx
      Reads the types qforge recorded (value_info and graph outputs), then
      runs onnx.shape_inference.infer_shapes(strict_mode=True, data_prop=True)
      on the same model with value_info removed, and prints JSON:
        values        node outputs in the graph
        both          values both sides type
        disagreements [{name, qforge, onnx}] where dtype, rank or a dim known
                      on both sides differ
        onnx_more     values where ONNX knows a dtype or dim that qforge leaves
                      unknown (coverage), with both types
        qforge_more   values where qforge knows more than ONNX
        incomplete    values qforge does not type fully (dtype and all dims)
        onnx_error    ONNX's exception text when its inference fails
"""
import json
import sys

import onnx


def strip(src, dst):
    m = onnx.load(src)
    del m.graph.value_info[:]
    onnx.save(m, dst)


def describe(vi):
    """(dtype or None, dims or None) where each dim is an int, a str (symbol) or None."""
    tt = vi.type.tensor_type
    dt = tt.elem_type or None
    if not tt.HasField('shape'):
        return dt, None
    dims = []
    for d in tt.shape.dim:
        if d.HasField('dim_value'):
            dims.append(d.dim_value)
        elif d.HasField('dim_param') and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dt, dims


def text(t):
    if t is None:
        return 'none'
    dt, dims = t
    name = onnx.helper.tensor_dtype_to_np_dtype(dt).name if dt else '?'
    return name + ('' if dims is None else '[' + ','.join('?' if d is None else str(d) for d in dims) + ']')


def known_count(t):
    if t is None:
        return 0
    dt, dims = t
    return (1 if dt else 0) + (0 if dims is None else 1 + sum(isinstance(d, int) for d in dims))


def compare(path):
    m = onnx.load(path)
    outputs = [o for n in m.graph.node for o in n.output if o]
    ours = {vi.name: describe(vi) for vi in list(m.graph.value_info) + list(m.graph.output)}
    # A Constant node's output is typed by the node itself (qforge writes no
    # value_info for it).
    for n in m.graph.node:
        if n.op_type == 'Constant' and n.domain in ('', 'ai.onnx') and n.output[0] not in ours and len(n.attribute) == 1:
            a = n.attribute[0]
            t = {'value': lambda: (a.t.data_type, list(a.t.dims)), 'value_float': lambda: (1, []),
                 'value_floats': lambda: (1, [len(a.floats)]), 'value_int': lambda: (7, []),
                 'value_ints': lambda: (7, [len(a.ints)])}.get(a.name)
            if t:
                ours[n.output[0]] = t()
    del m.graph.value_info[:]
    report = {'values': len(outputs), 'both': 0, 'disagreements': [], 'onnx_more': [], 'qforge_more': [],
              'incomplete': [], 'onnx_error': None}
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
        theirs = {vi.name: describe(vi) for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    except Exception as e:  # noqa: BLE001 - reported, the caller decides
        report['onnx_error'] = str(e).splitlines()[0] if str(e) else type(e).__name__
        theirs = {}
    for name in outputs:
        a, b = ours.get(name), theirs.get(name)
        if a is None or a[0] is None or a[1] is None or any(not isinstance(d, int) for d in a[1]):
            report['incomplete'].append({'name': name, 'qforge': text(a), 'onnx': text(b)})
        if a is None or b is None:
            if b is not None and known_count(b) > 0:
                report['onnx_more'].append({'name': name, 'qforge': text(a), 'onnx': text(b)})
            continue
        report['both'] += 1
        bad = a[0] and b[0] and a[0] != b[0]
        if a[1] is not None and b[1] is not None:
            if len(a[1]) != len(b[1]):
                bad = True
            else:
                bad = bad or any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a[1], b[1]))
        if bad:
            report['disagreements'].append({'name': name, 'qforge': text(a), 'onnx': text(b)})
            continue
        more_onnx = (b[0] and not a[0]) or (b[1] is not None and a[1] is None) or (
            a[1] is not None and b[1] is not None and any(isinstance(y, int) and not isinstance(x, int) for x, y in zip(a[1], b[1])))
        more_ours = (a[0] and not b[0]) or (a[1] is not None and b[1] is None) or (
            a[1] is not None and b[1] is not None and any(isinstance(x, int) and not isinstance(y, int) for x, y in zip(a[1], b[1])))
        if more_onnx:
            report['onnx_more'].append({'name': name, 'qforge': text(a), 'onnx': text(b)})
        if more_ours:
            report['qforge_more'].append({'name': name, 'qforge': text(a), 'onnx': text(b)})
    print(json.dumps(report))


if __name__ == '__main__':
    if len(sys.argv) == 4 and sys.argv[1] == 'strip':
        strip(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == 'compare':
        compare(sys.argv[2])
    else:
        sys.exit(__doc__)
