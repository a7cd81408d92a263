/* Parameter collections and initialisers. Written against nabla.h only, like user code. */
#include <nabla.h>

#include <math.h>
#include <string.h>

typedef struct entry {
    char *name;
    nb_tensor *t;
    int trainable;
} entry;

struct nb_params {
    entry *e;
    int n, cap;
    int training;
};

nb_params *nb_params_new(void)
{
    nb_params *p = nb_calloc(1, sizeof *p);
    if (!p) {
        nb_error_set(NB_ERR_NOMEM, "nb_params_new: out of memory");
        return NULL;
    }
    p->training = 1;
    return p;
}

void nb_params_free(nb_params *p)
{
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        nb_tensor_unclaim(p->e[i].t, p);
        nb_tensor_free(p->e[i].t);
        nb_dealloc(p->e[i].name, strlen(p->e[i].name) + 1);
    }
    nb_dealloc(p->e, (size_t)p->cap * sizeof *p->e);
    nb_dealloc(p, sizeof *p);
}

/* The contract of nb_params_add: the collection takes t, also on failure, when t is the caller's to
 * give (an unowned leaf); an op result or a leaf with an owner (this collection, another, a
 * dataset...) is left as it is. */
static nb_tensor *add(nb_params *p, const char *name, nb_tensor *t, int trainable, const char *who)
{
    if (!t) return NULL; /* the constructor's error stands */
    if (!nb_tensor_is_leaf(t)) {
        nb_error_set(NB_ERR_ARG, "%s: %s is an op result; parameters must be leaves", who, name ? name : "(null)");
        return NULL;
    }
    if (nb_tensor_owner(t)) {
        const char *as = NULL;
        for (int i = 0; p && i < p->n && !as; i++)
            if (p->e[i].t == t) as = p->e[i].name;
        if (as)
            nb_error_set(NB_ERR_ARG, "%s: %s: the tensor is in this collection already (as %s)", who,
                         name ? name : "(null)", as);
        else
            nb_error_set(NB_ERR_ARG, "%s: %s: the tensor belongs to another container (a parameter collection, a "
                         "dataset, an optimizer...); a tensor has one owner (add a copy: nb_tensor_clone)", who,
                         name ? name : "(null)");
        return NULL; /* t stays with its owner */
    }
    if (!p || !name || !*name) {
        nb_tensor_free(t);
        nb_error_set(NB_ERR_ARG, "%s: collection or name missing", who);
        return NULL;
    }
    if (nb_params_find(p, name)) {
        nb_tensor_free(t);
        nb_error_set(NB_ERR_ARG, "%s: a parameter named %s exists already", who, name);
        return NULL;
    }
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 16;
        entry *e = nb_realloc(p->e, (size_t)p->cap * sizeof *e, (size_t)cap * sizeof *e);
        if (!e) {
            nb_tensor_free(t);
            nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, name);
            return NULL;
        }
        p->e = e;
        p->cap = cap;
    }
    char *copy = nb_strdup(name);
    if (!copy) {
        nb_tensor_free(t);
        nb_error_set(NB_ERR_NOMEM, "%s: %s: out of memory", who, name);
        return NULL;
    }
    /* the tensor's own copy of the name (for graphs and messages) can fail too */
    if ((trainable && nb_tensor_set_requires_grad(t, 1) != NB_OK) || nb_tensor_set_name(t, name) != NB_OK ||
        nb_tensor_claim(t, p) != NB_OK) {
        nb_dealloc(copy, strlen(copy) + 1);
        nb_tensor_free(t);
        return NULL;
    }
    p->e[p->n++] = (entry){copy, t, trainable};
    return t;
}

nb_tensor *nb_params_add(nb_params *p, const char *name, nb_tensor *t) { return add(p, name, t, 1, "nb_params_add"); }
nb_tensor *nb_params_add_buffer(nb_params *p, const char *name, nb_tensor *t) { return add(p, name, t, 0, "nb_params_add_buffer"); }

int nb_params_count(const nb_params *p) { return p ? p->n : 0; }
nb_tensor *nb_params_tensor(const nb_params *p, int i) { return p && i >= 0 && i < p->n ? p->e[i].t : NULL; }
const char *nb_params_name(const nb_params *p, int i) { return p && i >= 0 && i < p->n ? p->e[i].name : NULL; }
int nb_params_trainable(const nb_params *p, int i) { return p && i >= 0 && i < p->n ? p->e[i].trainable : 0; }

