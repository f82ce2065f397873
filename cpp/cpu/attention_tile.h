// The paged-attention kernel for one work item, written once over a vector type V (vec_*.h) and
// instantiated per ISA in attention_<isa>.cpp.
//
// Online-softmax ("flash") attention over chunks of kChunk keys. Per chunk, like a small GEMM with a
// packed B panel:
//
//   keys of the chunk ──gather via block_table──► k [head_dim][kChunk]   (transposed once)
//   s [rows][kChunk] = q [rows][head_dim] · k      (broadcast-FMA, no horizontal sums)
//   scale, softcap, mask, exp, running max/sum ──► p = s, out rows rescaled when the max grows
//   out [rows][head_dim] += p · v [kChunk][head_dim]
//
// The tile's rows are every (query token, head of the kv head's group), so that each key and value
// read from the cache serves all heads that share it (GQA).
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "attention_work.h"
#include "half.h"
#include "vec_math.h"

namespace kvserve::cpu {
namespace {

// Scores from float32 copies of queries and keys: any storage type, any ISA.
template <class V>
struct FloatScores {
  using Unit = float;                         // one element of the packed q and k
  static constexpr int64_t kDimsPerUnit = 1;

  template <class T>
  static void pack_query(Unit* dst, const T* query, int64_t head_dim) {
    for (int64_t d = 0; d < head_dim; d += V::kWidth) V::store(dst + d, V::load(query + d));
  }
  template <class T>
  static void pack_keys(Unit* dst, const T* const keys[kChunk], int64_t head_dim) {
    V::pack_transposed(dst, keys, head_dim);
  }
  static typename V::Reg load_keys(const Unit* k) { return V::load(k); }
  static typename V::Reg fma(typename V::Reg acc, typename V::Reg keys, const Unit* q) {
    return V::fma(V::set1(*q), keys, acc);
  }
};

// Queries and outputs of type T, caches of type C (T, or a narrower float: attend_over below).
template <class V, class T, class C, class Scores>
struct AttentionTile {
  using Reg = typename V::Reg;
  using Unit = typename Scores::Unit;
  static constexpr int kRegs = kChunk / V::kWidth;  // registers per row of scores

  // s[r][:] = q[r] · k for rows [r0, r0 + NR). P partial sums per row keep enough independent FMA
  // chains in flight when NR alone is too few (decode tiles have as few rows as the GQA group).
  template <int NR>
  static void score_rows(float* s, const Unit* q, const Unit* k, int64_t units, int64_t r0) {
    constexpr int P = NR * kRegs >= 8 ? 1 : 8 / (NR * kRegs);
    Reg acc[NR][P][kRegs];
    for (int i = 0; i < NR; ++i)
      for (int p = 0; p < P; ++p)
        for (int v = 0; v < kRegs; ++v) acc[i][p][v] = V::zero();
    for (int64_t u = 0; u < units; u += P) {
      for (int p = 0; p < P; ++p) {
        Reg keys[kRegs];
        for (int v = 0; v < kRegs; ++v) keys[v] = Scores::load_keys(k + (u + p) * kChunk + v * V::kWidth);
        for (int i = 0; i < NR; ++i) {
          const Unit* qi = q + (r0 + i) * units + u + p;
          for (int v = 0; v < kRegs; ++v) acc[i][p][v] = Scores::fma(acc[i][p][v], keys[v], qi);
        }
      }
    }
    for (int i = 0; i < NR; ++i) {
      for (int v = 0; v < kRegs; ++v) {
        Reg total = acc[i][0][v];
        for (int p = 1; p < P; ++p) total = V::add(total, acc[i][p][v]);
        V::store(s + (r0 + i) * kChunk + v * V::kWidth, total);
      }
    }
  }

  static void scores(float* s, const Unit* q, const Unit* k, int64_t units, int64_t rows) {
    int64_t r = 0;
    if constexpr (V::kMaxScoreRows >= 8) {
      for (; r + 8 <= rows; r += 8) score_rows<8>(s, q, k, units, r);
    }
    if constexpr (V::kMaxScoreRows >= 4) {
      for (; r + 4 <= rows; r += 4) score_rows<4>(s, q, k, units, r);
    }
    if constexpr (V::kMaxScoreRows >= 2) {
      for (; r + 2 <= rows; r += 2) score_rows<2>(s, q, k, units, r);
    }
    for (; r < rows; ++r) score_rows<1>(s, q, k, units, r);
  }

