#!/bin/sh
# char_lstm --load starts from the saved weights and Adam state with this run's --lr: a checkpoint
# holds the lr its run's schedule ended with (lr / 10 after a cosine), which used to replace --lr.
# Arguments: the built char_lstm program, a scratch folder.
set -u
prog=$1 dir=$2
rm -rf "$dir" && mkdir -p "$dir/a" "$dir/b" || exit 1
common="--files fortunes --hidden 16 --embed 8 --batch 4 --bptt 16 --threads 1 --samples 0 --quiet"
"$prog" $common --max-steps 10 --lr 5e-3 --schedule cosine --out "$dir/a" || { echo "first run failed"; exit 1; }
"$prog" $common --max-steps 3 --lr 1e-2 --schedule constant --load "$dir/a/char_lstm.safetensors" --out "$dir/b" ||
    { echo "run with --load failed"; exit 1; }
# the lr column of each run's last line
lr_a=$(awk -F, 'NR > 1 {v = $7} END {print v}' "$dir/a/char_lstm.csv")
lr_b=$(awk -F, 'NR > 1 {v = $7} END {print v}' "$dir/b/char_lstm.csv")
echo "first run ended at lr $lr_a; the run with --load --lr 1e-2 --schedule constant ran at lr $lr_b"
awk -v a="$lr_a" -v b="$lr_b" 'BEGIN {exit !(a + 0 < 0.001 && b + 0 == 0.01)}'
