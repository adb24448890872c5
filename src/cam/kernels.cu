// CAM kernels for the GPU path (src/cam/cuda.rs), compiled by NVRTC on first use.
// Each one is the twin of CPU code in src/cam and src/preprocess.rs and follows its arithmetic
// (f64 accumulation where the CPU accumulates in f64, the same resize coordinates), so the
// maps agree to float rounding. Images are batched: b-th image of n pixels at offset b * n.

#define BLOCK 256
#define INF __longlong_as_double(0x7ff0000000000000LL)

// Block-wide sum of a double (all threads get the result). blockDim.x == BLOCK.
__device__ double block_sum(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
        __syncthreads();
    }
    double r = scratch[0];
    __syncthreads();
    return r;
}

__device__ double block_max(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] = fmax(scratch[threadIdx.x], scratch[threadIdx.x + s]);
        __syncthreads();
    }
    double r = scratch[0];
    __syncthreads();
    return r;
}

// LayerCAM (cam::layercam): l = ReLU(sum_k ReLU(g_k) a_k) per pixel; a, g: [B, K, hw].
extern "C" __global__ void layercam(const float* a, const float* g, float* l, int batch, int k, int hw) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)batch * hw) return;
    long b = i / hw, p = i % hw;
    const float* ab = a + b * k * hw + p;
    const float* gb = g + b * k * hw + p;
    double s = 0.0;
    for (int c = 0; c < k; c++) s += (double)fmaxf(gb[(long)c * hw], 0.0f) * (double)ab[(long)c * hw];
    l[i] = (float)fmax(s, 0.0);
}

// Centres each channel (cam::pc1): x = a - mean(a) per (b, k) row; one block per row.
extern "C" __global__ void center(const float* a, float* x, int hw) {
    __shared__ double scratch[BLOCK];
    const float* row = a + (long)blockIdx.x * hw;
    float* out = x + (long)blockIdx.x * hw;
    double s = 0.0;
    for (int p = threadIdx.x; p < hw; p += BLOCK) s += row[p];
    float mean = (float)(block_sum(s, scratch) / hw);
    for (int p = threadIdx.x; p < hw; p += BLOCK) out[p] = row[p] - mean;
}

// Covariance up to 1/n: c[b] = x[b] x[b]^T, x[b]: [K, hw]; 16x16 tiles, grid (K/16, K/16, B).
#define TILE 16
extern "C" __global__ void covariance(const float* x, float* c, int k, int hw) {
    __shared__ float xi[TILE][TILE + 1];
    __shared__ float xj[TILE][TILE + 1];
    int b = blockIdx.z;
    int i = blockIdx.y * TILE + threadIdx.y;
    int j = blockIdx.x * TILE + threadIdx.x;
    const float* xb = x + (long)b * k * hw;
    float acc = 0.0f;
    for (int p0 = 0; p0 < hw; p0 += TILE) {
        int ri = blockIdx.y * TILE + threadIdx.y, rj = blockIdx.x * TILE + threadIdx.y, p = p0 + threadIdx.x;
        xi[threadIdx.y][threadIdx.x] = (ri < k && p < hw) ? xb[(long)ri * hw + p] : 0.0f;
        xj[threadIdx.y][threadIdx.x] = (rj < k && p < hw) ? xb[(long)rj * hw + p] : 0.0f;
        __syncthreads();
        for (int t = 0; t < TILE; t++) acc += xi[threadIdx.y][t] * xj[threadIdx.x][t];
        __syncthreads();
    }
    if (i < k && j < k) c[(long)b * k * k + (long)i * k + j] = acc;
}

// Projection on the principal direction: p[b] = v[b]^T x[b] (f64, as the CPU).
extern "C" __global__ void project(const float* x, const double* v, double* p, int batch, int k, int hw) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)batch * hw) return;
    long b = i / hw, q = i % hw;
    const float* xb = x + b * k * hw + q;
    double s = 0.0;
    for (int c = 0; c < k; c++) s += v[b * k + c] * (double)xb[(long)c * hw];
    p[i] = s;
}

