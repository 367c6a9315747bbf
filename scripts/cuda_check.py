#!/usr/bin/env python3
"""Compile every kernels/*.cu the way a Jetson build does, on a machine with no GPU (issue 18):
NVRTC (PyPI wheel nvidia-cuda-nvrtc-cu12, CUDA 12 as in JetPack 6) to PTX for compute_72
(Xavier) and compute_87 (Orin), then ptxas (wheel nvidia-cuda-nvcc-cu12) to SASS for sm_72 and
sm_87. Fails on any compile error or warning, except CUDA 12.9's notice that sm_72 is
deprecated (allowed and counted). Prints each kernel's registers and spills from ptxas -v.

  python3 scripts/cuda_check.py [--wheels DIR] [--ptx-out DIR]
      --wheels   where the wheels are installed (default target/cuda-wheels)
      --ptx-out  also keep each file's PTX there as <file>.<compute_XX>.ptx (tests/cuda_kernels.rs
                 and scripts/gpu_check.sh load it)

Needs network only the first time (pip install --target DIR)."""

import argparse
import ctypes
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = ["nvidia-cuda-nvrtc-cu12==12.9.86", "nvidia-cuda-nvcc-cu12==12.9.86",
          "nvidia-cuda-runtime-cu12==12.9.79", "nvidia-cuda-cccl-cu12==12.9.27"]
ARCHS = [("compute_72", "sm_72"), ("compute_87", "sm_87")]
# CUDA 12.9: "Architectures prior to '<compute/sm>_75' are deprecated and may be removed ..."
DEPRECATION = re.compile(r"prior to '<compute/sm>_75' are deprecated|sm_72.*deprecated|"
                         r"compute_72.*deprecated", re.I)


def ensure_wheels(where):
    """The CUDA wheels unpacked under `where` (pip --target: no venv needed); returns the
    folder holding their `nvidia/` tree."""
    nv = os.path.join(where, "nvidia")
    if not glob.glob(os.path.join(nv, "cuda_nvrtc", "lib", "libnvrtc.so*")) or \
            not os.path.exists(os.path.join(nv, "cuda_nvcc", "bin", "ptxas")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", where, *WHEELS],
                       check=True)
    return nv


class Nvrtc:
    def __init__(self, nv):
        lib = sorted(glob.glob(os.path.join(nv, "cuda_nvrtc", "lib", "libnvrtc.so.*")))
        # the builtins library sits beside it and is found through the loader path
        os.environ["LD_LIBRARY_PATH"] = os.path.join(nv, "cuda_nvrtc", "lib")
        ctypes.CDLL(os.path.join(nv, "cuda_nvrtc", "lib",
                                 os.path.basename(glob.glob(os.path.join(
                                     nv, "cuda_nvrtc", "lib", "libnvrtc-builtins.so*"))[0])),
                    mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(lib[0])
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "version")
        self.version = f"{major.value}.{minor.value}"

    def check(self, rc, what):
        if rc != 0:
            self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise RuntimeError(f"nvrtc {what}: {self.lib.nvrtcGetErrorString(rc).decode()}")

    def compile(self, src, name, options):
        prog = ctypes.c_void_p()
        self.check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(),
                                               0, None, None), "create")
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        rc = self.lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        self.lib.nvrtcGetProgramLog(prog, log)
        ptx = None
        if rc == 0:
            self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            self.check(self.lib.nvrtcGetPTX(prog, buf), "get ptx")
            ptx = buf.value.decode()
        self.lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return rc, log.value.decode(errors="replace").strip(), ptx


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--wheels", default=os.path.join(ROOT, "target", "cuda-wheels"))
    ap.add_argument("--ptx-out", default=None)
    args = ap.parse_args()
    nv = ensure_wheels(args.wheels)
    nvrtc = Nvrtc(nv)
    ptxas = os.path.join(nv, "cuda_nvcc", "bin", "ptxas")
    includes = [os.path.join(ROOT, "kernels"), os.path.join(nv, "cuda_runtime", "include"),
                os.path.join(nv, "cuda_nvrtc", "include"), os.path.join(nv, "cuda_cccl", "include")]
    kernels = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu")))
    print(f"NVRTC {nvrtc.version}, {os.path.basename(ptxas)} from {nv}; {len(kernels)} kernel files")
    failures, notices = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in kernels:
            name = os.path.basename(path)
            src = open(path).read()
            for compute, sm in ARCHS:
                opts = [f"--gpu-architecture={compute}", "--std=c++17", "-default-device",
                        *[f"-I{d}" for d in includes]]
                rc, log, ptx = nvrtc.compile(src, name, opts)
                lines = [l for l in log.splitlines() if l.strip()]
                bad = [l for l in lines if ("warning" in l.lower() or "error" in l.lower())
                       and not DEPRECATION.search(l)]
                notices += sum(1 for l in lines if DEPRECATION.search(l))
                if rc != 0 or bad:
                    failures.append(f"{name} ({compute}): nvrtc rc {rc}\n{log}")
                    continue
                ptx_path = os.path.join(tmp, f"{name}.{compute}.ptx")
                open(ptx_path, "w").write(ptx)
                if args.ptx_out:
                    os.makedirs(args.ptx_out, exist_ok=True)
                    open(os.path.join(args.ptx_out, f"{name}.{compute}.ptx"), "w").write(ptx)
                p = subprocess.run([ptxas, f"-arch={sm}", "-v", "-o",
                                    os.path.join(tmp, f"{name}.{sm}.cubin"), ptx_path],
                                   capture_output=True, text=True)
                out = (p.stdout + p.stderr).strip()
                bad = [l for l in out.splitlines() if "warning" in l.lower() and
                       not DEPRECATION.search(l)]
                notices += sum(1 for l in out.splitlines() if DEPRECATION.search(l))
                if p.returncode != 0 or bad:
                    failures.append(f"{name} ({sm}): ptxas rc {p.returncode}\n{out}")
                    continue
                regs = re.findall(r"Compiling entry function '(\w+)'.*?Used (\d+) registers",
                                  out, re.S)
                spills = re.findall(r"(\d+) bytes spill stores", out)
                spilled = sum(int(s) for s in spills)
                print(f"  {name:<16} {compute} -> {sm}: {len(regs)} kernels, "
                      f"registers {min((int(r) for _, r in regs), default=0)}-"
                      f"{max((int(r) for _, r in regs), default=0)}, spill stores {spilled} B")
    if failures:
        print("\nFAILED:\n" + "\n\n".join(failures))
        sys.exit(1)
    print(f"all {len(kernels)} files compiled for {', '.join(s for _, s in ARCHS)}"
          f" ({notices} sm_72 deprecation notices allowed)")


if __name__ == "__main__":
    main()
