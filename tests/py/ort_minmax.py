"""ONNX Runtime's MinMax calibrator with symmetric ranges, on .npy samples.

Usage: ort_minmax.py MODEL.onnx NPY_DIR
Prints JSON {tensor name: amax} where amax = max(|min|, |max|) over all samples,
as onnxruntime.quantization's MinMaxCalibrater(symmetric=True) computes it.
"""
import glob, json, os, sys, tempfile
import numpy as np
import onnxruntime as ort
from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator


class Reader(CalibrationDataReader):
    def __init__(self, name, files):
        self.it = iter([{name: np.load(f)} for f in files])

    def get_next(self):
        return next(self.it, None)


def main():
    model, npy_dir = sys.argv[1], sys.argv[2]
    files = sorted(glob.glob(os.path.join(npy_dir, '*.npy')))
    so = ort.SessionOptions(); so.log_severity_level = 3
    name = ort.InferenceSession(model, so, providers=['CPUExecutionProvider']).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp:
        cal = create_calibrator(model, None, augmented_model_path=os.path.join(tmp, 'aug.onnx'),
                                calibrate_method=CalibrationMethod.MinMax, extra_options={'symmetric': True})
        cal.collect_data(Reader(name, files))
        data = cal.compute_data()
    out = {k: float(np.max(np.abs(np.asarray(v.range_value if hasattr(v, 'range_value') else v)))) for k, v in data.data.items()}
    print(json.dumps(out))


if __name__ == '__main__':
    main()
