"""``aent info``: versions, and the entropy implementation that would run on each device."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    argparse.ArgumentParser(
        prog="aent info", description="versions and the entropy implementation that would run on each device"
    ).parse_args(argv)
    import torch

    import aent
    from aent import ops
    from aent.entropy import _resolve_impl

    print(f"aent {aent.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    print(f"cpu entropy implementation: {_resolve_impl(None, torch.device('cpu'))}")
    if torch.cuda.is_available():
        print(f"cuda ({torch.cuda.get_device_name()}): {_resolve_impl(None, torch.device('cuda'))}")
    else:
        print(f"cuda: not available (fused Triton kernels installed: {ops.triton_available()})")
    return 0
