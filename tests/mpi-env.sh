# The network rule, in one place: every MPI job this project starts (tests, CI, benchmarks) stays on
# this machine, over shared memory and the loopback interface, never a message to another address.
# Sourced by tests/mpirun.sh (which every MPI run goes through), the scripts that call it and .ci/run:
#   . tests/mpi-env.sh
# Open MPI: shared memory between the ranks (vader), TCP and the launcher's own channel on lo only.
export OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl_tcp_if_include=lo
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# MPICH (Hydra, UCX or libfabric builds): the control channel on lo, shared memory between the ranks.
export HYDRA_IFACE=lo UCX_TLS=self,sm UCX_NET_DEVICES=lo FI_PROVIDER=shm