nb_tensor *nb_params_find(const nb_params *p, const char *name)
{
    if (!p || !name) return NULL;
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->e[i].name, name) == 0) return p->e[i].t;
    return NULL;
}

int64_t nb_params_numel(const nb_params *p)
{
    int64_t n = 0;
    for (int i = 0; p && i < p->n; i++)
        if (p->e[i].trainable) n += nb_tensor_numel(p->e[i].t);
    return n;
}

void nb_params_zero_grad(nb_params *p)
{
    for (int i = 0; p && i < p->n; i++) nb_tensor_zero_grad(p->e[i].t);
}

void nb_params_print(const nb_params *p, FILE *f)
{
    if (!f) f = stdout;
    if (!p) {
        fprintf(f, "(no parameters)\n");
        return;
    }
    size_t width = 4;
    for (int i = 0; i < p->n; i++)
        if (strlen(p->e[i].name) > width) width = strlen(p->e[i].name);
    for (int i = 0; i < p->n; i++) {
        char shape[96];
        fprintf(f, "  %-*s  %s %-16s %10lld%s\n", (int)width, p->e[i].name, nb_dtype_name(nb_tensor_dtype(p->e[i].t)),
                nb_shape_str(p->e[i].t, shape, sizeof shape), (long long)nb_tensor_numel(p->e[i].t),
                p->e[i].trainable ? "" : "  (buffer)");
    }
    fprintf(f, "  %d tensors, %lld trainable parameters\n", p->n, (long long)nb_params_numel(p));
}

void nb_params_set_training(nb_params *p, int training)
{
    if (p) p->training = training ? 1 : 0;
}

int nb_params_training(const nb_params *p) { return p ? p->training : 0; }

/* ---- initialisers ----------------------------------------------------------------------------- */

static void fill_uniform(nb_tensor *t, double bound, nb_rng *rng)
{
    for (int64_t i = 0; i < nb_tensor_numel(t); i++) nb_tensor_set(t, i, (2.0 * nb_rng_uniform(rng) - 1.0) * bound);
}

static void fill_normal(nb_tensor *t, double std, nb_rng *rng)
{
    for (int64_t i = 0; i < nb_tensor_numel(t); i++) nb_tensor_set(t, i, std * nb_rng_normal(rng));
}

nb_status nb_init_tensor(nb_tensor *t, nb_init init, int64_t fan_in, int64_t fan_out, nb_rng *rng)
{
    const char *who = "nb_init_tensor";
    if (!t) {
        nb_error_set(NB_ERR_ARG, "%s: tensor is NULL", who);
        return NB_ERR_ARG;
    }
    int random = init.kind != NB_INIT_ZEROS && init.kind != NB_INIT_CONSTANT;
    if (random && !rng) {
        nb_error_set(NB_ERR_ARG, "%s: rng is NULL", who);
        return NB_ERR_ARG;
    }
    if (fan_in < 1) fan_in = 1;
    if (fan_out < 1) fan_out = 1;
    double gain = init.a != 0 ? init.a : 1.0;
    switch (init.kind) {
    case NB_INIT_ZEROS: return nb_tensor_fill(t, 0.0);
    case NB_INIT_CONSTANT: return nb_tensor_fill(t, init.a);
    case NB_INIT_UNIFORM: fill_uniform(t, init.a, rng); break;
    case NB_INIT_NORMAL: fill_normal(t, init.a, rng); break;
    case NB_INIT_XAVIER_UNIFORM: fill_uniform(t, gain * sqrt(6.0 / (double)(fan_in + fan_out)), rng); break;
    case NB_INIT_XAVIER_NORMAL: fill_normal(t, gain * sqrt(2.0 / (double)(fan_in + fan_out)), rng); break;
    case NB_INIT_KAIMING_UNIFORM:
        fill_uniform(t, sqrt(6.0 / ((1.0 + init.a * init.a) * (double)fan_in)), rng);
        break;
    case NB_INIT_KAIMING_NORMAL: fill_normal(t, sqrt(2.0 / ((1.0 + init.a * init.a) * (double)fan_in)), rng); break;
    default:
        nb_error_set(NB_ERR_ARG, "%s: init kind %d is not a concrete initialiser", who, (int)init.kind);
        return NB_ERR_ARG;
    }
    return NB_OK;
}