  static Reg exp(Reg x) { return vexp<V>(x); }

  static Reg softcapped(Reg x, float softcap) {
    // c * tanh(x / c), with tanh(y) = 1 - 2 / (e^2y + 1): exact limits +-1 when e^2y over/underflows.
    const Reg e = exp(V::mul(x, V::set1(2.f / softcap)));
    const Reg tanh = V::sub(V::set1(1.f), V::div(V::set1(2.f), V::add(e, V::set1(1.f))));
    return V::mul(tanh, V::set1(softcap));
  }

  // Scores of one chunk (keys chunk_begin.. + n) become probabilities under each row's running max;
  // rows whose max grows have their output and sum rescaled first.
  static void softmax(const PagedAttentionParams& p, const AttentionScratch& sc, int64_t rows,
                      int64_t chunk_begin, int n) {
    for (int64_t r = 0; r < rows; ++r) {
      float* row = sc.s + r * kChunk;
      const int64_t begin = sc.key_begin[r] - chunk_begin;
      const int64_t end = sc.key_end[r] - chunk_begin < n ? sc.key_end[r] - chunk_begin : n;
      if (begin >= end) {  // no key of this chunk is visible to the row
        for (int v = 0; v < kRegs; ++v) V::store(row + v * V::kWidth, V::zero());
        continue;
      }
      Reg x[kRegs];
      Reg chunk_max = V::set1(-INFINITY);
      for (int v = 0; v < kRegs; ++v) {
        x[v] = V::mul(V::load(row + v * V::kWidth), V::set1(p.scale));
        if (p.softcap > 0.f) x[v] = softcapped(x[v], p.softcap);
        x[v] = V::keep_lanes(x[v], v * V::kWidth, static_cast<int>(begin), static_cast<int>(end));
        chunk_max = V::max(chunk_max, x[v]);
      }
      const float new_max = V::reduce_max(chunk_max);
      if (new_max > sc.max[r]) {
        if (sc.sum[r] > 0.f) {
          const float alpha = std::exp(sc.max[r] - new_max);
          sc.sum[r] *= alpha;
          float* out = sc.out + r * p.head_dim;
          for (int64_t d = 0; d < p.head_dim; d += V::kWidth) {
            V::store(out + d, V::mul(V::load(out + d), V::set1(alpha)));
          }
        }
        sc.max[r] = new_max;
      }
      const Reg max = V::set1(sc.max[r]);
      Reg sum = V::zero();
      for (int v = 0; v < kRegs; ++v) {
        const Reg e = exp(V::sub(x[v], max));
        V::store(row + v * V::kWidth, e);
        sum = V::add(sum, e);
      }
      sc.sum[r] += V::reduce_add(sum);
    }
  }

  // out[r][d0 .. d0 + NV * width) += sum over keys c < n of prob[r][c] * values[c][...].
  template <int NR, int NV>
  static void accumulate_tile(float* out, const float* prob, const float* const values[kChunk], int n,
                              int64_t head_dim, int64_t r0, int64_t d0) {
    Reg acc[NR][NV];
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < NV; ++j) acc[i][j] = V::load(out + (r0 + i) * head_dim + d0 + j * V::kWidth);
    for (int c = 0; c < n; ++c) {
      Reg value[NV];
      for (int j = 0; j < NV; ++j) value[j] = V::load(values[c] + d0 + j * V::kWidth);
      for (int i = 0; i < NR; ++i) {
        const Reg weight = V::set1(prob[(r0 + i) * kChunk + c]);
        for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(weight, value[j], acc[i][j]);
      }
    }
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < NV; ++j) V::store(out + (r0 + i) * head_dim + d0 + j * V::kWidth, acc[i][j]);
  }

