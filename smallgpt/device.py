"""
Where and in what precision the scripts run: device choice, autocast, the CPU's bf16 check and a
quick matmul benchmark for the device's peak FLOP/s (the denominator of MFU).

Shared by train.py, sample.py and bench.py so all three pick the same device and dtype.
"""

import inspect
import os
import re
import sys
import time
from contextlib import nullcontext

import torch

from smallgpt.errors import UserError, is_main_process

PTDTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device="auto"):
    """'auto' -> cuda, then mps, then cpu; anything else is checked and returned as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise UserError(f"device={device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' (a GPU's "
                        f"number) or 'mps'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device!r} but torch sees no CUDA GPU; use --device=cpu "
                         f"(or install a CUDA build of torch)")
    if device == "mps" and not (getattr(torch.backends, "mps", None)
                                and torch.backends.mps.is_available()):
        raise UserError("device='mps' but this torch has no MPS support; use --device=cpu")
    return device


def device_type_of(device):
    """'cuda' for 'cuda' or 'cuda:1', else the name before any ':' ('cpu', 'mps'): the kind of
    device that torch.autocast, GradScaler and the fused optimizers ask for."""
    return "cuda" if "cuda" in device else device.split(":")[0]


CPU_BF16_ENV = "NANOGPT_CPU_BF16"  # 1 / 0: answer the bf16 check below yes / no on any CPU


def cpu_has_fast_bf16():
    """True when the CPU has bf16 matrix instructions (AMX or AVX512-BF16), where bf16 matmuls
    run several times faster than fp32. Elsewhere bf16 is emulated and slower than fp32.
    NANOGPT_CPU_BF16=1 or 0 overrides the answer, so a CPU of either kind can run the other's
    path (the test suite runs its dtype-dependent tests both ways; emulated bf16 is slow but
    correct)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise UserError(f"{CPU_BF16_ENV}={forced!r}: use 1 (bf16 units), 0 (none) or leave it unset")
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False  # not Linux: no cheap way to know, fp32 is the safe choice
    return " amx_bf16" in flags or " avx512_bf16" in flags


def pick_dtype(dtype, device_type, quiet=False, training=True):
    """'auto' -> bf16 on GPUs that have it (else fp16); on CPUs, bf16 for training where the CPU
    has bf16 units, else fp32. CPU generation stays fp32: one token at a time the matmuls are
    tiny and autocast's casts cost more than bf16 saves (bench.py --mode=generate, KV cache,
    train_don_char.py's shape: 154 vs 180 tokens/s on an AMD EPYC, 240 vs 400 on an Intel Xeon)."""
    if dtype == "auto":
        if device_type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if device_type == "cpu" and training and cpu_has_fast_bf16():
            return "bfloat16"
        if device_type == "cpu" and not quiet:
            note("this CPU has no bf16 matrix units: running in float32 (bf16 would be slower)")
        return "float32"
    if dtype not in PTDTYPE:
        raise UserError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if dtype == "float16" and device_type == "cpu":
        note("float16 on a CPU is slow and needs loss scaling; bfloat16 or float32 is better")
    return dtype


def autocast_context(device_type, dtype):
    """Mixed precision for the forward pass: parameters and optimizer stay fp32."""
    if dtype == "float32" or device_type == "mps":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=PTDTYPE[dtype])


