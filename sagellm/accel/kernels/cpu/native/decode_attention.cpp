// sagellm CPU kernels with a C ABI, loaded through ctypes (see native/__init__.py).
//
// Decode attention straight over LMDeploy's paged KV cache: one query token per sequence, no
// gathered copy of the history. Head sizes 64, 128 and 256 take the vectorized path (see
// decode_heads_fixed); others take decode_one, which reads a cache slot's keys (then values) of all
// KV heads as one contiguous row for every query head, walking a sequence's positions in order.
// Work items go to the OpenMP threads through an atomic counter, so very different lengths still
// balance. Only `#pragma omp parallel` is used: the library then binds to the OpenMP runtime torch
// already loaded (its libgomp predates some of the entry points newer compilers emit for other
// constructs).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

namespace {

inline float to_float(float x) { return x; }
inline float to_float(uint16_t bf16_bits) {  // bfloat16: the upper half of a float32
    uint32_t bits = static_cast<uint32_t>(bf16_bits) << 16;
    float out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
}
inline float to_float(_Float16 x) { return static_cast<float>(x); }

// exp for softmax weights (arguments <= 0), written so the compiler vectorizes the loop around it:
// x = n * ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 polynomial (relative error ~2e-7),
// 2^n through the exponent bits. Below -87.3 the result flushes to 0.
inline float exp_nonpositive(float x) {
    x = std::max(x, -87.3f);
    const float n = std::nearbyint(x * 1.44269504088896341f);
    const float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

struct DecodeArgs {
    const float* query;        // [batch, heads, dim]
    const void* k_cache;       // [blocks, block_size, kv_heads, dim] (strides below, in elements)
    const void* v_cache;       // [blocks, block_size, kv_heads, v_dim]
    const int32_t* block_table;  // [batch, table_stride]
    const int32_t* kv_seqlens;   // [batch]
    const float* sinks;        // [heads] or null
    float* out;                // [batch, heads, v_dim]
    int64_t batch, heads, kv_heads, dim, v_dim, block_size, table_stride;
    int64_t k_block_stride, k_slot_stride, k_head_stride;
    int64_t v_block_stride, v_slot_stride, v_head_stride;
    float scale, softcap;
    int64_t window;
    int threads;
};

// The cache row of position pos of a sequence whose block ids are table[].
template <typename T>
inline const T* slot_row(const T* cache, const int32_t* table, int64_t pos, int64_t block_size, int64_t block_stride,
                         int64_t slot_stride) {
    return cache + table[pos / block_size] * block_stride + (pos % block_size) * slot_stride;
}

// One head's scores -> softmax weights in place (optional tanh soft-capping, optional attention
// sink: a logit that joins the normalization but weighs no value).
inline void softmax_scores(float* s, int64_t n, float softcap, const float* sink_logit) {
    if (softcap > 0.0f) {
        for (int64_t t = 0; t < n; ++t) s[t] = softcap * std::tanh(s[t] / softcap);
    }
    float peak = s[0];
    for (int64_t t = 1; t < n; ++t) peak = std::max(peak, s[t]);
    const float sink = sink_logit ? *sink_logit : -INFINITY;
    peak = std::max(peak, sink);
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < n; ++t) {
        s[t] = exp_nonpositive(s[t] - peak);
        total += s[t];
    }
    if (sink_logit) total += exp_nonpositive(sink - peak);
    const float inv = 1.0f / total;
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) s[t] *= inv;
}

template <typename T>
void decode_one(const DecodeArgs& a, int64_t b, std::vector<float>& scratch) {
    const int64_t group = a.heads / a.kv_heads;
    const int64_t length = a.kv_seqlens[b];
    const int64_t start = (a.window > 0) ? std::max<int64_t>(0, length - a.window) : 0;
    const int64_t n = length - start;
    float* out = a.out + b * a.heads * a.v_dim;
    if (n <= 0) {
        std::fill(out, out + a.heads * a.v_dim, 0.0f);
        return;
    }
    scratch.resize(static_cast<size_t>(a.heads * n));
    float* scores = scratch.data();  // [heads, n]
    const float* query = a.query + b * a.heads * a.dim;
    const int32_t* table = a.block_table + b * a.table_stride;
    const T* k_cache = static_cast<const T*>(a.k_cache);
    const T* v_cache = static_cast<const T*>(a.v_cache);

    for (int64_t t = 0; t < n; ++t) {
        const T* row = slot_row(k_cache, table, start + t, a.block_size, a.k_block_stride, a.k_slot_stride);
        for (int64_t h = 0; h < a.kv_heads; ++h) {
            const T* key = row + h * a.k_head_stride;
            for (int64_t g = 0; g < group; ++g) {
                const int64_t head = h * group + g;
                const float* q = query + head * a.dim;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int64_t d = 0; d < a.dim; ++d) dot += q[d] * to_float(key[d]);
                scores[head * n + t] = dot * a.scale;
            }
        }
    }
    for (int64_t head = 0; head < a.heads; ++head)
        softmax_scores(scores + head * n, n, a.softcap, a.sinks ? a.sinks + head : nullptr);
    std::fill(out, out + a.heads * a.v_dim, 0.0f);
    for (int64_t t = 0; t < n; ++t) {
        const T* row = slot_row(v_cache, table, start + t, a.block_size, a.v_block_stride, a.v_slot_stride);
        for (int64_t h = 0; h < a.kv_heads; ++h) {
            const T* value = row + h * a.v_head_stride;
            for (int64_t g = 0; g < group; ++g) {
                const int64_t head = h * group + g;
                const float p = scores[head * n + t];
                float* o = out + head * a.v_dim;
#pragma omp simd
                for (int64_t d = 0; d < a.v_dim; ++d) o[d] += p * to_float(value[d]);
            }
        }
    }
}

