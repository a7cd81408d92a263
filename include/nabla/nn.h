/**
 * @file
 * nabla/nn: layers, losses and regularisation composed from nabla's differentiable ops (no
 * hand-written backward anywhere). Included by nabla.h.
 *
 * Ownership: a parameter collection (nb_params) owns every parameter tensor registered in it and
 * frees them all in nb_params_free. Layer structs are plain values holding borrowed pointers to
 * their parameters; copy or discard them freely, but do not use them after their collection is freed.
 * Weights follow PyTorch's layouts and names (a Linear weight is [out, in]; LSTM gates are ordered
 * input, forget, cell, output), so parameters map one-to-one onto PyTorch checkpoints.
 */
#ifndef NABLA_NN_H
#define NABLA_NN_H

#ifndef NABLA_H
#error "include <nabla.h>, not <nabla/nn.h>"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------- */
/* Parameter collections                                                                           */
/* ---------------------------------------------------------------------------------------------- */
/**
 * @defgroup params Parameter collections
 * Named tensors owned together: the parameters and buffers of a model.
 * @{ */

/** A collection of named leaves (parameters and buffers) that it owns, with the training mode. */
typedef struct nb_params nb_params;

/** A new, empty collection in training mode. Free with nb_params_free. */
nb_params *nb_params_new(void);
/** Frees the collection and every tensor in it. NULL is ignored. */
void nb_params_free(nb_params *p);
/** Register leaf t under name (copied; names must be unique, and such that nb_checkpoint_save can write
 * them: valid UTF-8, not "__metadata__", not beginning with "optim.", which checkpoints keep for the
 * optimizer's state; others are refused with NB_ERR_ARG) and mark it as requiring grad. The
 * collection takes ownership of t (nb_tensor_claim), also on failure: then t is freed and NULL
 * returned. Except when t is not yours to give, and then it is left untouched: an op result (its
 * tape's), or a leaf that has an owner already (this collection, another one, a dataset...): adding
 * a tensor twice, or to two collections, is an NB_ERR_ARG error, never a double free. A view made
 * without a tape (nb_tensor_is_view) is refused, here and as a buffer: a parameter needs data of its
 * own (add nb_tensor_clone of it); nb_params_add also refuses a leaf that has such views (it could not
 * require grad). */
nb_tensor *nb_params_add(nb_params *p, const char *name, nb_tensor *t);
/** Register a leaf that is state, not trained (running statistics...): owned, no gradient. */
nb_tensor *nb_params_add_buffer(nb_params *p, const char *name, nb_tensor *t);
/** The number of tensors registered (parameters and buffers). */
int nb_params_count(const nb_params *p);
/** The i-th tensor and its name, in registration order; NULL when out of range. @{ */
nb_tensor *nb_params_tensor(const nb_params *p, int i);
const char *nb_params_name(const nb_params *p, int i);
/** @} */
/** Whether the i-th tensor is trained (1) or a buffer (0). */
int nb_params_trainable(const nb_params *p, int i);
/** The tensor registered under name, or NULL (no error recorded). */
nb_tensor *nb_params_find(const nb_params *p, const char *name);
/** Total number of trainable elements. */
int64_t nb_params_numel(const nb_params *p);
/** Zero every parameter's gradient (keeping the buffers). */
void nb_params_zero_grad(nb_params *p);
/** One line per tensor (name, dtype, shape, element count; buffers marked) and the trainable total. */
void nb_params_print(const nb_params *p, FILE *f);
/** Training mode (the default) or evaluation mode; dropout acts only in training mode. @{ */
void nb_params_set_training(nb_params *p, int training);
int nb_params_training(const nb_params *p);
/** @} */

