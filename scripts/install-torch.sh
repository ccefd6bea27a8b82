#!/usr/bin/env bash
# Install torch into a virtual environment, before qasr, so that pip never picks a build for us.
#
#   scripts/install-torch.sh PIP VERSION INDEX
#
# INDEX is the package index to take torch from:
#   https://download.pytorch.org/whl/cpu     the CPU-only build (the default in the Makefile, ~200 MB)
#   https://download.pytorch.org/whl/cu128   a CUDA 12.8 build (pick the one that matches your driver)
#   pypi                                     PyPI's torch: on Linux x86_64 that is the CUDA build,
#                                            with about 20 CUDA packages (several GB)
# When the given index cannot be reached (an air-gapped site that mirrors PyPI only), it falls back
# to PyPI and says so, since what PyPI gives differs by platform.
set -euo pipefail
pip=$1 version=$2 index=$3
python=$(dirname "$pip")/python

if "$python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null; then
    echo "torch $("$python" -c 'import torch; print(torch.__version__)') is already installed"
    exit 0
fi
if [ "$index" != "pypi" ]; then
    echo "installing torch==$version from $index"
    if "$pip" install -q --retries 0 --timeout 30 "torch==$version" --index-url "$index"; then
        exit 0
    fi
    echo "qasr: $index could not be reached; installing torch==$version from PyPI instead." >&2
    echo "qasr: on Linux x86_64 that is the CUDA build (several GB) unless a CPU wheel is on this machine." >&2
fi
"$pip" install -q "torch==$version"
