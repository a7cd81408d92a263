#!/bin/sh
# docs/tutorial.md, section 6: the quick training run of the tutorial's train, then the tutorial's
# own shell block (torch_safetensors.py conversions and check_torch.py, which asserts that PyTorch's
# logits equal nabla's), in a folder laid out as the tutorial's (fashion/ beside nabla/).
# Exit 77 (skipped) without python3-torch.
#   check_tutorial_torch.sh TUTORIAL TRAIN SOURCE_ROOT PYTHON
set -u
tutorial=$1 root=$3 python=$4
train=$(cd "$(dirname "$2")" && pwd)/$(basename "$2") # absolute: the run happens in another folder
if ! "$python" -c 'import numpy, torch' 2>/dev/null; then
    echo "python3-torch or numpy is not installed: skipped"
    exit 77
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/nabla-tutorial-torch.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
mkdir "$work/blocks" "$work/fashion" "$work/bin" && ln -s "$root" "$work/nabla" && ln -s "$python" "$work/bin/python3" || exit 1
sh "$root/tests/tutorial_extract.sh" "$tutorial" "$work/blocks" || exit 1
cp "$work/blocks/check_torch.py" "$work/fashion/" || exit 1
block=$(grep -l 'check_torch.py' "$work"/blocks/tutorial_*.sh | head -n 1)
[ -n "$block" ] || { echo "$tutorial: no shell block runs check_torch.py"; exit 1; }
cd "$work/fashion" || exit 1
"$train" --quick --out runs || exit 1
echo "== $tutorial: $(basename "$block")"
cat "$block"
PATH="$work/bin:$PATH" sh -e "$block"
