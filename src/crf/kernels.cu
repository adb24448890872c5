// Mean-field iterations of the dense CRF on the GPU: the twins of `refine`'s loop in mod.rs and
// of `Lattice::compute` in lattice.rs. The lattices are built on the CPU (hash tables); these
// kernels only gather, so every sum runs in the CPU's order and, without fused multiply-adds,
// rounds as it does. One thread per pixel or lattice vertex, two labels per pixel; a batch of
// slices is one flat set of pixels and vertices (vertex 0 is the shared always-zero dummy).

#define LABELS 2

__device__ long long thread_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

// Softmax of two logits into q (pydensecrf's expAndNormalize).
__device__ void softmax2(float e0, float e1, float* q) {
    float mx = fmaxf(e0, e1);
    float x0 = expf(e0 - mx);
    float x1 = expf(e1 - mx);
    float sum = 0.0f;
    sum += x0;
    sum += x1;
    q[0] = x0 / sum;
    q[1] = x1 / sum;
}

// Unary of the input labels (`-ln(confidence)` for the label, `-ln(1 - confidence)` for the
// other), stored negated, and the first Q = softmax(-U).
extern "C" __global__ void crf_init(const unsigned char* labels, float p_energy, float n_energy,
                                    float* neg_unary, float* q, long long n) {
    long long i = thread_index();
    if (i >= n) return;
    unsigned char l = labels[i];
    float e0 = -(l == 0 ? p_energy : n_energy);
    float e1 = -(l == 1 ? p_energy : n_energy);
    neg_unary[i * LABELS] = e0;
    neg_unary[i * LABELS + 1] = e1;
    softmax2(e0, e1, q + i * LABELS);
}

// scaled = D^-1/2 q, per pixel.
extern "C" __global__ void crf_scale(const float* q, const float* norm, float* scaled, long long n) {
    long long i = thread_index();
    if (i >= n) return;
    float s = norm[i];
    scaled[i * LABELS] = q[i * LABELS] * s;
    scaled[i * LABELS + 1] = q[i * LABELS + 1] * s;
}

// Splat as a gather: vertex v sums weight * scaled over the pixels that touch it, listed in
// ascending pixel order (the CPU's scatter order) in [start[v], start[v + 1]).
extern "C" __global__ void crf_splat(const unsigned* start, const unsigned* pixel, const float* weight,
                                     const float* scaled, float* values, long long m) {
    long long v = thread_index();
    if (v >= m) return;
    float t0 = 0.0f, t1 = 0.0f;
    for (unsigned e = start[v]; e < start[v + 1]; e++) {
        long long p = pixel[e];
        float w = weight[e];
        t0 += w * scaled[p * LABELS];
        t1 += w * scaled[p * LABELS + 1];
    }
    values[(v + 1) * LABELS] = t0;
    values[(v + 1) * LABELS + 1] = t1;
}

// One blur pass along lattice axis j with [1/2, 1, 1/2]; neighbours are 1-based (0 = none).
extern "C" __global__ void crf_blur(const unsigned* neighbors, int j, const float* values, float* out,
                                    long long m) {
    long long i = thread_index();
    if (i >= m) return;
    long long at = ((long long)j * m + i) * 2;
    long long n1 = neighbors[at], n2 = neighbors[at + 1];
    long long o = (i + 1) * LABELS;
    for (int k = 0; k < LABELS; k++) {
        out[o + k] = values[o + k] + 0.5f * (values[n1 * LABELS + k] + values[n2 * LABELS + k]);
    }
}

// Slice back to the pixels and apply D^-1/2: msg = norm * sum_j (alpha * bary_j) * values[v_j].
extern "C" __global__ void crf_slice(const unsigned* offset, const float* barycentric, int d1, float alpha,
                                     const float* values, const float* norm, float* msg, long long n) {
    long long i = thread_index();
    if (i >= n) return;
    float t0 = 0.0f, t1 = 0.0f;
    for (int j = 0; j < d1; j++) {
        long long o = offset[i * d1 + j];
        float w = barycentric[i * d1 + j] * alpha;
        t0 += w * values[o * LABELS];
        t1 += w * values[o * LABELS + 1];
    }
    float s = norm[i];
    msg[i * LABELS] = t0 * s;
    msg[i * LABELS + 1] = t1 * s;
}

// Q = softmax(-U + w_a K_a(Q) + w_b K_b(Q)), written as pydensecrf's `tmp1 -= (-w * K(Q))`.
extern "C" __global__ void crf_update(const float* neg_unary, const float* msg_a, float w_a, const float* msg_b,
                                      float w_b, float* q, long long n) {
    long long i = thread_index();
    if (i >= n) return;
    float e[LABELS];
    for (int k = 0; k < LABELS; k++) {
        long long at = i * LABELS + k;
        e[k] = neg_unary[at];
        e[k] -= -w_a * msg_a[at];
        e[k] -= -w_b * msg_b[at];
    }
    softmax2(e[0], e[1], q + i * LABELS);
}

// The map: hemorrhage where its probability beats background (ties go to background).
extern "C" __global__ void crf_argmax(const float* q, unsigned char* out, long long n) {
    long long i = thread_index();
    if (i >= n) return;
    out[i] = q[i * LABELS + 1] > q[i * LABELS] ? 1 : 0;
}
