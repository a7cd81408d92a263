#!/bin/sh
# Failures in a job of 2 ranks:
#  1. rank 1 gets an error at step 5 and calls nb_dist_abort while rank 0 writes a checkpoint after
#     every step: the job ends at once with a non-zero status and rank 1's message, and the checkpoint
#     left behind loads and holds a whole step (written atomically);
#  2. rank 1 stops calling collectives: rank 0's wait gives up after its timeout (2 s), reports it and
#     ends the job.
#   tests/dist_failure.sh MPIRUN TEST_DIST DIR        (exit 77, skipped, without mpirun)
mpirun=$1 prog=$2 dir=$3
here=$(dirname "$0")
. "$here/mpi-env.sh" # shared memory and loopback only (tests/mpirun.sh sets it too)
log=$dir/dist_failure.log
bad() { echo "FAIL: $*"; exit 1; }

run() { # run MODE...: the job's output in $log, its status in $rc, its seconds in $secs
    start=$(date +%s.%N)
    sh "$here/mpirun.sh" -t 60 "$mpirun" 2 "$prog" "$@" >"$log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "== test_dist $*: status $rc after $secs s"
    cat "$log"
    [ $rc -eq 77 ] && exit 77
    [ $rc -ne 0 ] || bad "the job ended with status 0"
    [ $rc -ne 124 ] && [ $rc -ne 137 ] || bad "the job hung until tests/mpirun.sh ended it"
    awk -v s="$secs" 'BEGIN { exit !(s < 30) }' || bad "the job took $secs s to end"
}

rm -f "$dir"/fail.safetensors "$dir"/fail.safetensors.tmp.*
run --fail "$dir"
grep -q "nabla: rank 1 of 2: simulated failure at step 5" "$log" || bad "rank 1's report is missing"
"$prog" --check-ckpt "$dir" || bad "the checkpoint left behind does not load"

run --hang
grep -q "nabla: rank 0 of 2: nb_ddp_finish: rank 0 of 2: bucket 1 of 1: no answer from the other ranks after 2 s" "$log" \
    || bad "rank 0's timeout report is missing"
echo "both failures ended the job with a report"
