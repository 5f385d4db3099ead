"""Mixed precision where the machine computes it natively, float32 where it would emulate it.

bf16 autocast speeds a CPU run up only on a CPU with bf16 instructions (AVX-512 BF16 or AMX):
on the presets' ResNet-20 at batch 128 it gave 1.32x float32 on such an AMD EPYC, while on an
AVX2-only EPYC one bf16 3x3 convolution of the network took 31x as long as in float32 (135 ms
against 4.3 ms at batch 32 on one thread, measured alone). A preset asks for
`${normlab_precision:bf16-mixed,<accelerator>}`: bf16-mixed where it is native, 32-true
elsewhere. The choice is resolved into the run's config, so results.json, config_resolved.yaml
and the run's fingerprint record the precision the run actually used.
"""

from __future__ import annotations

FLOAT32 = "32-true"
HALF_PRECISIONS = ("bf16-mixed", "16-mixed", "bf16-true", "16-true")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX) that oneDNN uses."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def native_precision(preferred: str, accelerator: str = "cpu") -> str:
    """`preferred` when `accelerator` runs it natively on this machine, else 32-true (float32):
    bf16 on a CUDA device that supports it or a CPU with bf16 instructions; fp16 on CUDA."""
    if preferred not in HALF_PRECISIONS:
        return preferred
    import torch

    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        if not torch.cuda.is_available():
            return preferred  # no GPU here: the run itself says so (trainer=gpu without a GPU)
        return preferred if "16-" in preferred[:3] or torch.cuda.is_bf16_supported() else FLOAT32
    return preferred if preferred.startswith("bf16") and cpu_has_native_bf16() else FLOAT32
