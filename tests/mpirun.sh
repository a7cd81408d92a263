#!/bin/sh
# Run an MPI program on this machine only, over shared memory and the loopback interface: never a
# message to any other address (the network rule of docs/distributed.md).
#   tests/mpirun.sh [-t SECONDS] MPIRUN NP PROGRAM [ARGS...]
# MPIRUN is the launcher meson found (empty or missing: exit 77, which meson reports as skipped).
# -t ends the job after SECONDS (default 300) so that a hang fails instead of waiting for ever.
limit=300
if [ "$1" = "-t" ]; then limit=$2; shift 2; fi
. "$(dirname "$0")/mpi-env.sh" # shared memory and loopback only, for Open MPI and MPICH alike
mpirun=$1 np=$2
shift 2
if [ -z "$mpirun" ] || ! command -v "$mpirun" >/dev/null 2>&1; then
    echo "mpirun not found: skipped"
    exit 77
fi
if "$mpirun" --version 2>&1 | grep -q -E "Open MPI|OpenRTE"; then
    # (tests/mpi-env.sh: vader between the ranks, the launcher's own channel on loopback only)
    # ranks may share cores with each other and with other jobs: yield while waiting
    export OMPI_MCA_mpi_yield_when_idle=1
    set -- --oversubscribe "$@"
elif "$mpirun" --version 2>&1 | grep -q "HYDRA"; then
    # MPICH's Hydra: processes forked here, its control channel on loopback, and (UCX builds, as
    # Debian's) shared memory only between the ranks (tests/mpi-env.sh)
    set -- -launcher fork -iface lo "$@"
else
    echo "$mpirun is neither Open MPI's nor MPICH's (Hydra): not known to stay on loopback: skipped"
    exit 77
fi
# Open MPI's own allocations outlive MPI_Finalize: not ours to report under LeakSanitizer. Its plugins
# are unloaded by then and lack frame pointers: the slow unwinder reaches the libraries that loaded
# them, which the suppressions name.
export LSAN_OPTIONS="suppressions=$(dirname "$0")/lsan-mpi.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export ASAN_OPTIONS="fast_unwind_on_malloc=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
exec timeout -k 10 "$limit" "$mpirun" -np "$np" "$@"
