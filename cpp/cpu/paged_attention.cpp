// paged_attention_cpu: splits the call into work items, runs them on the OpenMP team of the calling
// thread, and merges the items that split a long context.
//
// Work item = one tile of query rows of one request x one kv head (attention_work.h). A decode row
// is its own tile; a prefill is cut into tiles of ~kTileRows rows. When there are too few items to
// keep every thread busy (small batches, long contexts), each item's keys are split into parts whose
// unnormalized results are merged at the end (flash-decoding).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attention_work.h"
#include "half.h"
#include "kvserve/cpu_isa.h"
#include "kvserve/paged_attention.h"

namespace kvserve {

namespace {

using namespace cpu;

constexpr int64_t kTileRows = 64;         // rows per prefill tile: amortizes packing each key chunk
constexpr int64_t kMinSplitKeys = 256;    // keys each part of a split item keeps at least
constexpr int64_t kItemsPerThread = 4;    // fewer items than this per thread: split them
constexpr int64_t kSerialWork = 1 << 18;  // multiply-adds below which a fork costs more than it saves
constexpr int64_t kMaxParts = 64;
constexpr int64_t kMaxRun = 8;            // consecutive items a thread takes at once
constexpr int64_t kRunsPerThread = 8;     // shorter runs when a thread would get fewer than this

// Items whose keys were split: rows [first_row, first_row + parts * rows) of the partials.
struct Merge {
  int32_t req, kv_head, token_begin, token_end;
  int64_t first_row, parts;
};

struct Plan {
  std::vector<AttentionWork> work;
  std::vector<Merge> merges;
  int64_t partial_rows = 0;
  int64_t max_rows = 0;
  int64_t multiply_adds = 0;
};

void plan_work(const PagedAttentionParams& p, int threads, Plan& plan) {
  plan.work.clear();
  plan.merges.clear();
  plan.partial_rows = plan.multiply_adds = 0;
  const int64_t group = p.num_heads / p.num_kv_heads;
  const int64_t tokens_per_tile = std::max<int64_t>(1, kTileRows / group);
  plan.max_rows = 0;
  for (int64_t i = 0; i < p.num_reqs; ++i) {
    const int32_t begin = p.query_start_loc[i], end = p.query_start_loc[i + 1];
    const int64_t first_pos = p.seq_lens[i] - (end - begin);
    for (int32_t t0 = begin; t0 < end; t0 += static_cast<int32_t>(tokens_per_tile)) {
      const int32_t t1 = static_cast<int32_t>(std::min<int64_t>(end, t0 + tokens_per_tile));
      const int64_t pos0 = first_pos + (t0 - begin), pos1 = first_pos + (t1 - 1 - begin);
      const int64_t key_begin = p.sliding_window > 0 ? std::max<int64_t>(0, pos0 - p.sliding_window + 1) : 0;
      const int64_t key_end = p.causal ? pos1 + 1 : p.seq_lens[i];
      const int64_t rows = (t1 - t0) * group;
      plan.max_rows = std::max(plan.max_rows, rows);
      plan.multiply_adds += 2 * rows * (key_end - key_begin) * p.head_dim * p.num_kv_heads;
      for (int32_t h = 0; h < p.num_kv_heads; ++h) {
        plan.work.push_back({static_cast<int32_t>(i), h, t0, t1, static_cast<int32_t>(key_begin),
                             static_cast<int32_t>(key_end), -1});
      }
    }
  }

  const int64_t items = static_cast<int64_t>(plan.work.size());
  if (threads <= 1 || items == 0 || items >= kItemsPerThread * threads) return;
  const int64_t parts_wanted = (kItemsPerThread * threads + items - 1) / items;
  std::vector<AttentionWork> split;
  for (const AttentionWork& w : plan.work) {
    const int64_t keys = w.key_end - w.key_begin;
    const int64_t parts = std::min({parts_wanted, keys / kMinSplitKeys, kMaxParts});
    if (parts <= 1) {
      split.push_back(w);
      continue;
    }
    const int64_t rows = (w.token_end - w.token_begin) * group;
    // Part boundaries on whole chunks of keys, so that no part wastes a partial chunk.
    const int64_t chunks = (keys + kChunk - 1) / kChunk;
    plan.merges.push_back({w.req, w.kv_head, w.token_begin, w.token_end, plan.partial_rows, parts});
    for (int64_t part = 0; part < parts; ++part) {
      AttentionWork piece = w;
      piece.key_begin = static_cast<int32_t>(w.key_begin + chunks * part / parts * kChunk);
      piece.key_end = static_cast<int32_t>(std::min<int64_t>(w.key_end, w.key_begin + chunks * (part + 1) / parts * kChunk));
      piece.partial_row = plan.partial_rows + part * rows;
      split.push_back(piece);
    }
    plan.partial_rows += parts * rows;
  }
  plan.work.swap(split);
}

AttendFn select_kernel(DType dtype, DType cache_dtype, int64_t head_dim) {
  AttendFn attend = nullptr;
#if defined(KVSERVE_CPU_X86_KERNELS)
  const CpuIsa isa = cpu_isa();
  if (isa >= CpuIsa::kAvx512Bf16) attend = attend_avx512_bf16(dtype, cache_dtype, head_dim);
  if (attend == nullptr && isa >= CpuIsa::kAvx512) attend = attend_avx512(dtype, cache_dtype, head_dim);
  if (attend == nullptr && isa >= CpuIsa::kAvx2) attend = attend_avx2(dtype, cache_dtype, head_dim);
#endif
  return attend != nullptr ? attend : attend_portable(dtype, cache_dtype, head_dim);
}

// This thread's scratch, grown to fit `rows` x `head_dim` tiles and kept for the next call.
AttentionScratch thread_scratch(int64_t rows, int64_t head_dim) {
  constexpr int64_t kAlign = 16;  // floats: 64 bytes
  auto round = [](int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  const int64_t sizes[] = {rows * head_dim, head_dim * kChunk, kChunk * head_dim, rows * kChunk,
                           rows * head_dim, rows, rows, rows, rows};
  int64_t total = kAlign;
  for (int64_t n : sizes) total += round(n);
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < total) buffer.resize(total);
  float* at = buffer.data();
  at += (kAlign - (reinterpret_cast<uintptr_t>(at) / sizeof(float)) % kAlign) % kAlign;
  float* parts[9];
  for (int i = 0; i < 9; ++i) {
    parts[i] = at;
    at += round(sizes[i]);
  }
  return {parts[0], parts[1], parts[2], parts[3], parts[4], parts[5], parts[6],
          reinterpret_cast<int32_t*>(parts[7]), reinterpret_cast<int32_t*>(parts[8])};
}

// out = sum_i out_i * e^(max_i - M) / sum_i sum_i * e^(max_i - M), M = max_i max_i, per row.
template <class T>
void merge(const PagedAttentionParams& p, const Merge& m, const AttentionPartials& partials) {
  const int64_t group = p.num_heads / p.num_kv_heads, rows = (m.token_end - m.token_begin) * group;
  float weight[kMaxParts];
  T* out = static_cast<T*>(p.out);
  for (int64_t r = 0; r < rows; ++r) {
    float top = -INFINITY;
    for (int64_t i = 0; i < m.parts; ++i) top = std::max(top, partials.max[m.first_row + i * rows + r]);
    float total = 0.f;
    for (int64_t i = 0; i < m.parts; ++i) {
      const int64_t at = m.first_row + i * rows + r;
      weight[i] = partials.sum[at] > 0.f ? std::exp(partials.max[at] - top) : 0.f;
      total += weight[i] * partials.sum[at];
    }
    const int64_t token = m.token_begin + r / group, head = m.kv_head * group + r % group;
    T* dst = out + token * p.out_stride_token + head * p.out_stride_head;
    for (int64_t d = 0; d < p.head_dim; ++d) {
      float acc = 0.f;
      for (int64_t i = 0; i < m.parts; ++i) acc += weight[i] * partials.out[(m.first_row + i * rows + r) * p.head_dim + d];
      from_float(acc / total, dst + d);
    }
  }
}

void merge_any(const PagedAttentionParams& p, const Merge& m, const AttentionPartials& partials) {
  switch (p.dtype) {
    case DType::kBFloat16: return merge<BFloat16>(p, m, partials);
    case DType::kFloat16: return merge<Float16>(p, m, partials);
    default: return merge<float>(p, m, partials);
  }
}

}  // namespace

Status paged_attention_cpu(const PagedAttentionParams& p) {
  if (check_paged_attention(p, nullptr) != Status::kOk) return Status::kInvalidArgument;
  if (p.num_tokens == 0) return Status::kOk;
  const AttendFn attend = select_kernel(p.dtype, p.cache_dtype.value_or(p.dtype), p.head_dim);

  thread_local Plan plan;
  int threads = omp_get_max_threads();
  plan_work(p, threads, plan);
  if (plan.multiply_adds < kSerialWork) threads = 1;

  thread_local std::vector<float> partial_storage;
  partial_storage.resize(plan.partial_rows * (p.head_dim + 2));
  const AttentionPartials partials{partial_storage.data(), partial_storage.data() + plan.partial_rows * p.head_dim,
                                   partial_storage.data() + plan.partial_rows * (p.head_dim + 1)};
  const int64_t items = static_cast<int64_t>(plan.work.size());
  const int64_t merges = static_cast<int64_t>(plan.merges.size());
  const AttentionWork* work = plan.work.data();
  const Merge* merge_list = plan.merges.data();
  const int64_t max_rows = plan.max_rows;

  // Threads take runs of consecutive items, so that each item can prefetch the first keys of the one
  // its thread runs next; runs stay short enough to leave every thread several to balance the load.
  const int64_t run = std::clamp<int64_t>(items / (kRunsPerThread * threads), 1, kMaxRun);
  const int64_t runs = (items + run - 1) / run;
  auto attend_run = [&](int64_t r, const AttentionScratch& scratch) {
    const int64_t end = std::min(items, (r + 1) * run);
    for (int64_t i = r * run; i < end; ++i) attend(p, work[i], i + 1 < end ? &work[i + 1] : nullptr, scratch, partials);
  };
  // Each barrier is a chance to wait for a thread the OS has preempted: one per call, two only when
  // split items must all finish before their merge.
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const AttentionScratch scratch = thread_scratch(max_rows, p.head_dim);
    if (merges == 0) {
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t r = 0; r < runs; ++r) attend_run(r, scratch);
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t r = 0; r < runs; ++r) attend_run(r, scratch);
#pragma omp for schedule(static) nowait
      for (int64_t i = 0; i < merges; ++i) merge_any(p, merge_list[i], partials);
    }
  }
  return Status::kOk;
}

}  // namespace kvserve
