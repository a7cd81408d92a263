#!/bin/sh
# Resume with another number of ranks: 25 steps on 2 ranks (rank 0 writes the checkpoint), then 25
# more on 3 ranks from it; test_dist compares the result with 50 uninterrupted steps of one process.
#   tests/dist_resume.sh MPIRUN TEST_DIST DIR        (exit 77, skipped, without mpirun)
set -e
here=$(dirname "$0")
. "$here/mpi-env.sh" # shared memory and loopback only (tests/mpirun.sh sets it too)
rm -f "$3/resume.safetensors"
sh "$here/mpirun.sh" -t 120 "$1" 2 "$2" --resume-save "$3"
sh "$here/mpirun.sh" -t 120 "$1" 3 "$2" --resume-load "$3"
