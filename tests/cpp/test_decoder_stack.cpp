// decoder_stack_cpu as a C++ embedder calls it: the checks of the stack and of a step, and what a
// step writes. Its numbers are tested from Python against the model's layers, bit for bit
// (tests/python/test_decoder_stack.py).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "kvserve/decoder_stack.h"

namespace {

using kvserve::Status;

constexpr int64_t kHidden = 8, kHeads = 2, kKvHeads = 1, kHeadDim = 4, kInter = 12, kBlocks = 4, kBlockSize = 2;
constexpr int64_t kQkv = (kHeads + 2 * kKvHeads) * kHeadDim;
constexpr int64_t kCache = kBlocks * kBlockSize * kKvHeads * kHeadDim;

std::vector<float> random(size_t n, std::mt19937& rng, float mean = 0.f) {
  std::normal_distribution<float> dist(mean, 0.3f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Model {
  std::mt19937 rng{7};
  std::vector<float> input_norm = random(kHidden, rng, 1.f), qkv = random(kQkv * kHidden, rng),
                     o = random(kHidden * kHeads * kHeadDim, rng), post_norm = random(kHidden, rng, 1.f),
                     gate_up = random(2 * kInter * kHidden, rng), down = random(kHidden * kInter, rng),
                     final_norm = random(kHidden, rng, 1.f), key_cache = random(kCache, rng),
                     value_cache = random(kCache, rng);

  kvserve::DecoderStack stack() {
    kvserve::DecoderStack s;
    s.hidden_size = kHidden;
    s.intermediate_size = kInter;
    s.num_heads = kHeads;
    s.num_kv_heads = kKvHeads;
    s.head_dim = kHeadDim;
    s.num_blocks = kBlocks;
    s.block_size = kBlockSize;
    s.scale = 0.5f;
    s.final_norm = final_norm.data();
    kvserve::DecoderLayerWeights w;
    w.input_norm = input_norm.data();
    w.qkv.data = qkv.data();
    w.o.data = o.data();
    w.post_norm = post_norm.data();
    w.gate_up.data = gate_up.data();
    w.down.data = down.data();
    w.key_cache = key_cache.data();
    w.value_cache = value_cache.data();
    s.layers = {w, w};  // two layers sharing weights and caches: enough to run the residual stream twice
    return s;
  }
};

// One token at position 2 of one request whose blocks are 3 then 1 (its slot: block 1, offset 0).
struct Step {
  std::vector<float> hidden, cos = {0.6f, 0.8f}, sin = {0.8f, -0.6f};
  std::vector<int64_t> slots = {1 * kBlockSize + 0};
  std::vector<int32_t> block_table = {3, 1}, seq_lens = {3}, query_start_loc = {0, 1};

  explicit Step(std::mt19937& rng) : hidden(random(kHidden, rng)) {}

  kvserve::DecoderStepParams params() {
    kvserve::DecoderStepParams p;
    p.hidden = hidden.data();
    p.cos = cos.data();
    p.sin = sin.data();
    p.slot_mapping = slots.data();
    p.block_table = block_table.data();
    p.seq_lens = seq_lens.data();
    p.query_start_loc = query_start_loc.data();
    p.num_tokens = 1;
    p.num_reqs = 1;
    p.max_blocks_per_req = p.block_table_stride = 2;
    return p;
  }
};

TEST(DecoderStack, ChecksNameWhatIsWrong) {
  Model m;
  std::string why;
  kvserve::DecoderStack s = m.stack();
  EXPECT_EQ(kvserve::check_decoder_stack(s, &why), Status::kOk) << why;
  s.layers[1].down.data = nullptr;
  EXPECT_EQ(kvserve::check_decoder_stack(s, &why), Status::kInvalidArgument);
  EXPECT_NE(why.find("layer 1 lacks an array"), std::string::npos) << why;
  s = m.stack();
  s.layers[0].q_norm = m.input_norm.data();
  EXPECT_EQ(kvserve::check_decoder_stack(s, &why), Status::kInvalidArgument);
  EXPECT_NE(why.find("one of q_norm and k_norm"), std::string::npos) << why;
  s = m.stack();
  s.num_kv_heads = 3;
  EXPECT_EQ(kvserve::check_decoder_stack(s, &why), Status::kInvalidArgument);
  EXPECT_NE(why.find("not a multiple"), std::string::npos) << why;
}

TEST(DecoderStack, AStepWritesItsSlotInEveryLayerAndTheHiddenStates) {
  Model m;
  const std::vector<float> key0 = m.key_cache, value0 = m.value_cache;
  Step step(m.rng);
  const std::vector<float> hidden0 = step.hidden;
  std::string why;
  ASSERT_EQ(kvserve::decoder_stack_cpu(m.stack(), step.params(), &why), Status::kOk) << why;
  EXPECT_NE(step.hidden, hidden0);
  const int64_t slot = step.slots[0] * kKvHeads * kHeadDim, width = kKvHeads * kHeadDim;
  for (int64_t i = 0; i < kCache; ++i) {
    const bool in_slot = i >= slot && i < slot + width;
    EXPECT_EQ(m.key_cache[i] != key0[i], in_slot) << "key cache element " << i;
    EXPECT_EQ(m.value_cache[i] != value0[i], in_slot) << "value cache element " << i;
  }
  // The same step again from the same inputs gives the same bits.
  Model again;
  Step step_again(again.rng);
  ASSERT_EQ(kvserve::decoder_stack_cpu(again.stack(), step_again.params(), &why), Status::kOk) << why;
  EXPECT_EQ(step_again.hidden, step.hidden);
}

TEST(DecoderStack, ALoRADeltaOfZerosLeavesTheStepAsItWasAndAnotherChangesIt) {
  Model m;
  Step plain(m.rng);
  Step adapted = plain, zeros = plain;
  const std::vector<float> key0 = m.key_cache, value0 = m.value_cache;
  std::string why;
  ASSERT_EQ(kvserve::decoder_stack_cpu(m.stack(), plain.params(), &why), Status::kOk) << why;
  // A rank-3 delta on down_proj ([kHidden, kInter]) of each layer: zeros, then random.
  for (Step* step : {&zeros, &adapted}) {
    m.key_cache = key0;
    m.value_cache = value0;
    std::vector<float> a = random(3 * kInter, m.rng), b(kHidden * 3, 0.f);
    if (step == &adapted) b = random(kHidden * 3, m.rng);
    kvserve::DecoderLayerLoRA layer;
    layer.down = {a.data(), b.data(), 3};
    const std::vector<kvserve::DecoderLayerLoRA> lora = {layer, layer};
    kvserve::DecoderStepParams params = step->params();
    params.lora = lora.data();
    ASSERT_EQ(kvserve::decoder_stack_cpu(m.stack(), params, &why), Status::kOk) << why;
  }
  EXPECT_EQ(zeros.hidden, plain.hidden);
  EXPECT_NE(adapted.hidden, plain.hidden);
}

TEST(DecoderStack, ABadStepIsRejectedBeforeAnythingIsWritten) {
  Model m;
  const std::vector<float> key0 = m.key_cache;
  std::vector<float> a = random(2 * kHidden, m.rng);
  kvserve::DecoderLayerLoRA half_delta;  // a without b
  half_delta.qkv = {a.data(), nullptr, 2};
  const std::vector<kvserve::DecoderLayerLoRA> bad_lora = {{}, half_delta};
  for (int variant = 0; variant < 4; ++variant) {
    Step step(m.rng);
    const std::vector<float> hidden0 = step.hidden;
    if (variant == 0) step.slots[0] = kBlocks * kBlockSize;
    if (variant == 1) step.block_table[0] = kBlocks;
    if (variant == 2) step.seq_lens[0] = 5;
    kvserve::DecoderStepParams params = step.params();
    if (variant == 3) params.lora = bad_lora.data();
    std::string why;
    EXPECT_EQ(kvserve::decoder_stack_cpu(m.stack(), params, &why), Status::kInvalidArgument) << variant;
    EXPECT_FALSE(why.empty());
    EXPECT_EQ(step.hidden, hidden0);
    EXPECT_EQ(m.key_cache, key0);
  }
}

}  // namespace
