/* nabla/dist.h in a build without MPI: every function that needs MPI records NB_ERR_UNSUPPORTED and
 * returns it (or NULL); the accessors describe a program run alone. */
#include <nabla.h>

#include <stdio.h>

static nb_status unsupported(const char *who)
{
    nb_error_set(NB_ERR_UNSUPPORTED, "%s: this nabla was built without MPI (install libopenmpi-dev or "
                 "libmpich-dev and configure with meson setup -Dmpi=enabled)", who);
    return NB_ERR_UNSUPPORTED;
}

int nb_dist_available(void) { return 0; }

nb_status nb_dist_init(int *argc, char ***argv, nb_dist **out)
{
    if (out) *out = NULL;
    return unsupported("nb_dist_init");
}

nb_status nb_dist_from_comm(const void *comm, nb_dist **out)
{
    if (out) *out = NULL;
    return unsupported("nb_dist_from_comm");
}

void nb_dist_free(nb_dist *d) {}
int nb_dist_rank(const nb_dist *d) { return 0; }
int nb_dist_size(const nb_dist *d) { return 1; }
int nb_dist_local_size(const nb_dist *d) { return 1; }
const void *nb_dist_comm(const nb_dist *d) { return NULL; }
nb_status nb_dist_set_timeout(nb_dist *d, double seconds) { return unsupported("nb_dist_set_timeout"); }
double nb_dist_timeout(const nb_dist *d) { return 0; }
int nb_dist_broken(const nb_dist *d) { return 0; }
nb_status nb_dist_barrier(nb_dist *d) { return unsupported("nb_dist_barrier"); }

nb_status nb_dist_abort(nb_dist *d, const char *message)
{
    fprintf(stderr, "nabla: rank 0 of 1: %s\n", message ? message : "(no message)");
    fflush(stderr);
    return unsupported("nb_dist_abort");
}

nb_status nb_dist_allreduce(nb_dist *d, double *values, int n, nb_dist_op op) { return unsupported("nb_dist_allreduce"); }
nb_status nb_dist_agree(nb_dist *d, nb_status st) { return unsupported("nb_dist_agree"); }
nb_status nb_dist_broadcast(nb_dist *d, nb_tensor *t, int root) { return unsupported("nb_dist_broadcast"); }
nb_status nb_dist_broadcast_params(nb_dist *d, nb_params *p, int root) { return unsupported("nb_dist_broadcast_params"); }
nb_status nb_dist_broadcast_optim(nb_dist *d, nb_optim *opt, int root) { return unsupported("nb_dist_broadcast_optim"); }
nb_status nb_dist_check_params(nb_dist *d, const nb_params *p) { return unsupported("nb_dist_check_params"); }

nb_status nb_dist_checkpoint_save(nb_dist *d, const char *path, const nb_params *p, const nb_optim *opt, int64_t step)
{
    return unsupported("nb_dist_checkpoint_save");
}

nb_status nb_dist_checkpoint_load(nb_dist *d, const char *path, nb_params *p, nb_optim *opt, int64_t *step)
{
    return unsupported("nb_dist_checkpoint_load");
}

nb_ddp *nb_ddp_new(nb_dist *d, nb_params *params, const nb_ddp_opts *opts)
{
    unsupported("nb_ddp_new");
    return NULL;
}

void nb_ddp_free(nb_ddp *g) {}
nb_status nb_ddp_set_sync(nb_ddp *g, int sync) { return unsupported("nb_ddp_set_sync"); }
nb_status nb_ddp_set_samples(nb_ddp *g, double n) { return unsupported("nb_ddp_set_samples"); }
nb_status nb_ddp_finish(nb_ddp *g) { return unsupported("nb_ddp_finish"); }
int nb_ddp_bucket_count(const nb_ddp *g) { return 0; }
int nb_ddp_bucket_of(const nb_ddp *g, int param_index) { return -1; }
int64_t nb_ddp_bucket_bytes(const nb_ddp *g, int bucket) { return 0; }

void nb_ddp_get_stats(const nb_ddp *g, nb_ddp_stats *stats)
{
    if (stats) *stats = (nb_ddp_stats){0};
}

void nb_ddp_reset_stats(nb_ddp *g) {}
