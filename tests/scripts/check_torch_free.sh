#!/usr/bin/env bash
# The coordinator and storage never see LibTorch (DESIGN.md §4): no torch, ATen or c10 header in
# common/, storage/ or coordinator/, and the torch-free test binaries (which link every library
# of those folders) load no libtorch or libc10.
#   check_torch_free.sh SOURCE_DIR BINARY...
set -euo pipefail
src="$1"; shift
status=0
if hits=$(grep -rnE '#include\s*[<"](torch/|ATen/|c10/)' "$src/common" "$src/storage" "$src/coordinator"); then
  echo "LibTorch headers included in torch-free folders:"; echo "$hits"; status=1
fi
for bin in "$@"; do
  if libs=$(ldd "$bin" | grep -E 'libtorch|libc10'); then
    echo "$bin links LibTorch:"; echo "$libs"; status=1
  fi
  echo "$bin: no LibTorch"
done
exit $status