def reuse_freed_memory():
    """Keep memory that tensors free inside this process, for the next tensors to reuse.

    glibc's malloc returns big blocks (from 128 KiB, its threshold then adapts) to the kernel
    when they are freed and maps fresh pages for the next allocation, and each fresh page costs
    a page fault on first touch. A training step frees and re-allocates the same activation
    sizes every time, so on a CPU it paid those faults on every tensor: about a fifth of a step
    of the DI725 course's CPU recipe here (bench.py). Raising the trim threshold and taking every block
    from the heap (no mmap) keeps freed blocks for reuse; the mmap threshold alone can't go above
    32 MiB, and the full char config's attention scores are 50 MB each (a bf16 multiply of two
    of them: 17 ms from fresh pages, 2.5 ms reusing the heap). The cost: resident memory stays
    at its peak instead of shrinking.
    Linux with glibc only; elsewhere (macOS, musl) this does nothing and returns False.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    # no new mmap'ed blocks: all come from the heap (glibc still falls back to mmap if the heap
    # can't grow); never give the heap's free top back to the kernel
    ok = mallopt(M_MMAP_MAX, 0) == 1
    return mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1 and ok


def note(message):
    """A one-line remark on stderr (rank 0 only): a setting adjusted, a slower path taken."""
    if is_main_process():
        print(f"note: {message}", file=sys.stderr)


def sync(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()
    elif device_type == "mps":
        torch.mps.synchronize()


def measure_peak_flops(device, dtype, size=2048, seconds=0.5):
    """Best achieved FLOP/s of a square matmul in `dtype` (the run's compute dtype)."""
    device_type = device_type_of(device)
    a = torch.randn(size, size, device=device, dtype=PTDTYPE[dtype])
    b = torch.randn(size, size, device=device, dtype=PTDTYPE[dtype])
    best = float("inf")
    a @ b  # warm-up: first call picks kernels
    sync(device_type)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        a @ b
        sync(device_type)
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def peak_flops_cache():
    """Where cached_peak_flops remembers its measurements."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache_home, "smallgpt", "peak_flops.json")


def cached_peak_flops(device, dtype, size):
    """measure_peak_flops, measured once per machine and remembered: the half-second benchmark
    would otherwise delay every run's start (the MFU it feeds is a rough figure anyway). The
    cache is a small JSON file, ~/.cache/smallgpt/peak_flops.json (XDG_CACHE_HOME honoured),
    keyed by the processor, dtype, thread count and torch version; delete it to measure again.
    Where it can't be read or written, this just measures."""
    import json
    import platform
    device_type = "cuda" if "cuda" in device else device
    if device_type == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1].strip() for line in f
                             if line.startswith("model name")), name)
        except OSError:
            pass
    key = f"{name}|{device_type}|{dtype}|{torch.get_num_threads()} threads|torch {torch.__version__}|{size}"
    path = peak_flops_cache()
    cache_dir = os.path.dirname(path)
    try:
        with open(path) as f:
            table = json.load(f)
        if isinstance(table.get(key), (int, float)) and table[key] > 0:
            return float(table[key])
    except (OSError, ValueError, AttributeError):
        table = {}
    flops = measure_peak_flops(device, dtype, size=size)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        table = table if isinstance(table, dict) else {}
        table[key] = flops
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(table, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass
    return flops


class AdamW(torch.optim.AdamW):
    """torch's AdamW, without importing torch._dynamo (a second's start-up) when nothing is
    compiled. torch wraps Optimizer.step in a function that imports torch._dynamo at every call
    (to place graph breaks for torch.compile) and a few Optimizer methods in one that imports it
    at the first call. Eagerly, step is the same update under no_grad: the same kernels and
    numbers (tests/test_bench.py checks both, bit for bit, and that dynamo stays unimported).
    With compile=True, train.py uses torch.optim.AdamW itself."""

    def step(self, closure=None):
        with torch.no_grad():
            # the innermost function: torch.optim.AdamW.step may already carry torch's
            # profiling wrapper (added when any AdamW was built) around the dynamo one
            return inspect.unwrap(torch.optim.AdamW.step)(self, closure)

    @staticmethod
    def skip_dynamo_wrappers():
        """Mark the methods torch wraps with its lazy dynamo import as already handled: their
        plain function is what runs eagerly anyway."""
        for method in (torch.optim.Optimizer.add_param_group, torch.optim.Optimizer.zero_grad,
                       torch.optim.Optimizer.state_dict, torch.optim.Optimizer.load_state_dict):
            plain = getattr(method, "__wrapped__", None)
            if plain is not None and not hasattr(plain, "__dynamo_disable"):
                setattr(plain, "__dynamo_disable", plain)

    def __init__(self, *args, **kwargs):
        self.skip_dynamo_wrappers()
        super().__init__(*args, **kwargs)
