"""Writes the real-world export variants the tests fold (tests/real_world.rs).

Usage: make_variants.py ASSETS_MODELS_DIR OUT_DIR

Each variant is one of the forms real exporters write, derived by code from the
raw torch exports in the assets (so they carry real structure, not toy graphs):

- yolov8s-dynamic.onnx: the YOLOv8s export with `dim_param` batch, height and
  width on its input and output, as `torch.onnx.export(dynamic_axes=...)`
  declares them (the tests give `--input-shape images=1,3,640,640`).
- yolov8s-const-scales.onnx: each nearest Resize reads its scales straight from
  one Constant node (older exporters), instead of a Concat of two Constants.
- yolov8s-sizes.onnx: each nearest Resize gets `sizes` computed in the graph
  from the input's Shape (torch's dynamic-shape form: Shape -> Slice,
  Shape -> Gather -> Cast -> Mul -> Cast -> Floor -> Unsqueeze, Concat ->
  Cast to int64), the scales input left empty.
- upsample-opset9.onnx: a small YOLOv3-style neck at opset 9 (Conv,
  BatchNormalization, LeakyRelu, Upsample with a Constant scales input,
  Concat), with seeded random weights: the pre-Resize form of the ONNX spec.

Prints one JSON line per variant: {"file", "nearest", "input_shape"}, where
`nearest` is the number of nearest Resize/Upsample nodes it holds.
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def const_node(name, array):
    return helper.make_node('Constant', [], [name], name=name + '/node', value=numpy_helper.from_array(array, name))


def nearest_resizes(graph):
    return [n for n in graph.node if n.op_type == 'Resize' and any(
        a.name == 'mode' and a.s == b'nearest' for a in n.attribute)]


def dynamic(model):
    for vi, names in ((model.graph.input[0], ['batch', None, 'height', 'width']),
                      (model.graph.output[0], ['batch', None, 'anchors'])):
        for d, p in zip(vi.type.tensor_type.shape.dim, names):
            if p is not None:
                d.ClearField('dim_value')
                d.dim_param = p
    return model


def const_scales(model):
    g = model.graph
    for i, n in enumerate(nearest_resizes(g)):
        name = f'/qforge_variant/scales_{i}'
        g.node.insert(list(g.node).index(n), const_node(name, np.array([1, 1, 2, 2], dtype=np.float32)))
        n.input[2] = name
    return model


def in_graph_sizes(model):
    g = model.graph
    for i, n in enumerate(nearest_resizes(g)):
        p = f'/qforge_variant/sizes_{i}/'
        x = n.input[0]
        nodes = [
            helper.make_node('Shape', [x], [p + 'shape'], name=p + 'Shape'),
            const_node(p + 'nc_start', np.array([0], dtype=np.int64)),
            const_node(p + 'nc_end', np.array([2], dtype=np.int64)),
            helper.make_node('Slice', [p + 'shape', p + 'nc_start', p + 'nc_end'], [p + 'nc'], name=p + 'Slice'),
            const_node(p + 'hw_idx', np.array([2, 3], dtype=np.int64)),
            helper.make_node('Gather', [p + 'shape', p + 'hw_idx'], [p + 'hw'], name=p + 'Gather', axis=0),
            helper.make_node('Cast', [p + 'hw'], [p + 'hw_f'], name=p + 'Cast', to=TensorProto.FLOAT),
            const_node(p + 'two', np.array(2.0, dtype=np.float32)),
            helper.make_node('Mul', [p + 'hw_f', p + 'two'], [p + 'hw2_f'], name=p + 'Mul'),
            helper.make_node('Floor', [p + 'hw2_f'], [p + 'hw2_floor'], name=p + 'Floor'),
            helper.make_node('Cast', [p + 'hw2_floor'], [p + 'hw2'], name=p + 'Cast_1', to=TensorProto.INT64),
            helper.make_node('Concat', [p + 'nc', p + 'hw2'], [p + 'sizes'], name=p + 'Concat', axis=0),
        ]
        at = list(g.node).index(n)
        for k, m in enumerate(nodes):
            g.node.insert(at + k, m)
        del n.input[:]
        n.input.extend([x, '', '', p + 'sizes'])
    return model


def upsample_opset9():
    rng = np.random.default_rng(9)
    nodes, inits = [], []

    def conv_bn_leaky(name, x, cin, cout, k, stride=1):
        w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name + '.weight'))
        for suffix, arr in (('scale', rng.uniform(0.5, 1.5, cout)), ('bias', rng.normal(0, 0.1, cout)),
                            ('mean', rng.normal(0, 0.1, cout)), ('var', rng.uniform(0.5, 1.5, cout))):
            inits.append(numpy_helper.from_array(arr.astype(np.float32), f'{name}.bn.{suffix}'))
        pad = k // 2
        nodes.append(helper.make_node('Conv', [x, name + '.weight'], [name + '/conv'], name=name + '/Conv',
                                      kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride]))
        nodes.append(helper.make_node('BatchNormalization', [name + '/conv'] + [f'{name}.bn.{s}' for s in
                                      ('scale', 'bias', 'mean', 'var')], [name + '/bn'], name=name + '/BN',
                                      epsilon=1e-5))
        nodes.append(helper.make_node('LeakyRelu', [name + '/bn'], [name + '/out'], name=name + '/Leaky', alpha=0.1))
        return name + '/out'

    a = conv_bn_leaky('stem', 'images', 3, 16, 3, 2)
    b = conv_bn_leaky('down', a, 16, 32, 3, 2)
    c = conv_bn_leaky('lateral', b, 32, 16, 1)
    nodes.append(const_node('up_scales', np.array([1, 1, 2, 2], dtype=np.float32)))
    nodes.append(helper.make_node('Upsample', [c, 'up_scales'], ['up'], name='Upsample', mode='nearest'))
    nodes.append(helper.make_node('Concat', ['up', a], ['cat'], name='Concat', axis=1))
    d = conv_bn_leaky('head', 'cat', 32, 24, 3)
    w = (rng.standard_normal((12, 24, 1, 1)) / np.sqrt(24)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, 'out.weight'))
    inits.append(numpy_helper.from_array(rng.normal(0, 0.1, 12).astype(np.float32), 'out.bias'))
    nodes.append(helper.make_node('Conv', [d, 'out.weight', 'out.bias'], ['output'], name='out/Conv',
                                  kernel_shape=[1, 1]))
    graph = helper.make_graph(nodes, 'yolov3-neck-opset9',
                              [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, 128, 128])],
                              [helper.make_tensor_value_info('output', TensorProto.FLOAT, [1, 12, 64, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 9)], producer_name='qforge-tests')
    model.ir_version = 4
    return model


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    v8 = os.path.join(src, 'yolov8s-torch-export-random.onnx')
    variants = [
        ('yolov8s-dynamic.onnx', lambda: dynamic(onnx.load(v8)), 'images=1,3,640,640'),
        ('yolov8s-const-scales.onnx', lambda: const_scales(onnx.load(v8)), None),
        ('yolov8s-sizes.onnx', lambda: in_graph_sizes(onnx.load(v8)), None),
        ('upsample-opset9.onnx', upsample_opset9, None),
    ]
    for name, make, shape in variants:
        model = make()
        onnx.checker.check_model(model, full_check=True)
        nearest = sum(1 for n in model.graph.node if n.op_type in ('Resize', 'Upsample') and any(
            a.name == 'mode' and a.s == b'nearest' for a in n.attribute))
        path = os.path.join(out, name)
        onnx.save(model, path)
        print(json.dumps({'file': path, 'nearest': nearest, 'input_shape': shape}))


if __name__ == '__main__':
    main()