// The same attention for a head size known at compile time (64, 128, 256), on vectors of kLanes
// floats (GCC/Clang vector extensions: AVX-512, AVX2 or NEON code, whichever -march gives): a key
// row's dot product is summed in vector lanes and the lanes pairwise once, and the history is
// walked slot by slot with every KV head of the item inside, so each pass streams a block's slots
// in memory order and reads each cache row once. An item is a sequence, or part of its KV heads
// when there are fewer sequences than threads (a single long history still spreads).
// Measured on the 2-core EPYC (float32, head size 64, 4 query / 2 KV heads, caches of 6 layers
// rotating so they come from memory, per call): 32 sequences of ~275 positions 1,090 -> 780 us,
// one of 6,000 positions 730 -> 560 us on one thread, 680 -> 460 us on two. With the cache hot (one
// layer) the gain is larger (32 x ~275: 674 -> 333 us): the per-position loop above spent most of
// its time adding each dot product's lanes one by one (the order strict float semantics ask of a
// plain loop). Software prefetch of the rows ahead measured no gain.
// Slot by slot rather than head by head within a block (each head's rows are 1 / kv_heads of every
// slot): measured on the Intel host, one thread, 4 layers' caches rotating, 435 -> 374 us for 32
// sequences of 225 positions, 358 -> 317 us for one of 6,000, 469 -> 409 us for 8 of 1,000; the
// same on two threads; bit for bit the same output. Software prefetch and 16 dot products summed
// side by side measured no further gain there either: the pass is bound by memory bandwidth.
constexpr int kLanes = 16;
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