  template <int NR>
  static void accumulate_rows(float* out, const float* prob, const float* const values[kChunk], int n,
                              int64_t head_dim, int64_t r0) {
    const int64_t regs = head_dim / V::kWidth;
    int64_t j = 0;
    for (; j + V::kMaxOutRegs <= regs; j += V::kMaxOutRegs) {
      accumulate_tile<NR, V::kMaxOutRegs>(out, prob, values, n, head_dim, r0, j * V::kWidth);
    }
    for (; j < regs; ++j) accumulate_tile<NR, 1>(out, prob, values, n, head_dim, r0, j * V::kWidth);
  }

  static void accumulate(float* out, const float* prob, const float* const values[kChunk], int n,
                         int64_t head_dim, int64_t rows) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) accumulate_rows<4>(out, prob, values, n, head_dim, r);
    if (r + 2 <= rows) {
      accumulate_rows<2>(out, prob, values, n, head_dim, r);
      r += 2;
    }
    if (r < rows) accumulate_rows<1>(out, prob, values, n, head_dim, r);
  }

  // Cache rows of the chunk of item w that starts at key position `chunk` (null past the item's keys).
  static void gather(const PagedAttentionParams& p, const AttentionWork& w, int64_t chunk, const C* keys[kChunk],
                     const C* values[kChunk]) {
    const C* key_cache = static_cast<const C*>(p.key_cache);
    const C* value_cache = static_cast<const C*>(p.value_cache);
    const int32_t* blocks = p.block_table + w.req * p.block_table_stride;
    const int64_t head_offset = w.kv_head * p.head_dim, slot_stride = p.num_kv_heads * p.head_dim;
    int64_t block = chunk / p.block_size, offset = chunk % p.block_size;
    for (int c = 0; c < kChunk; ++c) {
      if (chunk + c >= w.key_end) {
        keys[c] = values[c] = nullptr;
        continue;
      }
      const int64_t at = blocks[block] * p.cache_stride_block + offset * slot_stride + head_offset;
      keys[c] = key_cache + at;
      values[c] = value_cache + at;
      if (++offset == p.block_size) {
        offset = 0;
        ++block;
      }
    }
  }

  static void prefetch(const C* const keys[kChunk], const C* const values[kChunk], int64_t head_dim) {
    constexpr int64_t kLine = 64 / sizeof(C);  // elements per cache line
    for (int c = 0; c < kChunk && keys[c] != nullptr; ++c) {
      for (int64_t d = 0; d < head_dim; d += kLine) {
        __builtin_prefetch(keys[c] + d);
        __builtin_prefetch(values[c] + d);
      }
    }
  }

  static void run(const PagedAttentionParams& p, const AttentionWork& w, const AttentionWork* next,
                  const AttentionScratch& sc, const AttentionPartials& partials) {
    const int64_t head_dim = p.head_dim, group = p.num_heads / p.num_kv_heads;
    const int64_t rows = (w.token_end - w.token_begin) * group;
    const int64_t units = head_dim / Scores::kDimsPerUnit;
    auto* q = reinterpret_cast<Unit*>(sc.q);
    auto* k = reinterpret_cast<Unit*>(sc.k);

    const int64_t first_token = p.query_start_loc[w.req];
    const int64_t seq_len = p.seq_lens[w.req];
    const int64_t first_pos = seq_len - (p.query_start_loc[w.req + 1] - first_token);
    const T* query = static_cast<const T*>(p.query);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t token = w.token_begin + r / group, head = w.kv_head * group + r % group;
      Scores::pack_query(q + r * units, query + token * p.query_stride_token + head * p.query_stride_head,
                         head_dim);
      const int64_t pos = first_pos + (token - first_token);
      int64_t begin = p.sliding_window > 0 ? pos - p.sliding_window + 1 : 0;
      int64_t end = p.causal ? pos + 1 : seq_len;
      begin = begin < w.key_begin ? w.key_begin : begin;
      end = end > w.key_end ? w.key_end : end;
      sc.key_begin[r] = static_cast<int32_t>(begin);
      sc.key_end[r] = static_cast<int32_t>(end);
      sc.max[r] = -INFINITY;
      sc.sum[r] = 0.f;
      for (int64_t d = 0; d < head_dim; ++d) sc.out[r * head_dim + d] = 0.f;
    }

    const C* keys[kChunk];
    const C* values[kChunk];
    const C* next_keys[kChunk];
    const C* next_values[kChunk];
    gather(p, w, w.key_begin, next_keys, next_values);
    for (int64_t chunk = w.key_begin; chunk < w.key_end; chunk += kChunk) {
      const int n = static_cast<int>(w.key_end - chunk < kChunk ? w.key_end - chunk : kChunk);
      for (int c = 0; c < kChunk; ++c) {
        keys[c] = next_keys[c];
        values[c] = next_values[c];
      }
      // Decode is bound by memory latency: blocks sit anywhere in the cache, out of reach of the
      // hardware prefetcher, so the next chunk's rows are requested while this one computes; during
      // the last chunk, the next item's first rows.
      if (chunk + kChunk < w.key_end) {
        gather(p, w, chunk + kChunk, next_keys, next_values);
        prefetch(next_keys, next_values, head_dim);
      } else if (next != nullptr) {
        const C* ahead_keys[kChunk];
        const C* ahead_values[kChunk];
        gather(p, *next, next->key_begin, ahead_keys, ahead_values);
        prefetch(ahead_keys, ahead_values, head_dim);
      }
      Scores::pack_keys(k, keys, head_dim);
      scores(sc.s, q, k, units, rows);
      softmax(p, sc, rows, chunk, n);

      const float* value_rows[kChunk];
      for (int c = 0; c < n; ++c) {
        if constexpr (std::is_same_v<C, float>) {
          value_rows[c] = values[c];
        } else {
          float* converted = sc.v + c * head_dim;
          for (int64_t d = 0; d < head_dim; d += V::kWidth) V::store(converted + d, V::load(values[c] + d));
          value_rows[c] = converted;
        }
      }
      accumulate(sc.out, sc.s, value_rows, n, head_dim, rows);
    }

    if (w.partial_row >= 0) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t at = w.partial_row + r;
        for (int64_t d = 0; d < head_dim; ++d) partials.out[at * head_dim + d] = sc.out[r * head_dim + d];
        partials.max[at] = sc.max[r];
        partials.sum[at] = sc.sum[r];
      }
      return;
    }
    T* out = static_cast<T*>(p.out);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t token = w.token_begin + r / group, head = w.kv_head * group + r % group;
      T* dst = out + token * p.out_stride_token + head * p.out_stride_head;
      const Reg inverse = V::set1(1.f / sc.sum[r]);
      for (int64_t d = 0; d < head_dim; d += V::kWidth) V::store(dst + d, V::mul(V::load(sc.out + r * head_dim + d), inverse));
    }
  }
};

