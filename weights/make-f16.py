"""Rewrite a GGUF decoder with every quantized tensor dequantised to F16 (by the `gguf`
package), metadata unchanged except general.file_type: the F16 counterpart of a Q4_1
download, for `vlm-run bench` comparisons.

Environment: python -m venv venv && venv/bin/pip install gguf numpy
Run: venv/bin/python weights/make-f16.py weights/SmolLM2-135M-Instruct.Q4_1.gguf \
         weights/SmolLM2-135M-Instruct.F16.gguf
"""

import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T


def main():
    src, dst = sys.argv[1], sys.argv[2]
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, field.contents(), vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(name, field.contents(), vtype)
    w.add_file_type(1)
    for t in r.tensors:
        if t.tensor_type in (T.F32, T.F16):
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
        else:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
            w.add_tensor(t.name, values.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", dst)


if __name__ == "__main__":
    main()