template <typename T>
inline Lanes load_lanes(const T* p) {
    Lanes v;
    for (int l = 0; l < kLanes; ++l) v[l] = to_float(p[l]);
    return v;
}
template <>
inline Lanes load_lanes<float>(const float* p) {
    Lanes v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

// Sum of the lanes in a fixed pairwise order (the same on every instruction set): halves added
// as vectors, down to one lane.
typedef float Lanes8 __attribute__((vector_size(8 * sizeof(float))));
typedef float Lanes4 __attribute__((vector_size(4 * sizeof(float))));
inline float sum_lanes(Lanes v) {
    Lanes8 lo8, hi8;
    std::memcpy(&lo8, &v, sizeof(lo8));
    std::memcpy(&hi8, reinterpret_cast<const char*>(&v) + sizeof(lo8), sizeof(hi8));
    const Lanes8 s8 = lo8 + hi8;
    Lanes4 lo4, hi4;
    std::memcpy(&lo4, &s8, sizeof(lo4));
    std::memcpy(&hi4, reinterpret_cast<const char*>(&s8) + sizeof(lo4), sizeof(hi4));
    const Lanes4 s4 = lo4 + hi4;
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// Calls visit(block id, first slot, count, t) for each run of a history's positions [start, length)
// that lies in one cache block; t counts the positions visited before the run.
template <typename Visit>
inline void for_each_block_run(const int32_t* table, int64_t start, int64_t length, int64_t block_size, Visit visit) {
    for (int64_t pos = start, t = 0; pos < length;) {
        const int64_t in_block = pos % block_size;
        const int64_t count = std::min<int64_t>(block_size - in_block, length - pos);
        visit(table[pos / block_size], in_block, count, t);
        pos += count;
        t += count;
    }
}

template <typename T, int DIM>
void decode_heads_fixed(const DecodeArgs& a, int64_t b, int64_t h_begin, int64_t h_end, std::vector<float>& scratch) {
    constexpr int kChunks = DIM / kLanes;
    const int64_t group = a.heads / a.kv_heads;
    const int64_t length = a.kv_seqlens[b];
    const int64_t start = (a.window > 0) ? std::max<int64_t>(0, length - a.window) : 0;
    const int64_t n = length - start;
    const int64_t q_begin = h_begin * group, q_heads = (h_end - h_begin) * group;
    float* out = a.out + (b * a.heads + q_begin) * a.v_dim;
    if (n <= 0) {
        std::fill(out, out + q_heads * a.v_dim, 0.0f);
        return;
    }
    scratch.resize(static_cast<size_t>(q_heads * n));
    float* scores = scratch.data();  // [q_heads, n]
    const float* query = a.query + (b * a.heads + q_begin) * a.dim;
    const int32_t* table = a.block_table + b * a.table_stride;
    const T* k_cache = static_cast<const T*>(a.k_cache);
    const T* v_cache = static_cast<const T*>(a.v_cache);

    // visit(KV head - h_begin, its row of the slot as lanes, position - start) for every slot in order
    auto rows = [&](const T* cache, int64_t block_stride, int64_t slot_stride, int64_t head_stride, auto visit) {
        for_each_block_run(table, start, length, a.block_size, [&](int64_t id, int64_t in_block, int64_t count, int64_t t) {
            const T* block = cache + id * block_stride + in_block * slot_stride;
            for (int64_t i = 0; i < count; ++i) {  // slot by slot: each slot's KV heads are one contiguous read
                const T* slot = block + i * slot_stride;
                for (int64_t h = h_begin; h < h_end; ++h) {
                    Lanes row[kChunks];
                    for (int c = 0; c < kChunks; ++c) row[c] = load_lanes(slot + h * head_stride + c * kLanes);
                    visit(h - h_begin, row, t + i);
                }
            }
        });
    };
    rows(k_cache, a.k_block_stride, a.k_slot_stride, a.k_head_stride, [&](int64_t kv, const Lanes* key, int64_t pos) {
        for (int64_t g = 0; g < group; ++g) {
            const int64_t qh = kv * group + g;
            const float* q = query + qh * DIM;
            Lanes acc = load_lanes(q) * key[0];
            for (int c = 1; c < kChunks; ++c) acc += load_lanes(q + c * kLanes) * key[c];
            scores[qh * n + pos] = sum_lanes(acc) * a.scale;
        }
    });
    for (int64_t qh = 0; qh < q_heads; ++qh)
        softmax_scores(scores + qh * n, n, a.softcap, a.sinks ? a.sinks + q_begin + qh : nullptr);
    std::fill(out, out + q_heads * DIM, 0.0f);  // [q_heads, DIM]
    rows(v_cache, a.v_block_stride, a.v_slot_stride, a.v_head_stride, [&](int64_t kv, const Lanes* value, int64_t pos) {
        for (int64_t g = 0; g < group; ++g) {
            const int64_t qh = kv * group + g;
            const float w = scores[qh * n + pos];
            float* o = out + qh * DIM;
            for (int c = 0; c < kChunks; ++c) {
                Lanes acc = load_lanes(o + c * kLanes);
                acc += w * value[c];
                std::memcpy(o + c * kLanes, &acc, sizeof(acc));
            }
        }
    });
}

template <typename T, int DIM>
void decode_all_fixed(const DecodeArgs& a) {
    std::atomic<int64_t> next{0};
    // a sequence's KV heads are split into as many parts as it takes to give every thread work
    const int64_t parts = std::min<int64_t>(a.kv_heads, std::max<int64_t>(1, (a.threads + a.batch - 1) / a.batch));
    const int64_t items = a.batch * parts;
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.threads, items)));
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> scratch;
        for (int64_t item = next.fetch_add(1); item < items; item = next.fetch_add(1)) {
            const int64_t b = item / parts, part = item % parts;
            decode_heads_fixed<T, DIM>(a, b, part * a.kv_heads / parts, (part + 1) * a.kv_heads / parts, scratch);
        }
    }
}

template <typename T>
void decode_all(const DecodeArgs& a) {
    if (a.dim == a.v_dim) {
        switch (a.dim) {
            case 64: return decode_all_fixed<T, 64>(a);
            case 128: return decode_all_fixed<T, 128>(a);
            case 256: return decode_all_fixed<T, 256>(a);
            default: break;
        }
    }
    std::atomic<int64_t> next{0};
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.threads, a.batch)));
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> scratch;
        for (int64_t b = next.fetch_add(1); b < a.batch; b = next.fetch_add(1)) decode_one<T>(a, b, scratch);
    }
}

}  // namespace

extern "C" {

// Version of this C ABI; the Python side refuses a library built from another one.
int sagellm_cpu_abi_version() { return 2; }

// cache_dtype: 0 float32, 1 bfloat16, 2 float16. Returns 0, or -1 for an unknown dtype.
int sagellm_paged_decode_attention(
    const float* query, const void* k_cache, const void* v_cache, const int32_t* block_table,
    const int32_t* kv_seqlens, const float* sinks, float* out, int64_t batch, int64_t heads,
    int64_t kv_heads, int64_t dim, int64_t v_dim, int64_t block_size, int64_t table_stride,
    int64_t k_block_stride, int64_t k_slot_stride, int64_t k_head_stride, int64_t v_block_stride,
    int64_t v_slot_stride, int64_t v_head_stride, float scale, float softcap, int64_t window,
    int cache_dtype, int threads) {
    DecodeArgs a{query, k_cache, v_cache, block_table, kv_seqlens, sinks, out,
                 batch, heads, kv_heads, dim, v_dim, block_size, table_stride,
                 k_block_stride, k_slot_stride, k_head_stride,
                 v_block_stride, v_slot_stride, v_head_stride,
                 scale, softcap, window, threads};
    switch (cache_dtype) {
        case 0: decode_all<float>(a); return 0;
        case 1: decode_all<uint16_t>(a); return 0;
        case 2: decode_all<_Float16>(a); return 0;
        default: return -1;
    }
}

}  // extern "C"