// The kernel for queries of type T over caches of T, of an 8-bit float, or (float32 queries) of a
// 16-bit float.
template <class V, class Scores, class T>
AttendFn attend_over(DType cache_dtype, DType dtype) {
  if (cache_dtype == dtype) return &AttentionTile<V, T, T, Scores>::run;
  switch (cache_dtype) {
    case DType::kFloat8E4M3: return &AttentionTile<V, T, Float8E4M3, Scores>::run;
    case DType::kFloat8E5M2: return &AttentionTile<V, T, Float8E5M2, Scores>::run;
    default: break;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (cache_dtype == DType::kBFloat16) return &AttentionTile<V, float, BFloat16, Scores>::run;
    if (cache_dtype == DType::kFloat16) return &AttentionTile<V, float, Float16, Scores>::run;
  }
  return nullptr;
}

// The kernel for each storage dtype, with scores computed as `Scores` does.
template <class V, class Scores>
AttendFn attend_for(DType dtype, DType cache_dtype) {
  switch (dtype) {
    case DType::kFloat32: return attend_over<V, Scores, float>(cache_dtype, dtype);
    case DType::kBFloat16: return attend_over<V, Scores, BFloat16>(cache_dtype, dtype);
    case DType::kFloat16: return attend_over<V, Scores, Float16>(cache_dtype, dtype);
    default: return nullptr;
  }
}

}  // namespace
}  // namespace kvserve::cpu
