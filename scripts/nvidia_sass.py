#!/usr/bin/env python3
"""Disassemble the SASS that NVIDIA's Vulkan driver compiled for our WGSL kernels.

wgpu cannot show what the driver made of a kernel, but the NVIDIA driver keeps every compiled
pipeline in its disk cache (~/.cache/nvidia/GLCache/<hash>/<hash>/*.bin). Those files hold
zstd frames; the frames that decompress to a blob starting with b"NVDANVVMNVuc" carry the
machine code at byte offset 376, up to the last EXIT (+ padding). `nvdisasm -b SM90` reads
such raw code (found on driver 580.159.04, H100/H200 = SM90; the offset was found by trial and
is not documented by NVIDIA, so the script tries other offsets if 376 fails).

How to use it (see BENCHMARKS.md, issue 5, "Reading the compiled kernel"):

1. On the device, clear the cache before the run, then copy the cache files out:
     rm -rf ~/.cache/nvidia; <run the kernels>;
     n=0; for f in $(find ~/.cache/nvidia -name '*.bin'); do cp $f $OUT/c$n.bin; n=$((n+1)); done
2. Here: pip install zstandard nvidia-cuda-nvdisasm   (nvdisasm comes as a wheel)
     python3 scripts/nvidia_sass.py DIR_WITH_BIN_FILES OUT_DIR
   It writes OUT_DIR/kernel_N.sass for every compiled kernel and prints one line per kernel:
   instruction count, the registers it names (they bound residency: 64K per SM), counts of
   telling opcodes (VOTE, SHFL, POPC, LDS, LDG, BAR, BSSY, WARPSYNC, LDL/STL = register
   spills) and the loops (backward branches) with their length in instructions. Match kernels
   by their opcodes (e.g. the fused subgroup GEMV is the one with SHFL and POPC) or by
   `--grep`.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

CODE_OFFSET = 376
EXIT = b"\x4d\x79\x00\x00\x00\x00\x00\x00"  # low 8 bytes of an SM90 EXIT
TAGS = ["VOTE", "SHFL", "POPC", "LDS", "LDG", "STG", "BAR", "BSSY", "WARPSYNC", "LDL", "STL"]


def nvdisasm_path():
    exe = shutil.which("nvdisasm")
    if exe:
        return exe
    try:
        import nvidia  # the nvidia-cuda-nvdisasm wheel installs nvidia/cu*/bin/nvdisasm

        for root in nvidia.__path__:
            hits = glob.glob(os.path.join(root, "cu*", "bin", "nvdisasm"))
            if hits:
                os.chmod(hits[0], 0o755)
                return hits[0]
    except ImportError:
        pass
    sys.exit("nvdisasm not found: pip install nvidia-cuda-nvdisasm (or put CUDA's bin on PATH)")


def blobs(paths):
    try:
        import zstandard
    except ImportError:
        sys.exit("python module zstandard missing: pip install zstandard")
    for path in paths:
        data = open(path, "rb").read()
        i = 0
        while True:
            i = data.find(b"\x28\xb5\x2f\xfd", i)  # zstd frame magic
            if i < 0:
                break
            try:
                out = zstandard.ZstdDecompressor().decompressobj().decompress(data[i:])
            except zstandard.ZstdError:
                out = b""
            if out.startswith(b"NVDANVVMNVuc"):
                yield path, out
            i += 4


def disassemble(nvdisasm, blob, arch, tmp):
    exits = [m.start() for m in re.finditer(re.escape(EXIT), blob)]
    if not exits:
        return None
    end = exits[-1] + 16
    for start in [CODE_OFFSET] + list(range(24, 2048, 16)):
        if start >= end:
            break
        code = blob[start:end]
        with open(tmp, "wb") as f:
            f.write(code[: len(code) // 16 * 16])
        r = subprocess.run([nvdisasm, "-b", arch, tmp], capture_output=True, text=True)
        if r.returncode == 0 and "error" not in r.stderr:
            return r.stdout
    return None


def summary(sass):
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2)))
    tags = {t: sum(1 for _, s in ins if re.search(r"\b" + t, s)) for t in TAGS}
    loops = []
    for addr, text in ins:
        m = re.search(r"BRA (?:\S+ )?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr, (addr - int(m.group(1), 16)) // 16 + 1))
    # The registers the kernel needs per lane, at least: the highest R register it names,
    # plus one. (Hopper allocates them in steps of 8 per lane; an SM's 64K registers then
    # bound how many groups of 32 lanes it keeps resident.)
    regs = max((int(r) for _, s in ins for r in re.findall(r"\bR(\d+)\b", s)), default=-1) + 1
    return len(ins), tags, loops, regs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cache_dir", help="folder with the driver's cache .bin files")
    ap.add_argument("out_dir")
    ap.add_argument("--arch", default="SM90", help="nvdisasm -b value (SM90 = H100/H200)")
    ap.add_argument("--grep", default=None, help="only kernels whose SASS matches this regex")
    a = ap.parse_args()
    nvdisasm = nvdisasm_path()
    os.makedirs(a.out_dir, exist_ok=True)
    tmp = os.path.join(a.out_dir, ".code.bin")
    paths = sorted(glob.glob(os.path.join(a.cache_dir, "**", "*.bin"), recursive=True))
    n = 0
    for path, blob in blobs(paths):
        sass = disassemble(nvdisasm, blob, a.arch, tmp)
        if sass is None or (a.grep and not re.search(a.grep, sass)):
            continue
        name = os.path.join(a.out_dir, f"kernel_{n}.sass")
        with open(name, "w") as f:
            f.write(sass)
        count, tags, loops, regs = summary(sass)
        tag_text = " ".join(f"{k}={v}" for k, v in tags.items() if v)
        loop_text = ", ".join(f"{hex(s)}-{hex(e)}: {k}" for s, e, k in loops if k >= 16)
        print(
            f"{name}: {count} instructions, registers R0-R{regs - 1}; {tag_text}; "
            f"loops (>= 16 instructions) {loop_text}"
        )
        n += 1
    if os.path.exists(tmp):
        os.remove(tmp)
    if n == 0:
        sys.exit("no compiled kernels found")


if __name__ == "__main__":
    main()