/* ---------------------------------------------------------------------------------------------- */
/* Initialisers                                                                                    */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup init Initialisers
 * Filling parameters: constants, uniform, normal, Xavier, Kaiming, orthogonal, truncated normal.
 * @{ */

/** How nb_init_tensor fills a tensor; a is nb_init's parameter. */
typedef enum nb_init_kind {
    NB_INIT_DEFAULT = 0,     /**< the layer's standard initialisation */
    NB_INIT_ZEROS,           /**< 0 */
    NB_INIT_CONSTANT,        /**< a */
    NB_INIT_UNIFORM,         /**< U(-a, a) */
    NB_INIT_NORMAL,          /**< N(0, a^2) */
    NB_INIT_XAVIER_UNIFORM,  /**< U(-b, b), b = a sqrt(6 / (fan_in + fan_out)); gain a (0 means 1) */
    NB_INIT_XAVIER_NORMAL,   /**< N(0, s^2), s = a sqrt(2 / (fan_in + fan_out)) */
    NB_INIT_KAIMING_UNIFORM, /**< U(-b, b), b = sqrt(6 / fan_in) (ReLU gain sqrt 2; a: leaky slope) */
    NB_INIT_KAIMING_NORMAL,  /**< N(0, s^2), s = sqrt(2 / ((1 + a^2) fan_in)) */
    NB_INIT_ORTHOGONAL,      /**< torch.nn.init.orthogonal_: gain a (0 means 1) times the Q of a QR */
    NB_INIT_TRUNC_NORMAL,    /**< torch.nn.init.trunc_normal_: N(mean, a^2) (a 0 means 1) cut to [lo, hi] */
    NB_INIT_COUNT            /**< the number of kinds (not a kind) */
} nb_init_kind;

/** An initialisation: a kind and its parameters. */
typedef struct nb_init {
    nb_init_kind kind;       /**< which distribution */
    double a;                /**< its parameter (see nb_init_kind) */
    double mean;             /**< NB_INIT_TRUNC_NORMAL only: the normal's mean */
    double lo;               /**< NB_INIT_TRUNC_NORMAL only: [lo, hi]; lo = hi = 0 means [-2, 2], as torch */
    double hi;               /**< NB_INIT_TRUNC_NORMAL only: see lo */
} nb_init;

/** Fill leaf t according to init, drawing from rng. fan_in/fan_out are the layer's (for a weight
 * [out, in]: in and out). NB_INIT_DEFAULT is refused here (it only means something to a layer), and
 * so are the random kinds for an i64 tensor or with a non-finite a (zeros and constants take any).
 * NB_INIT_ORTHOGONAL: t (at least 2-D) viewed as [rows = dim 0, cols = the rest] is gain * Q, Q from
 * the QR of a [max, min] matrix of N(0, 1) draws (drawn as [rows, cols] in row-major order, then
 * transposed when rows < cols) with the signs making R's diagonal positive: orthonormal rows when
 * rows <= cols, orthonormal columns otherwise. NB_INIT_TRUNC_NORMAL: inverse-CDF sampling, one
 * uniform draw per element; every value lies in [lo, hi] (needs lo < hi and a >= 0); an interval
 * too far in a tail for double precision (over 37 standard deviations) gives its nearer bound. */
nb_status nb_init_tensor(nb_tensor *t, nb_init init, int64_t fan_in, int64_t fan_out, nb_rng *rng);

/** Options shared by layer constructors; NULL or a zeroed struct gives the defaults. */
typedef struct nb_layer_opts {
    nb_dtype dtype;      /**< of the parameters (default NB_F32) */
    int no_bias;         /**< 1: no bias terms */
    nb_init weight_init; /**< default: the layer's standard (PyTorch's, except where noted) */
    nb_init bias_init;   /**< default: the layer's standard */
    nb_init forget_bias; /**< LSTM: the forget gate's input bias; default constant 1 */
    int use_padding_idx; /**< Embedding: 1 to give row padding_idx torch's padding semantics */
    int64_t padding_idx; /**< Embedding: that row (negative: counted from the end) */
} nb_layer_opts;

/* ---------------------------------------------------------------------------------------------- */
/* Layers                                                                                          */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup layers Layers
 * Linear, MLP, embedding, layer norm, dropout. Each *_init registers the layer's parameters in p
 * (which owns them) under name, initialises them from rng and fills the struct; on failure it
 * returns the status with a message, and parameters registered before the failure stay in p.
 * @{ */

/** Activation functions for nb_activate and the layers that take one. */
typedef enum nb_activation {
    NB_ACT_NONE = 0,   /**< identity */
    NB_ACT_RELU,       /**< nb_relu */
    NB_ACT_TANH,       /**< nb_tanh */
    NB_ACT_SIGMOID,    /**< nb_sigmoid */
    NB_ACT_GELU,       /**< nb_gelu */
    NB_ACT_LEAKY_RELU, /**< nb_leaky_relu with slope 0.01 */
    NB_ACT_ELU,        /**< nb_elu with alpha 1 */
    NB_ACT_SOFTPLUS,   /**< nb_softplus */
    NB_ACT_COUNT       /**< the number of activations (not one) */
} nb_activation;

/** Apply an activation (leaky ReLU slope 0.01, ELU alpha 1). NB_ACT_NONE gives x's values as a
 * tensor of its own (a view on the tape), never x itself. */
nb_tensor *nb_activate(nb_tensor *x, nb_activation act);
/** "none", "relu", "tanh", ...; "?" for an unknown activation. */
const char *nb_activation_name(nb_activation act);

/** The perceptron: y = x W^T + b, W [out, in] ("name.weight"), b [out] ("name.bias").
 * Default init: W and b ~ U(-1/sqrt(in), 1/sqrt(in)), as PyTorch. */
typedef struct nb_linear {
    nb_tensor *weight;        /**< [out, in], owned by the collection */
    nb_tensor *bias;          /**< [out]; NULL with no_bias */
    int64_t in;               /**< input features */
    int64_t out;              /**< output features */
} nb_linear;
/** Register a Linear layer in p as "name.weight" and "name.bias". */
nb_status nb_linear_init(nb_linear *l, nb_params *p, const char *name, int64_t in, int64_t out,
                         const nb_layer_opts *opts, nb_rng *rng);
/** x [..., in] -> [..., out] */
nb_tensor *nb_linear_forward(const nb_linear *l, nb_tensor *x);

/** Most layers an nb_mlp may have. */
#define NB_MLP_MAX_LAYERS 16

/** Linear layers with an activation (and dropout, in training mode) between them, none after the
 * last. Layer i is "name.<i>". */
typedef struct nb_mlp {
    int n_layers;           /**< Linear layers used */
    nb_linear layer[NB_MLP_MAX_LAYERS]; /**< the first n_layers are used */
    nb_activation act;      /**< between layers */
    double dropout;         /**< probability, between layers in training mode */
    nb_rng *rng;            /**< for dropout; borrowed */
    const nb_params *owner; /**< whose training mode applies */
} nb_mlp;
/** sizes: n_sizes >= 2 extents, input first (n_sizes - 1 layers). rng draws the initial weights and,
 * when dropout > 0, the dropout masks later: it must outlive the MLP then. */
nb_status nb_mlp_init(nb_mlp *m, nb_params *p, const char *name, int n_sizes, const int64_t *sizes,
                      nb_activation act, double dropout, const nb_layer_opts *opts, nb_rng *rng);
/** x [..., sizes[0]] -> [..., sizes[n_sizes - 1]] */
nb_tensor *nb_mlp_forward(const nb_mlp *m, nb_tensor *x);

/** Inverted dropout in training mode of model (identity in evaluation mode or for p = 0: x's values
 * as a tensor of its own, a view on the tape, never x itself, as every op). */
nb_tensor *nb_train_dropout(const nb_params *model, nb_tensor *x, double p, nb_rng *rng);

/** Lookup table: weight [num, dim] ("name.weight"), default N(0, 1) as PyTorch. With
 * opts->use_padding_idx, row padding_idx (in [-num, num); negative counts from the end) is
 * initialised to zeros and never receives gradient (its gradient is zero), as torch's padding_idx;
 * lookups of it still return the row's current values. */
typedef struct nb_embedding {
    nb_tensor *weight;   /**< [num, dim] */
    int64_t num;         /**< rows (the vocabulary) */
    int64_t dim;         /**< columns (the embedding size) */
    int has_padding;     /**< padding_idx (in [0, num)) is the padding row */
    int64_t padding_idx; /**< the padding row, when has_padding */
} nb_embedding;
/** Register an embedding table in p as "name.weight". */
nb_status nb_embedding_init(nb_embedding *e, nb_params *p, const char *name, int64_t num, int64_t dim,
                            const nb_layer_opts *opts, nb_rng *rng);
/** idx: i64 [...] -> [..., dim]; indices must be in [0, num). Repeated indices accumulate gradient
 * (but for the padding row's). */
nb_tensor *nb_embedding_forward(const nb_embedding *e, nb_tensor *idx);

/** Layer normalisation over the last dim: (x - mean) / sqrt(var + eps) * weight + bias, with the
 * biased variance; weight ("name.weight") ones, bias ("name.bias") zeros. */
typedef struct nb_layer_norm {
    nb_tensor *weight;   /**< [dim] */
    nb_tensor *bias;     /**< [dim]; NULL with no_bias */
    int64_t dim;         /**< the normalised (last) dim's extent */
    double eps;          /**< added to the variance */
} nb_layer_norm;
/** Register a layer norm over a last dim of extent dim in p; eps >= 0 (torch's default 1e-5). */
nb_status nb_layer_norm_init(nb_layer_norm *ln, nb_params *p, const char *name, int64_t dim, double eps,
                             const nb_layer_opts *opts);
/** x [..., dim] -> [..., dim] */
nb_tensor *nb_layer_norm_forward(const nb_layer_norm *ln, nb_tensor *x);

/* ---------------------------------------------------------------------------------------------- */
/* Convolutional layers (names and semantics of torch.nn: checkpoints load both ways)              */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup cnn_layers Convolutional layers
 * Conv1d/2d, batch and group normalisation, channel dropout, flatten, with torch.nn's names.
 * @{ */

/** Conv1d / Conv2d: weight [out, in / groups, kh, kw] ([out, in / groups, k] in 1-D) ("name.weight"),
 * bias [out] ("name.bias", none with opts->no_bias). Default init as PyTorch: kaiming uniform with
 * a = sqrt(5), that is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both, fan_in = in / groups * kh * kw. */
typedef struct nb_conv {
    nb_tensor *weight;  /**< [out, in / groups, kh, kw] (1-D: [out, in / groups, k]) */
    nb_tensor *bias;    /**< [out]; NULL with no_bias */
    int dims;           /**< 1 or 2 */
    int64_t in;         /**< input channels */
    int64_t out;        /**< output channels */
    int64_t kernel[2];  /**< kh, kw (1-D: k, 1) */
    nb_conv_opts conv;  /**< stride, padding, dilation, groups */
} nb_conv;
/** Register a Conv2d (kh x kw kernel) or Conv1d (k) layer in p; conv NULL: nb_conv_defaults(). @{ */
nb_status nb_conv2d_init(nb_conv *c, nb_params *p, const char *name, int64_t in, int64_t out, int64_t kh, int64_t kw,
                         const nb_conv_opts *conv, const nb_layer_opts *opts, nb_rng *rng);
nb_status nb_conv1d_init(nb_conv *c, nb_params *p, const char *name, int64_t in, int64_t out, int64_t k,
                         const nb_conv_opts *conv, const nb_layer_opts *opts, nb_rng *rng);
/** @} */
/** x [N, in, H, W] -> [N, out, Ho, Wo] (1-D: [N, in, L] -> [N, out, Lo]) */
nb_tensor *nb_conv_forward(const nb_conv *c, nb_tensor *x);

/** Options of the normalisation layers; NULL or a zeroed struct gives PyTorch's defaults. */
typedef struct nb_norm_opts {
    nb_dtype dtype;       /**< of the tensors (default NB_F32) */
    double eps;           /**< added to the variance (0: 1e-5) */
    double momentum;      /**< batch norm: weight of a new batch in the running statistics (0: 0.1);
                               negative: their cumulative average (PyTorch's momentum=None) */
    int no_affine;        /**< 1: no weight and bias (affine=False) */
    int no_running_stats; /**< batch norm: 1: batch statistics in evaluation too, no buffers
                               (track_running_stats=False) */
} nb_norm_opts;

/** BatchNorm1d / BatchNorm2d over C features: weight ones and bias zeros ("name.weight", "name.bias"),
 * buffers "name.running_mean" (zeros), "name.running_var" (ones) and "name.num_batches_tracked" (i64
 * scalar), as torch.nn.BatchNorm. In training mode of the collection it normalises with the batch's
 * statistics (biased variance) and updates the buffers outside the graph: running = (1 - momentum)
 * running + momentum batch, with the unbiased variance; in evaluation mode it uses the buffers. As torch,
 * training refuses one value per channel, and an empty batch gives an empty result and only counts in
 * num_batches_tracked. */
typedef struct nb_batch_norm {
    nb_tensor *weight;              /**< [C] ones; NULL with no_affine */
    nb_tensor *bias;                /**< [C] zeros; NULL with no_affine */
    nb_tensor *running_mean;        /**< buffer [C]; NULL with no_running_stats */
    nb_tensor *running_var;         /**< buffer [C]; NULL with no_running_stats */
    nb_tensor *num_batches_tracked; /**< buffer, i64 scalar; NULL with no_running_stats */
    int dims;                       /**< 1 or 2 */
    int64_t features;               /**< C */
    nb_dtype dtype;                 /**< of the tensors */
    double eps;                     /**< added to the variance */
    double momentum;                /**< weight of a new batch; negative: cumulative average */
    const nb_params *owner;         /**< whose training mode applies */
} nb_batch_norm;
/** Register a BatchNorm2d (inputs [N, C, H, W]) or BatchNorm1d ([N, C] or [N, C, L]) over features
 * channels in p. @{ */
nb_status nb_batch_norm2d_init(nb_batch_norm *bn, nb_params *p, const char *name, int64_t features,
                               const nb_norm_opts *opts);
nb_status nb_batch_norm1d_init(nb_batch_norm *bn, nb_params *p, const char *name, int64_t features,
                               const nb_norm_opts *opts);
/** @} */
/** 2d: x [N, C, H, W]; 1d: [N, C] or [N, C, L]. Same shape out. Changes the buffers in training mode
 * (do not call it twice on one step's graph expecting the same statistics). */
nb_tensor *nb_batch_norm_forward(const nb_batch_norm *bn, nb_tensor *x);
/** A conv-bn-relu-pool block's tail: nb_max_pool2d(nb_relu(nb_batch_norm_forward(bn, x)), kh, kw, NULL)
 * for a BatchNorm2d, with the buffers updated the same way; in training one fused op
 * (nb_batch_norm_relu_max_pool2d: windows of stride kh x kw, no padding). */
nb_tensor *nb_batch_norm_relu_pool_forward(const nb_batch_norm *bn, nb_tensor *x, int64_t kh, int64_t kw);

/** GroupNorm: channels split into groups, each (sample, group) normalised over its channels and
 * positions, then weight [C] and bias [C] per channel ("name.weight" ones, "name.bias" zeros). */
typedef struct nb_group_norm {
    nb_tensor *weight; /**< [C] ones; NULL with no_affine */
    nb_tensor *bias;   /**< [C] zeros; NULL with no_affine */
    int64_t groups;    /**< dividing channels */
    int64_t channels;  /**< C */
    nb_dtype dtype;    /**< of the tensors */
    double eps;        /**< added to the variance */
} nb_group_norm;
/** Register a GroupNorm of groups groups over channels channels in p. */
nb_status nb_group_norm_init(nb_group_norm *gn, nb_params *p, const char *name, int64_t groups, int64_t channels,
                             const nb_norm_opts *opts);
/** x [N, C, ...] -> the same shape */
nb_tensor *nb_group_norm_forward(const nb_group_norm *gn, nb_tensor *x);

/** Channel dropout (torch.nn.Dropout2d) in training mode of model: whole channels of x [N, C, ...] are
 * zeroed with probability p, the others scaled by 1 / (1 - p). In evaluation mode or with p = 0 a view of
 * x with a node of its own (never x itself), as nb_train_dropout. */
nb_tensor *nb_train_dropout2d(const nb_params *model, nb_tensor *x, double p, nb_rng *rng);
/** Merge dims start_dim..end_dim (negative: from the end) into one, as torch.flatten (a view). */
nb_tensor *nb_flatten(nb_tensor *x, int start_dim, int end_dim);

/* ---------------------------------------------------------------------------------------------- */
/* Recurrent layers                                                                                */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup recurrent Recurrent layers
 * Elman, LSTM and GRU cells, and multi-layer networks over sequences.
 * @{ */

/** Kinds of recurrent cell. */
typedef enum nb_rnn_kind {
    NB_RNN_TANH = 0,   /**< Elman with tanh */
    NB_RNN_RELU,       /**< Elman with ReLU */
    NB_LSTM,           /**< long short-term memory */
    NB_GRU,            /**< gated recurrent unit */
    NB_RNN_KIND_COUNT  /**< the number of kinds (not a kind) */
} nb_rnn_kind;

/** One recurrent cell: w_ih [G*hidden, input], w_hh [G*hidden, hidden], b_ih, b_hh [G*hidden], with
 * G = 1 (Elman), 4 (LSTM: input, forget, cell, output) or 3 (GRU: reset, update, new), named
 * "name.weight_ih", "name.weight_hh", "name.bias_ih", "name.bias_hh". Default init U(-k, k),
 * k = 1/sqrt(hidden), as PyTorch, except the LSTM forget gate's b_ih (opts->forget_bias, default 1). */
typedef struct nb_rnn_cell {
    nb_rnn_kind kind;    /**< which cell */
    int64_t input;       /**< input features */
    int64_t hidden;      /**< hidden features */
    nb_tensor *w_ih;     /**< [G*hidden, input] */
    nb_tensor *w_hh;     /**< [G*hidden, hidden] */
    nb_tensor *b_ih;     /**< [G*hidden]; NULL with no_bias */
    nb_tensor *b_hh;     /**< [G*hidden]; NULL with no_bias */
} nb_rnn_cell;
/** Register a cell of kind in p under name ("name.weight_ih", ...). */
nb_status nb_rnn_cell_init(nb_rnn_cell *c, nb_params *p, const char *name, nb_rnn_kind kind, int64_t input,
                           int64_t hidden, const nb_layer_opts *opts, nb_rng *rng);
/** Elman: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh); x [B, input], h [B, hidden]. */
nb_tensor *nb_elman_cell(const nb_rnn_cell *c, nb_tensor *x, nb_tensor *h);
/** LSTM: i, f, g, o = sigma, sigma, tanh, sigma of the gate pre-activations;
 * c' = f c + i g; h' = o tanh(c'). *h_out and *c_out get h' and c' on the current tape. */
nb_status nb_lstm_cell(const nb_rnn_cell *c, nb_tensor *x, nb_tensor *h, nb_tensor *cell, nb_tensor **h_out,
                       nb_tensor **c_out);
/** GRU: r, z = sigma(...); n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn)); h' = (1 - z) n + z h. */
nb_tensor *nb_gru_cell(const nb_rnn_cell *c, nb_tensor *x, nb_tensor *h);

/** Most layers an nb_rnn may have. */
#define NB_RNN_MAX_LAYERS 8

/** A multi-layer recurrent network over sequences; layer l's cell is named "name.*_l<l>" as in
 * torch.nn.RNN/LSTM/GRU ("name.weight_ih_l0", ...), and a bidirectional network's reverse cells
 * "name.*_l<l>_reverse" (registered after the same layer's forward cell, as torch orders them).
 * Layer l > 0 of a bidirectional network takes both directions' outputs, [.., 2*hidden]. */
typedef struct nb_rnn {
    nb_rnn_kind kind;       /**< the cells' kind */
    int layers;             /**< 1..NB_RNN_MAX_LAYERS */
    int64_t input;          /**< input features */
    int64_t hidden;         /**< hidden features (per direction) */
    int batch_first;        /**< x is [B, T, F] rather than [T, B, F] */
    double dropout;         /**< between layers, in training mode */
    nb_rng *rng;            /**< for dropout; borrowed */
    const nb_params *owner; /**< whose training mode applies */
    nb_rnn_cell cell[NB_RNN_MAX_LAYERS]; /**< layer l's cell (the forward direction's) */
    int bidirectional;      /**< 1: cell_reverse runs each layer backwards in time as well */
    nb_rnn_cell cell_reverse[NB_RNN_MAX_LAYERS]; /**< layer l's reverse cell, when bidirectional */
} nb_rnn;

/** Options of nb_rnn_init; NULL or a zeroed struct: sequence first, one direction, no dropout. */
typedef struct nb_rnn_opts {
    nb_layer_opts layer;    /**< the cells' options */
    int batch_first;        /**< 1: x is [B, T, F] */
    double dropout;         /**< in [0, 1): on each layer's output but the last, in training mode */
    int bidirectional;      /**< 1: as torch's bidirectional=True */
} nb_rnn_opts;

/** Register a network of layers cells of kind in p under name (opts NULL: the defaults); rng draws the
 * initial weights and, with dropout, the masks later: it must outlive the network then. */
nb_status nb_rnn_init(nb_rnn *r, nb_params *p, const char *name, nb_rnn_kind kind, int64_t input,
                      int64_t hidden, int layers, const nb_rnn_opts *opts, nb_rng *rng);

/** Recurrent state: h [layers * D, B, hidden], D = 2 for a bidirectional network (in torch's order:
 * layer 0 forward, layer 0 reverse, layer 1 forward, ...) and 1 otherwise, and c of the same shape
 * for an LSTM (NULL otherwise). */
typedef struct nb_rnn_state {
    nb_tensor *h; /**< hidden state */
    nb_tensor *c; /**< LSTM cell state; NULL for other kinds */
} nb_rnn_state;

/** Run the network over x ([T, B, input], or [B, T, input] when batch_first). init: the initial state
 * or NULL for zeros. lengths: NULL, or B sequence lengths in 1..T; a sequence's steps past its
 * length leave its state unchanged and output zeros, and what x holds there does not matter (any
 * padding, NaN included, changes no output and no gradient); the reverse direction of a sequence of
 * length L starts from the initial state at step L-1, as torch's packed sequences do. out (may be NULL):
 * every step's top-layer output, [T, B, D*hidden] (or [B, T, D*hidden]), the forward direction's
 * first. final (may be NULL): the state after each sequence's last step (for the reverse direction,
 * after step 0). The input projection of all steps is one matrix product per layer and direction.
 * *out and final's tensors are op results on the current tape: the tape owns them and releases them
 * at its reset (keep a state across resets with nb_rnn_state_keep); on failure they are set to NULL. */
nb_status nb_rnn_forward(const nb_rnn *r, nb_tensor *x, const nb_rnn_state *init, const int64_t *lengths,
                         nb_tensor **out, nb_rnn_state *final);

/** Truncated backpropagation through time: copy a state's values into caller-owned leaves kept in
 * *keep (allocated on the first call, reused after), which carry the state into the next chunk
 * without a graph and survive nb_tape_reset. Call it after the chunk's backward: when *keep was this
 * chunk's initial state, overwriting it earlier makes the backward report a changed input. Free with
 * nb_rnn_state_free. */
nb_status nb_rnn_state_keep(const nb_rnn_state *state, nb_rnn_state *keep);
/** Free the leaves of a kept state and set them to NULL. NULL is ignored. */
void nb_rnn_state_free(nb_rnn_state *keep);

/* ---------------------------------------------------------------------------------------------- */
/* Attention                                                                                       */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup attention Attention
 * Scaled dot-product and multi-head attention with causal and padding masks.
 * @{ */

/** softmax(q k^T / sqrt(d) + masks) v over the last two dims: q [..., Tq, d], k [..., Tk, d],
 * v [..., Tk, dv] -> [..., Tq, dv]. mask: NULL, or 1 = attend / 0 = masked, broadcastable to
 * [..., Tq, Tk] (a key padding mask is [B, 1, 1, Tk] for 4-D inputs); causal: position i attends to
 * keys j <= i only. A query with every key masked yields NaN, as in PyTorch. */
nb_tensor *nb_attention(nb_tensor *q, nb_tensor *k, nb_tensor *v, nb_tensor *mask, int causal);

/** Multi-head attention with q, k, v and output projections ("name.q_proj", "name.k_proj",
 * "name.v_proj", "name.out_proj", each a Linear [embed, embed]); heads must divide embed. Default
 * init: Xavier uniform weights and zero biases, as torch.nn.MultiheadAttention. */
typedef struct nb_mha {
    int64_t embed;       /**< E, the model width */
    int64_t heads;       /**< heads; each has E / heads features */
    nb_linear q_proj;    /**< query projection */
    nb_linear k_proj;    /**< key projection */
    nb_linear v_proj;    /**< value projection */
    nb_linear out_proj;  /**< output projection */
} nb_mha;
/** Register multi-head attention of width embed with heads heads in p under name. */
nb_status nb_mha_init(nb_mha *m, nb_params *p, const char *name, int64_t embed, int64_t heads,
                      const nb_layer_opts *opts, nb_rng *rng);
/** q [B, Tq, E], k and v [B, Tk, E] (batch first) -> [B, Tq, E]. key_padding: NULL or [B, Tk] of
 * 1 = real / 0 = padding, in the inputs' dtype. */
nb_tensor *nb_mha_forward(const nb_mha *m, nb_tensor *q, nb_tensor *k, nb_tensor *v, nb_tensor *key_padding,
                  int causal);

/* ---------------------------------------------------------------------------------------------- */
/* Losses and regularisation                                                                       */
/* ---------------------------------------------------------------------------------------------- */
/** @}
 * @defgroup losses Losses and regularisation
 * Regression and classification losses, as torch.nn.functional's, and an L2 penalty.
 * @{ */

/** How a loss reduces its elementwise values: their mean, their sum, or none (the elementwise
 * tensor); NB_REDUCE_BATCHMEAN (nb_kl_div_loss only; others refuse it) is the sum / dim 0's extent. */
typedef enum nb_reduction {
    NB_REDUCE_MEAN = 0,  /**< the mean (the default) */
    NB_REDUCE_SUM,       /**< the sum */
    NB_REDUCE_NONE,      /**< the elementwise tensor */
    NB_REDUCE_BATCHMEAN, /**< the sum / dim 0's extent (nb_kl_div_loss only) */
    NB_REDUCTION_COUNT   /**< the number of reductions (not one) */
} nb_reduction;

/** (pred - target)^2, same shapes. */
nb_tensor *nb_mse_loss(nb_tensor *pred, nb_tensor *target, nb_reduction reduction);
/** |pred - target|, same shapes (gradient 0 where they are equal, as torch). */
nb_tensor *nb_l1_loss(nb_tensor *pred, nb_tensor *target, nb_reduction reduction);
/** torch's smooth_l1_loss: with d = pred - target, d^2 / (2 beta) where |d| < beta, else
 * |d| - beta / 2; beta >= 0 (0: L1). Same shapes. */
nb_tensor *nb_smooth_l1_loss(nb_tensor *pred, nb_tensor *target, double beta, nb_reduction reduction);
/** torch's huber_loss: d^2 / 2 where |d| < delta, else delta (|d| - delta / 2); delta > 0. */
nb_tensor *nb_huber_loss(nb_tensor *pred, nb_tensor *target, double delta, nb_reduction reduction);
/** torch's kl_div: input holds log-probabilities; target probabilities t (elementwise t log t - t
 * input, 0 where t = 0) or, with log_target, log-probabilities (e^t (t - input)). Same shapes.
 * NB_REDUCE_BATCHMEAN divides the sum by dim 0's extent (the KL divergence per sample); MEAN
 * divides by the element count, as torch. The gradient with respect to a zero target is -input
 * (torch's is NaN). */
nb_tensor *nb_kl_div_loss(nb_tensor *input, nb_tensor *target, nb_reduction reduction, int log_target);
/** Binary cross-entropy from logits x and targets t in [0, 1], same shapes:
 * max(x, 0) - x t + log(1 + exp(-|x|)), finite for any x. */
nb_tensor *nb_bce_with_logits(nb_tensor *logits, nb_tensor *target, nb_reduction reduction);

/** Options of nb_bce_with_logits_ex; NULL or a zeroed struct: mean, no weights. The tensors are
 * borrowed, in the logits' dtype, and broadcast to the logits' shape ([C] for [N, C]); they are
 * differentiable like any input (torch's are not). */
typedef struct nb_bce_opts {
    nb_reduction reduction; /**< default: mean */
    nb_tensor *pos_weight; /**< weight of the positive term: p t softplus(-x) + (1 - t) softplus(x) */
    nb_tensor *weight;     /**< multiplies each element's loss before the reduction */
} nb_bce_opts;
/** torch's binary_cross_entropy_with_logits with weight and pos_weight, as stable as the above. */
nb_tensor *nb_bce_with_logits_ex(nb_tensor *logits, nb_tensor *target, const nb_bce_opts *opts);

/** Options of nb_cross_entropy and nb_nll_loss; NULL or a zeroed struct: the defaults. */
typedef struct nb_ce_opts {
    nb_reduction reduction;  /**< default: mean */
    int64_t ignore_index;    /**< labels equal to it add nothing (only when use_ignore_index) */
    int use_ignore_index;    /**< 1: ignore_index applies */
    double label_smoothing;  /**< in [0, 1]: the target is (1 - s) one-hot + s / C uniform */
    nb_tensor *weight;       /**< NULL or class weights [C] in the scores' dtype (borrowed; differentiable) */
} nb_ce_opts;

/** Cross-entropy from logits [N, C] (or [N, C, d1, ...], classes in dim 1 as torch; or one sample
 * [C]) and either i64 labels [N] ([N, d1, ...]; [] for [C]) in [0, C) (or the ignore index), or
 * probability targets of the logits' shape and dtype (soft labels; ignore_index refused). opts NULL:
 * mean, no ignore index, no smoothing, no weights. With labels, element i's loss is
 * -(1 - s) w[y_i] logp_i[y_i] - (s / C) sum_c w[c] logp_i[c] (w = 1 without weights, 0 for ignored
 * labels), and the mean divides the sum by sum_i w[y_i] over the labels not ignored (torch's weighted
 * mean, also with smoothing: torch 1.13's formula). With probabilities p, the loss is
 * -sum_c w[c] ((1 - s) p[c] + s / C) logp[c] and the mean divides by the element count N d1 ....
 * NB_REDUCE_NONE gives the labels' shape. */
nb_tensor *nb_cross_entropy(nb_tensor *logits, nb_tensor *labels, const nb_ce_opts *opts);
/** Negative log-likelihood of log-probabilities [N, C] ([N, C, d1, ...], [C]) at i64 labels, with
 * cross-entropy's weights, ignore index and reductions. Unlike torch's nll_loss it honours
 * opts->label_smoothing (over the given log-probabilities), so that cross-entropy is exactly
 * nb_nll_loss(nb_log_softmax(logits, 1), ...). */
nb_tensor *nb_nll_loss(nb_tensor *log_probs, nb_tensor *labels, const nb_ce_opts *opts);

/** coeff * sum of squares of every trainable parameter of p with at least 2 dims (weights, not
 * biases), as one scalar of dtype: weight decay as a loss term. */
nb_tensor *nb_l2_penalty(const nb_params *p, double coeff, nb_dtype dtype);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* NABLA_NN_H */