// Per image (one block each): stats[b] = {max l, sign, lo, hi} for the LayerCAM normalisation
// and PC1's orientation and min-max (cam::normalize_max, cam::pc1). p may be null (LayerCAM).
extern "C" __global__ void image_stats(const float* l, const double* p, double* stats, int hw) {
    __shared__ double scratch[BLOCK];
    long off = (long)blockIdx.x * hw;
    double mx = -INF, s = 0.0;
    for (int q = threadIdx.x; q < hw; q += BLOCK) {
        mx = fmax(mx, (double)l[off + q]);
        s += (double)l[off + q];
    }
    mx = block_max(mx, scratch);
    double mean = block_sum(s, scratch) / hw;
    double sign = 1.0, lo = 0.0, hi = 0.0;
    if (p != 0) {
        double dot = 0.0;
        for (int q = threadIdx.x; q < hw; q += BLOCK) dot += p[off + q] * ((double)l[off + q] - mean);
        dot = block_sum(dot, scratch);
        sign = dot < 0.0 ? -1.0 : 1.0;
        double pmin = INF, pmax = -INF;
        for (int q = threadIdx.x; q < hw; q += BLOCK) {
            pmin = fmin(pmin, sign * p[off + q]);
            pmax = fmax(pmax, sign * p[off + q]);
        }
        hi = block_max(pmax, scratch);
        lo = -block_max(-pmin, scratch);
    }
    if (threadIdx.x == 0) {
        stats[blockIdx.x * 4 + 0] = mx;
        stats[blockIdx.x * 4 + 1] = sign;
        stats[blockIdx.x * 4 + 2] = lo;
        stats[blockIdx.x * 4 + 3] = hi;
    }
}

// c = l / max l (0 when max <= 0); pn = (sign p - lo) / (hi - lo) (0 when the range is empty).
extern "C" __global__ void normalize(const float* l, const double* p, const double* stats, float* c, float* pn,
                                     int batch, int hw) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)batch * hw) return;
    const double* st = stats + (i / hw) * 4;
    float mx = (float)st[0];
    c[i] = (mx > 0.0f && isfinite(mx)) ? l[i] / mx : 0.0f;
    if (p != 0) {
        double range = st[3] - st[2];
        pn[i] = (range > 0.0 && isfinite(range)) ? (float)((st[1] * p[i] - st[2]) / range) : 0.0f;
    }
}

// Source index and weight along one axis (preprocess::AxisMap): half-pixel centres, clamped.
__device__ void axis_map(int d, int src, int dst, int* i0, int* i1, float* frac) {
    double s = fmax(((double)d + 0.5) * ((double)src / (double)dst) - 0.5, 0.0);
    int lo = min((int)floor(s), src - 1);
    *i0 = lo;
    *i1 = min(lo + 1, src - 1);
    *frac = (float)(s - (double)lo);
}

// Bilinear resize of a batch (preprocess::resize_bilinear_into): [B, sh, sw] -> [B, dh, dw].
extern "C" __global__ void resize(const float* src, float* dst, int batch, int sh, int sw, int dh, int dw) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)batch * dh * dw) return;
    long b = i / ((long)dh * dw);
    int y = (int)((i / dw) % dh), x = (int)(i % dw);
    const float* s = src + b * sh * sw;
    if (sh == dh && sw == dw) {
        dst[i] = s[(long)y * sw + x];
        return;
    }
    int r0, r1, c0, c1;
    float fy, fx;
    axis_map(y, sh, dh, &r0, &r1, &fy);
    axis_map(x, sw, dw, &c0, &c1, &fx);
    float top = s[(long)r0 * sw + c0] + (s[(long)r0 * sw + c1] - s[(long)r0 * sw + c0]) * fx;
    float bottom = s[(long)r1 * sw + c0] + (s[(long)r1 * sw + c1] - s[(long)r1 * sw + c0]) * fx;
    dst[i] = top + (bottom - top) * fy;
}

// SF-CAM combination (cam::sfcam): cam = (c + p c) / 2, in place in c.
extern "C" __global__ void combine(float* c, const float* p, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = (c[i] + p[i] * c[i]) / 2.0f;
}

// Layer-1 amplification (cam::sfcam): cam = tanh(lambda cam / max cam), 0 when max <= 0; one
// block per image.
extern "C" __global__ void amplify(float* cam, int n, float lambda) {
    __shared__ double scratch[BLOCK];
    float* img = cam + (long)blockIdx.x * n;
    double mx = 0.0;
    for (int q = threadIdx.x; q < n; q += BLOCK) mx = fmax(mx, (double)img[q]);
    float m = (float)block_max(mx, scratch);
    for (int q = threadIdx.x; q < n; q += BLOCK) img[q] = m > 0.0f ? tanhf(lambda * img[q] / m) : 0.0f;
}
