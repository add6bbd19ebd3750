// sagellm CPU kernels with a C ABI: row-wise float32 ops that replace chains of small torch ops.
//
// Each one is a single pass over its rows instead of 5-10 torch ops (each a dispatch, an allocation
// and a pass over memory). Built with -ffp-contract=off, so a product followed by a sum rounds
// twice, as the separate torch ops do.
#include <cmath>
#include <cstdint>
#include <cstring>

extern "C" {

// out = weight * (h * rsqrt(mean(h^2) + eps)) with h = x (+ residual; then residual_out = h), per row.
// Strides are in elements between rows; the hidden dim is contiguous everywhere.
void sagellm_rms_norm(const float* x, int64_t x_stride, const float* residual, int64_t residual_stride,
                      const float* weight, float* out, int64_t out_stride, float* residual_out,
                      int64_t residual_out_stride, int64_t rows, int64_t hidden, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * x_stride;
        float* o = out + r * out_stride;
        const float* h = xr;
        if (residual != nullptr) {
            const float* res = residual + r * residual_stride;
            float* sum = residual_out + r * residual_out_stride;
#pragma omp simd
            for (int64_t i = 0; i < hidden; ++i) sum[i] = xr[i] + res[i];
            h = sum;
        }
        float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
        for (int64_t i = 0; i < hidden; ++i) squares += h[i] * h[i];
        const float inv = 1.0f / std::sqrt(squares / static_cast<float>(hidden) + eps);
#pragma omp simd
        for (int64_t i = 0; i < hidden; ++i) o[i] = weight[i] * (h[i] * inv);
    }
}

// In place, per token t and head h of x ([tokens, heads, dim], strides in elements, dim contiguous):
// x = x * cos[t] + rotate_half(x) * sin[t], rotate_half(x) = (-x[half:], x[:half]);
// cos and sin are [tokens, dim] with row stride cs_stride.
void sagellm_rotary_inplace(float* x, int64_t token_stride, int64_t head_stride, int64_t tokens, int64_t heads,
                            int64_t dim, const float* cos, const float* sin, int64_t cs_stride) {
    const int64_t half = dim / 2;
    for (int64_t t = 0; t < tokens; ++t) {
        const float* c = cos + t * cs_stride;
        const float* s = sin + t * cs_stride;
        for (int64_t h = 0; h < heads; ++h) {
            float* v = x + t * token_stride + h * head_stride;
#pragma omp simd
            for (int64_t i = 0; i < half; ++i) {
                const float lo = v[i], hi = v[i + half];
                v[i] = lo * c[i] + (-hi) * s[i];
                v[i + half] = hi * c[i + half] + lo * s[i + half];
            }
        }
    }
}

// Copy row t of src (row_bytes contiguous bytes, rows src_stride bytes apart) to cache slot slots[t]:
// block slots[t] / block_size, offset slots[t] % block_size (strides in bytes). Any dtype: bytes move.
void sagellm_write_rows(const char* src, int64_t src_stride, char* cache, int64_t block_stride, int64_t slot_stride,
                        const int64_t* slots, int64_t rows, int64_t block_size, int64_t row_bytes) {
    for (int64_t t = 0; t < rows; ++t) {
        const int64_t slot = slots[t];
        std::memcpy(cache + (slot / block_size) * block_stride + (slot % block_size) * slot_stride,
                    src + t * src_stride, static_cast<size_t>(row_bytes));
    }
}

}  // extern "C"
