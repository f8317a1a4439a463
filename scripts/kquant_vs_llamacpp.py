"""Our k-quant encoders beside llama.cpp's own, outside the test suite (it needs llama.cpp's
library, from `pip install llama-cpp-python`).

Rows: the unit test `bytes_are_llama_cpps` writes its rows and our (and candle's) bytes:

    PIPE_KQUANT_DUMP=/tmp/kq cargo test --lib kquant::tests::bytes_are_llama_cpps
    python scripts/kquant_vs_llamacpp.py rows /tmp/kq

runs llama.cpp's `quantize_row_*_ref` on the same rows and prints, per type, whether the bytes
are identical, the SHA-256 the test pins, and the relative RMS error of each quantiser (all
dequantised by llama.cpp's `dequantize_row_*`).

Models: two q4_k_m GGUFs of the same f16 GGUF (ours, and llama.cpp's `llama_model_quantize`):

    python scripts/kquant_vs_llamacpp.py models F16 OURS THEIRS

prints how many tensors are byte-identical and, per type, the mean and worst relative RMS
error against the f16 (dequantised with gguf-py, which must be importable).
"""

import ctypes
import hashlib
import os
import sys

import numpy as np

TYPES = {  # name: (ggml suffix, values per block, bytes per block)
    "Q4K": ("q4_K", 256, 144),
    "Q6K": ("q6_K", 256, 210),
    "Q5_0": ("q5_0", 32, 22),
    "Q8_0": ("q8_0", 32, 34),
}


def ggml():
    import llama_cpp

    lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    return ctypes.CDLL(os.path.join(lib_dir, "libggml-base.so"))


def rel_rms(got, want):
    got, want = got.astype(np.float64), want.astype(np.float64)
    return float(np.sqrt(np.mean((got - want) ** 2)) / (np.sqrt(np.mean(want**2)) + 1e-300))


def rows(d):
    lib = ggml()
    x = np.fromfile(os.path.join(d, "x.f32"), dtype=np.float32)
    for name, (suffix, blk, size) in TYPES.items():
        quant = getattr(lib, f"quantize_row_{suffix}_ref")
        dequant = getattr(lib, f"dequantize_row_{suffix}")
        for f in (quant, dequant):
            f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        theirs = np.zeros(len(x) // blk * size, dtype=np.uint8)
        quant(x.ctypes.data, theirs.ctypes.data, len(x))

        def error(q):
            y = np.zeros(len(x), dtype=np.float32)
            dequant(q.ctypes.data, y.ctypes.data, len(x))
            return rel_rms(y, x)

        ours = np.fromfile(os.path.join(d, f"ours.{name}"), dtype=np.uint8)
        candle = np.fromfile(os.path.join(d, f"candle.{name}"), dtype=np.uint8)
        same = ours.tobytes() == theirs.tobytes()
        print(f"{name:5} identical={same} sha256(llama.cpp)={hashlib.sha256(theirs).hexdigest()}")
        print(f"      rel RMS: ours {error(ours):.5f}  llama.cpp {error(theirs):.5f}  "
              f"candle {error(candle):.5f}")


def models(f16_path, ours_path, theirs_path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    f16 = {t.name: t for t in GGUFReader(f16_path).tensors}
    ours = {t.name: t for t in GGUFReader(ours_path).tensors}
    theirs = {t.name: t for t in GGUFReader(theirs_path).tensors}
    stats, same, total, typed_apart = {}, 0, 0, []
    for name, t in ours.items():
        o, l = t, theirs[name]
        if o.tensor_type != l.tensor_type:
            typed_apart.append(f"{name}: ours {o.tensor_type.name}, llama.cpp {l.tensor_type.name}")
            continue
        total += 1
        same += bytes(o.data) == bytes(l.data)
        want = dequantize(f16[name].data, f16[name].tensor_type)
        e_o = rel_rms(dequantize(o.data, o.tensor_type).reshape(want.shape), want)
        e_l = rel_rms(dequantize(l.data, l.tensor_type).reshape(want.shape), want)
        stats.setdefault(o.tensor_type.name, []).append((e_o, e_l))
    print(f"{same} of {total} same-typed tensors byte-identical; typed apart: {typed_apart}")
    for ty, es in sorted(stats.items()):
        e = np.array(es)
        print(f"{ty:5} n={len(es):3}  mean rel RMS ours {e[:, 0].mean():.5f} llama.cpp "
              f"{e[:, 1].mean():.5f}   worst ours {e[:, 0].max():.5f} llama.cpp {e[:, 1].max():.5f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["rows"]:
        rows(sys.argv[2])
    elif sys.argv[1:2] == ["models"]:
        models(*sys.argv[2:5])
    else:
        sys.exit(__doc__)
