/* nb_dist_launched: whether an MPI launcher started this process. Built with and without MPI. */
#include <nabla.h>

#include <stdlib.h>

int nb_dist_launched(void)
{
    /* set by Open MPI's mpirun, by PMI-1/PMI-2 launchers (MPICH's Hydra mpiexec, srun --mpi=pmi2) and
     * by PMIx launchers (Open MPI 5, srun --mpi=pmix) for each process they start */
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", NULL};
    for (int i = 0; vars[i]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return 1;
    }
    return 0;
}
